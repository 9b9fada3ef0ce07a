// The page's three views (status, playground, providers), one visible at a
// time, chosen by the URL fragment (#status, #playground, #providers) so
// that a view can be bookmarked and survives a reload. The fragment never
// holds anything but the view's name.

const VIEWS = ["status", "playground", "providers"];
const DEFAULT_VIEW = "status"; // the landing page once signed in

export function currentView() {
  const name = location.hash.replace(/^#/, "");
  return VIEWS.includes(name) ? name : DEFAULT_VIEW;
}

function show() {
  const view = currentView();
  for (const panel of document.querySelectorAll("[data-view-panel]")) {
    panel.hidden = panel.dataset.viewPanel !== view;
  }
  for (const tab of document.querySelectorAll(".tabs [data-view]")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  document.dispatchEvent(new CustomEvent("gateway:view", { detail: { view } }));
}

window.addEventListener("hashchange", show);
document.addEventListener("gateway:render", (e) => {
  if (e.detail.signedIn) show();
});
