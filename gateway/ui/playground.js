// The playground: send one chat message to a model through the gateway and
// watch the answer stream in, with its time to first token, tokens/s and
// usage. It talks only to the gateway's admin endpoints (gateway/status.py):
// GET /admin/playground/models and POST /admin/playground/chat, which runs
// the request through the same forwarding path as /v1/chat/completions,
// authorized by the admin token (so it works with `auth:` on, and no client
// key is ever typed into the page). The answer is read with fetch and a
// ReadableStream and parsed as server-sent events here, in the page.

import { ApiError, TOKEN_KEY, api, handleCommon, t } from "./app.js";

const LOCALES = { en: "en", vi: "vi", zh: "zh-CN" };
// Bounds: what one answer may make the tab hold.
const MAX_ANSWER_CHARS = 1 << 20;
const MAX_EVENT_CHARS = 1 << 20;
// Literal keys, so that the catalog test can see every key in use.
const STATES = {
  idle: "play.state_idle",
  waiting: "play.state_waiting",
  streaming: "play.state_streaming",
  done: "play.state_done",
  stopped: "play.state_stopped",
  failed: "play.state_failed",
};

const $ = (sel) => document.querySelector(sel);

const play = {
  lang: "en",
  models: null, // [id], null until loaded
  loading: false,
  error: null, // {key, vars} or {text}
  run: null, // the current or last answer
  abort: null,
};

function locale() {
  return LOCALES[play.lang] || "en";
}

const fmt = {
  ms: (ms) =>
    new Intl.NumberFormat(locale(), {
      style: "unit",
      unit: "millisecond",
      maximumFractionDigits: 0,
    }).format(ms),
  num: (v, digits = 1) =>
    new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(v),
  int: (v) => new Intl.NumberFormat(locale()).format(v),
};

function message(m) {
  if (!m) return "";
  return m.key ? t(m.key, m.vars) : m.text;
}

// -- models ------------------------------------------------------------------

async function loadModels() {
  play.loading = true;
  play.error = null;
  render();
  try {
    const data = await api("GET", "playground/models");
    play.models = (data.data || []).map((m) => m.id).filter((id) => id.includes("/"));
  } catch (err) {
    if (handleCommon(err)) return;
    play.error =
      err.status === 0
        ? { key: "error.network" }
        : { text: err.detail || t("error.http", { status: err.status }) };
  } finally {
    play.loading = false;
  }
  fillProviders();
  render();
}

function providersOf(models) {
  return [...new Set(models.map((id) => id.split("/")[0]))].sort();
}

function fillProviders() {
  const select = $("#play-provider");
  const keep = select.value;
  const names = providersOf(play.models || []);
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  if (names.includes(keep)) select.value = keep;
  fillModels();
}

function fillModels() {
  const provider = $("#play-provider").value;
  const select = $("#play-model");
  const keep = select.value;
  const ids = (play.models || []).filter((id) => id.split("/")[0] === provider);
  // Shown without the provider prefix; the value is the full PROVIDER/MODEL.
  select.replaceChildren(...ids.map((id) => new Option(id.slice(provider.length + 1), id)));
  if (ids.includes(keep)) select.value = keep;
}

// -- one answer --------------------------------------------------------------

function newRun() {
  return {
    state: "waiting",
    text: "",
    started: performance.now(),
    firstToken: null,
    last: null,
    chunks: 0,
    usage: null,
    error: null,
  };
}

/** Split complete SSE events off `buffer`; returns [events, rest]. */
export function splitEvents(buffer) {
  const events = [];
  const parts = buffer.split(/\r\n\r\n|\n\n|\r\r/);
  const rest = parts.pop();
  for (const part of parts) {
    const data = part
      .split(/\r\n|\n|\r/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    if (data) events.push(data);
  }
  return [events, rest];
}

function onEvent(run, data) {
  if (data === "[DONE]") return;
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch {
    return; // a comment or keep-alive the server chose to send
  }
  if (chunk.error) {
    run.error = { text: chunk.error.message || JSON.stringify(chunk.error) };
    return;
  }
  if (chunk.usage) run.usage = chunk.usage;
  const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
  const piece = delta && (delta.content || delta.reasoning_content || "");
  if (!piece) return;
  const now = performance.now();
  if (run.firstToken === null) run.firstToken = now;
  run.last = now;
  run.chunks += 1;
  run.state = "streaming";
  if (run.text.length < MAX_ANSWER_CHARS)
    run.text += piece.slice(0, MAX_ANSWER_CHARS - run.text.length);
}

async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  return new ApiError(resp.status, (body && body.error) || {});
}

async function readStream(run, resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const [events, rest] = splitEvents(buffer);
    buffer = rest;
    if (buffer.length > MAX_EVENT_CHARS) throw new Error("event too large");
    for (const data of events) onEvent(run, data);
    render();
  }
}

async function send() {
  const model = $("#play-model").value;
  const content = $("#play-message").value.trim();
  if (!model || !content || play.abort) {
    play.error = !model
      ? { key: "play.need_model" }
      : !content
        ? { key: "play.need_message" }
        : null;
    return render();
  }
  play.error = null;
  const run = (play.run = newRun());
  const abort = (play.abort = new AbortController());
  render();
  try {
    const resp = await fetch(new URL("../admin/playground/chat", document.baseURI), {
      method: "POST",
      headers: {
        Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`,
        "Content-Type": "application/json",
        Accept: "text/event-stream",
      },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content }],
        stream: true,
        stream_options: { include_usage: true },
      }),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      signal: abort.signal,
    });
    if (!resp.ok) throw await errorOf(resp);
    await readStream(run, resp);
    run.state = run.error ? "failed" : "done";
  } catch (err) {
    if (abort.signal.aborted) run.state = "stopped";
    else if (err instanceof ApiError && handleCommon(err)) run.state = "stopped";
    else {
      run.state = "failed";
      run.error =
        err instanceof ApiError
          ? { text: err.detail || t("error.http", { status: err.status }) }
          : run.error || { key: "error.network" };
    }
  } finally {
    play.abort = null;
  }
  render();
}

// -- rendering ---------------------------------------------------------------

function renderStats(run) {
  const ttft = run.firstToken === null ? null : run.firstToken - run.started;
  $("#play-ttft").textContent = ttft === null ? "–" : fmt.ms(ttft);
  const usage = run.usage;
  const tokens = usage && usage.completion_tokens ? usage.completion_tokens : run.chunks;
  const seconds =
    run.last !== null && run.firstToken !== null ? (run.last - run.firstToken) / 1000 : 0;
  // Without usage, stream chunks stand in for tokens (marked as an estimate).
  const speed = seconds > 0 && tokens > 1 ? fmt.num((tokens - 1) / seconds) : "–";
  $("#play-speed").textContent =
    usage || speed === "–" ? speed : t("play.estimate", { value: speed });
  $("#play-usage").textContent = usage
    ? `${fmt.int(usage.prompt_tokens || 0)} / ${fmt.int(usage.completion_tokens || 0)} / ${fmt.int(usage.total_tokens || 0)}`
    : run.state === "done"
      ? t("play.no_usage")
      : "–";
}

function render() {
  const error = $("#play-error");
  error.hidden = !play.error;
  error.textContent = message(play.error);
  const busy = Boolean(play.abort);
  $("#play-send").disabled = busy || play.loading;
  $("#play-stop").disabled = !busy;
  $("#play-reload").disabled = play.loading;
  const run = play.run;
  $("#play-result").hidden = !run;
  if (!run) return;
  const state = $("#play-state");
  state.textContent = t(STATES[run.state]);
  state.dataset.state = run.state;
  state.className =
    { done: "pill pill-ok", failed: "pill pill-bad", stopped: "pill pill-warn" }[run.state] ||
    "pill";
  const answer = $("#play-answer");
  answer.textContent = run.error && !run.text ? message(run.error) : run.text;
  answer.classList.toggle("status-error", Boolean(run.error && !run.text));
  renderStats(run);
}

// -- wiring ------------------------------------------------------------------

$("#play-form").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
$("#play-stop").addEventListener("click", () => play.abort && play.abort.abort());
$("#play-reload").addEventListener("click", loadModels);
$("#play-provider").addEventListener("change", fillModels);
document.addEventListener("gateway:render", (e) => {
  play.lang = e.detail.lang;
  if (!e.detail.signedIn) {
    if (play.abort) play.abort.abort();
    Object.assign(play, { models: null, run: null, error: null });
    return;
  }
  $("#play-message").placeholder = t("play.placeholder");
  render();
});
document.addEventListener("gateway:view", (e) => {
  if (e.detail.view === "playground" && play.models === null && !play.loading) loadModels();
});
