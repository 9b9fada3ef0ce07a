// The provider admin page. Plain ES module, no build step, no third-party
// code: the gateway often runs where there is no internet. Every visible
// string comes from the catalogs in ./i18n/; the admin API (gateway/admin.py)
// is the only thing it talks to.

const LANGS = ["en", "vi", "zh"];
const LANG_KEY = "gateway.lang";
// sessionStorage: the token lives as long as the tab and never leaves it
// except in the Authorization header.
export const TOKEN_KEY = "gateway.admin-token";
const MASK = "***";
// Defaults of gateway.config.Timeouts / ProviderConfig.max_connections: an
// edit sends these fields back only when a file set them to something else,
// so that saving from the page neither drops them nor pins the defaults.
const DEFAULT_TIMEOUTS = { connect: 10, first_byte: 600, idle: 300 };
const DEFAULT_MAX_CONNECTIONS = 100;
const FORM_FIELDS = ["name", "provider_type", "base_url", "replicas", "api_key", "headers", "models", "proxy"];

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

const state = {
  lang: "en",
  catalog: {},
  fallback: {},
  providers: [],
  // null, or {kind: "gitops"} / {kind: "store", detail}: learnt from a write
  // answering 409, since the list does not say whether writes are allowed.
  readOnly: null,
  editing: undefined, // undefined: form closed; null: adding; a provider: editing it
  errors: {}, // field -> message ({key, vars} or {text})
  notice: null,
  test: null, // {name, status: "running"|"ok"|"error", models, error}
  signInError: null,
  busy: false,
};

// -- i18n --------------------------------------------------------------------

async function loadCatalog(lang) {
  const url = new URL(`./i18n/${lang}.json`, import.meta.url);
  const resp = await fetch(url, { cache: "no-cache" });
  if (!resp.ok) throw new Error(`catalog ${lang}: HTTP ${resp.status}`);
  return resp.json();
}

export function t(key, vars = {}) {
  const text = state.catalog[key] ?? state.fallback[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

function msg(m) {
  if (!m) return "";
  return m.key ? t(m.key, m.vars) : m.text;
}

function pickLang() {
  const saved = localStorage.getItem(LANG_KEY);
  if (LANGS.includes(saved)) return saved;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const base = tag.toLowerCase().split("-")[0];
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

async function setLang(lang) {
  state.catalog = lang === "en" ? state.fallback : await loadCatalog(lang);
  state.lang = lang;
  localStorage.setItem(LANG_KEY, lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : lang;
  $("#lang").value = lang;
  render();
}

function applyStatic() {
  for (const el of $$("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  document.title = t("app.title");
}

// -- API ---------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.field = error.field || null;
    this.detail = error.message || "";
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    // Relative to the page (/ui/), so a path prefix added by a proxy still works.
    resp = await fetch(new URL(`../admin/${path}`, document.baseURI), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch {
    throw new ApiError(0, { code: "network" });
  }
  if (resp.status === 204) return null;
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || {});
  return data;
}

const providerPath = (name) => `providers/${encodeURIComponent(name)}`;

// -- actions -----------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await refresh();
    state.signInError = null;
    $("#token").value = "";
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.signInError = authMessage(err, "auth.invalid");
  }
  render();
}

function signOut(reason = null) {
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, {
    providers: [],
    editing: undefined,
    errors: {},
    notice: null,
    test: null,
    readOnly: null,
    signInError: reason,
  });
  $("#token").value = "";
  render();
}

function authMessage(err, whenRejected) {
  if (err.status === 401) return { key: whenRejected };
  if (err.code === "admin_disabled") return { key: "auth.disabled" };
  if (err.status === 0) return { key: "error.network" };
  return { key: "error.http", vars: { status: err.status } };
}

async function refresh() {
  const data = await api("GET", "providers");
  state.providers = data.providers;
  // The API says up front when writes cannot work (GitOps read-only mode or
  // an unwritable store), so write controls are disabled before any attempt.
  if (data.writable === false) {
    const reason = data.read_only_reason || "";
    state.readOnly = reason.startsWith("admin.writable")
      ? { kind: "gitops" }
      : { kind: "store", detail: reason };
  }
}

// Errors that end the session or change the mode, whatever the action.
export function handleCommon(err) {
  if (err.status === 401 || err.code === "admin_disabled") {
    signOut(authMessage(err, "auth.expired"));
    return true;
  }
  if (err.status === 409 && err.code === "read_only") {
    state.readOnly = { kind: "gitops" };
    state.editing = undefined;
    return true;
  }
  if (err.status === 409 && err.code === "store_not_writable") {
    state.readOnly = { kind: "store", detail: err.detail };
    state.editing = undefined;
    return true;
  }
  return false;
}

async function reload() {
  try {
    await refresh();
  } catch (err) {
    if (!handleCommon(err)) state.notice = { kind: "error", ...errorText(err) };
  }
  render();
}

function errorText(err) {
  if (err.status === 0) return { key: "error.network" };
  if (err.code === "provider_not_found") return { key: "error.not_found" };
  if (err.code === "read_only_provider") return { key: "readonly.row" };
  if (err.detail) return { text: err.detail };
  return { key: "error.http", vars: { status: err.status } };
}

function openEditor(provider) {
  state.editing = provider;
  state.errors = {};
  state.notice = null;
  fillForm(provider);
  render();
  $("#f-name").focus();
}

function closeEditor() {
  state.editing = undefined;
  state.errors = {};
  render();
}

function fillForm(p) {
  $("#f-name").value = p ? p.name : "";
  $("#f-type").value = p ? p.provider_type : "custom";
  $("#f-base-url").value = p ? p.base_url : "";
  $("#f-replicas").value = p && p.replicas ? p.replicas.join("\n") : "";
  $("#f-api-key").value = "";
  const headers = p ? Object.entries(p.headers || {}) : [];
  $("#f-headers").value = headers.map(([k, v]) => `${k}: ${v}`).join("\n");
  $("#f-models").value = p && p.models ? p.models.join("\n") : "";
  $("#f-proxy").value = p && p.proxy ? p.proxy : "";
}

// The form as an API body; field errors found here never reach the server.
function readForm() {
  const errors = {};
  const editing = state.editing;
  const body = {
    name: $("#f-name").value.trim(),
    provider_type: $("#f-type").value,
  };
  const baseUrl = $("#f-base-url").value.trim();
  if (baseUrl) body.base_url = baseUrl;
  const replicas = $("#f-replicas")
    .value.split(/\s+/)
    .filter(Boolean);
  if (replicas.length) body.replicas = replicas;

  // Blank on edit = keep the stored key: the API keeps it when api_key is absent.
  const key = $("#f-api-key").value;
  if (key.trim()) body.api_key = key.trim();

  const headers = {};
  $("#f-headers")
    .value.split("\n")
    .forEach((line, i) => {
      if (!line.trim()) return;
      const at = line.indexOf(":");
      const hname = at > 0 ? line.slice(0, at).trim() : "";
      if (!hname) {
        errors.headers ??= { key: "error.header_line", vars: { line: i + 1 } };
        return;
      }
      const value = line.slice(at + 1).trim();
      // The API masks secret-looking header values; sending the mask back
      // would store "***" as the value.
      if (value === MASK) errors.headers ??= { key: "error.header_masked", vars: { name: hname } };
      headers[hname] = value;
    });
  if (Object.keys(headers).length) body.headers = headers;

  const models = $("#f-models")
    .value.split(/[\n,]/)
    .map((m) => m.trim())
    .filter(Boolean);
  if (models.length) body.models = models;

  const proxy = $("#f-proxy").value.trim();
  if (proxy) body.proxy = proxy;

  if (editing) {
    const tm = editing.timeouts || {};
    const changed = Object.keys(DEFAULT_TIMEOUTS).some((k) => tm[k] !== DEFAULT_TIMEOUTS[k]);
    if (changed) body.timeouts = tm;
    if (editing.max_connections !== DEFAULT_MAX_CONNECTIONS) {
      body.max_connections = editing.max_connections;
    }
    // Set in YAML or through the API; the form has no field for it. (Secrets
    // such as proxy_auth need nothing: the API keeps them when left out.)
    if (editing.ca_file) body.ca_file = editing.ca_file;
    // API options set in YAML or through the API (null/default: not set).
    if (editing.auth_header && editing.auth_header !== "bearer") body.auth_header = editing.auth_header;
    if (editing.query && Object.keys(editing.query).length) body.query = editing.query;
    if (editing.endpoints) body.endpoints = editing.endpoints;
    if (editing.passthrough) body.passthrough = editing.passthrough;
    // Replica settings beyond the URL list (YAML or the API).
    const pooled = replicas.length || editing.discovery;
    for (const f of ["discovery", "balancing", "health_check"]) {
      if (editing[f] && pooled) body[f] = editing[f];
    }
  }
  return { body, errors };
}

async function save() {
  if (state.busy || state.readOnly) return;
  const { body, errors } = readForm();
  state.errors = errors;
  if (Object.keys(errors).length) return render();
  const editing = state.editing;
  state.busy = true;
  render();
  try {
    const saved = editing
      ? await api("PUT", providerPath(editing.name), body)
      : await api("POST", "providers", body);
    state.notice = {
      kind: "ok",
      key: editing ? "notice.updated" : "notice.created",
      vars: { name: saved.name },
    };
    state.editing = undefined;
    state.errors = {};
    await refresh();
  } catch (err) {
    if (!handleCommon(err)) state.errors = fieldErrors(err);
  } finally {
    state.busy = false;
  }
  render();
}

function fieldErrors(err) {
  // "headers.X-Title" and the like belong to the field they start with.
  const field = err.field ? err.field.split(".")[0].replace(/\[\d+\]$/, "") : null;
  const target = FORM_FIELDS.includes(field) ? field : "_form";
  if (err.code === "duplicate_name") return { name: { key: "error.duplicate" } };
  if (err.code === "no_seal_key") return { api_key: { key: "error.no_seal_key" } };
  if (err.status === 422 && err.field) {
    const detail = target === "_form" ? `${err.field}: ${err.detail}` : err.detail;
    return { [target]: { key: "error.invalid", vars: { detail } } };
  }
  return { _form: errorText(err) };
}

async function testConnection(name) {
  state.test = { name, status: "running" };
  render();
  $("#test-panel").scrollIntoView({ block: "nearest" });
  try {
    const data = await api("GET", `${providerPath(name)}/models`);
    state.test = { name, status: "ok", models: (data.data || []).map((m) => m.id) };
  } catch (err) {
    if (handleCommon(err)) state.test = null;
    else state.test = { name, status: "error", error: errorText(err) };
  }
  render();
}

async function confirmDelete(name) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = t("delete.question", { name });
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  if (dialog.returnValue !== "delete") return;
  try {
    await api("DELETE", providerPath(name));
    state.notice = { kind: "ok", key: "notice.deleted", vars: { name } };
    if (state.editing && state.editing.name === name) state.editing = undefined;
    if (state.test && state.test.name === name) state.test = null;
    await refresh();
  } catch (err) {
    if (!handleCommon(err)) state.notice = { kind: "error", ...errorText(err) };
  }
  render();
}

// -- rendering ---------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function render() {
  applyStatic();
  const signedIn = Boolean(sessionStorage.getItem(TOKEN_KEY)) && state.signInError === null;
  $("#loading").hidden = true;
  $("#sign-in").hidden = signedIn;
  $("#workspace").hidden = !signedIn;
  $("#sign-out").hidden = !signedIn;
  const tokenError = $("#token-error");
  tokenError.hidden = !state.signInError;
  tokenError.textContent = msg(state.signInError);
  // The status page and the playground (their own modules) draw on this.
  const detail = { signedIn, lang: state.lang };
  document.dispatchEvent(new CustomEvent("gateway:render", { detail }));
  if (!signedIn) return;

  const ro = state.readOnly;
  $("#read-only-banner").hidden = !ro;
  $("#read-only-text").textContent = !ro
    ? ""
    : ro.kind === "gitops"
      ? t("readonly.gitops")
      : t("readonly.store", { detail: ro.detail });
  for (const b of $$(".write")) b.disabled = Boolean(ro) || state.busy;

  const notice = $("#notice");
  notice.hidden = !state.notice;
  const failed = state.notice && state.notice.kind === "error";
  notice.className = `banner ${failed ? "banner-error" : "banner-ok"}`;
  notice.textContent = msg(state.notice);

  renderEditor();
  renderTable();
  renderTest();
}

function renderEditor() {
  const editing = state.editing;
  const open = editing !== undefined && !state.readOnly;
  $("#editor").hidden = !open;
  if (!open) return;
  $("#editor-title").textContent = editing
    ? t("form.edit_title", { name: editing.name })
    : t("form.add_title");
  $("#f-name").disabled = Boolean(editing); // the name is the file name and the URL
  const custom = $("#f-type").value === "custom";
  $("#base-url-hint").textContent = t(
    custom ? "field.base_url_hint_custom" : "field.base_url_hint_openai",
  );
  $("#f-api-key").placeholder = editing && editing.api_key ? "••••••••" : "";
  $("#api-key-hint").textContent = t(
    !editing
      ? "field.api_key_hint_new"
      : editing.api_key
        ? "field.api_key_hint_keep"
        : "field.api_key_hint_none",
  );
  $("#test-hint").textContent = t(editing ? "form.test_hint" : "form.test_unsaved");
  $("#form-test").disabled = !editing || state.busy;
  $("#save").textContent = t(state.busy ? "form.saving" : "form.save");
  for (const node of $$("[data-error-for]")) {
    const m = state.errors[node.dataset.errorFor];
    node.hidden = !m;
    node.textContent = msg(m);
    const input = $(`#provider-form [data-field="${node.dataset.errorFor}"]`);
    if (input) input.setAttribute("aria-invalid", m ? "true" : "false");
  }
}

// Literal keys, so that the catalog test can see every key in use.
const ACTION_LABELS = { test: "action.test", edit: "action.edit", delete: "action.delete" };

function rowButton(action, cls, disabled, title, onclick) {
  return el(
    "button",
    { type: "button", class: `btn ${cls}`, "data-action": action, disabled, title, onclick },
    t(ACTION_LABELS[action]),
  );
}

function renderTable() {
  const tbody = $("#providers tbody");
  tbody.replaceChildren(
    ...state.providers.map((p) => {
      const fromConfig = p.source !== "store";
      const locked = fromConfig || Boolean(state.readOnly);
      const lockTitle = fromConfig ? t("readonly.row") : null;
      return el(
        "tr",
        { "data-provider": p.name, class: fromConfig ? "row-config" : "" },
        el("td", { class: "name" }, p.name),
        el("td", {}, t(p.provider_type === "openai" ? "type.openai" : "type.custom")),
        el("td", { class: "url" }, el("code", {}, p.base_url)),
        el(
          "td",
          {},
          el(
            "span",
            { class: p.api_key ? "pill pill-ok" : "pill" },
            t(p.api_key ? "key.set" : "key.unset"),
          ),
        ),
        el(
          "td",
          {},
          p.models ? t("models.static", { count: p.models.length }) : t("models.upstream"),
        ),
        el(
          "td",
          {},
          el(
            "span",
            { class: fromConfig ? "pill pill-lock" : "pill pill-store", title: lockTitle },
            t(fromConfig ? "source.config" : "source.store"),
          ),
        ),
        el(
          "td",
          {},
          el(
            "div",
            { class: "row-actions" },
            rowButton("test", "btn-small", false, null, () => testConnection(p.name)),
            rowButton("edit", "btn-small", locked, lockTitle, () => openEditor(p)),
            rowButton("delete", "btn-small btn-danger-ghost", locked, lockTitle, () =>
              confirmDelete(p.name),
            ),
          ),
        ),
      );
    }),
  );
  $("#empty").hidden = state.providers.length > 0;
}

function renderTest() {
  const test = state.test;
  $("#test-panel").hidden = !test;
  if (!test) return;
  $("#test-panel").dataset.status = test.status;
  $("#test-title").textContent = t("test.title", { name: test.name });
  const status = $("#test-status");
  const list = $("#test-models");
  const error = $("#test-error");
  status.className = { error: "status-error", ok: "status-ok" }[test.status] || "muted";
  list.replaceChildren();
  error.hidden = test.status !== "error";
  if (test.status === "running") {
    status.textContent = t("test.running");
  } else if (test.status === "ok") {
    status.textContent = test.models.length
      ? t("test.ok", { count: test.models.length })
      : t("test.ok_empty");
    list.replaceChildren(...test.models.map((id) => el("li", {}, el("code", {}, id))));
  } else {
    status.textContent = t("test.failed");
    error.textContent = msg(test.error);
  }
}

// -- wiring ------------------------------------------------------------------

function wire() {
  $("#lang").addEventListener("change", (e) => setLang(e.target.value));
  $("#sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("#token").value.trim();
    if (!token) {
      state.signInError = { key: "auth.required" };
      return render();
    }
    state.signInError = null;
    signIn(token);
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#add").addEventListener("click", () => openEditor(null));
  $("#refresh").addEventListener("click", () => {
    state.notice = null;
    reload();
  });
  $("#cancel").addEventListener("click", closeEditor);
  $("#provider-form").addEventListener("submit", (e) => {
    e.preventDefault();
    save();
  });
  $("#f-type").addEventListener("change", renderEditor);
  $("#form-test").addEventListener("click", () => {
    if (state.editing) testConnection(state.editing.name);
  });
  $("#test-close").addEventListener("click", () => {
    state.test = null;
    render();
  });
  // Editing a field clears its error: the message described the old value.
  $("#provider-form").addEventListener("input", (e) => {
    const field = e.target.dataset.field;
    if (field && state.errors[field]) {
      delete state.errors[field];
      renderEditor();
    }
  });
}

async function main() {
  wire();
  state.fallback = await loadCatalog("en");
  const lang = pickLang();
  await setLang(lang);
  if (sessionStorage.getItem(TOKEN_KEY)) await reload();
  document.body.dataset.ready = "true"; // tests wait for this
}

main();
