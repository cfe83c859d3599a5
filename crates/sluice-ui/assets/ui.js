// Refreshes the page's <main> in place every two seconds while the tab is visible, unless the
// page opts out (forms). No framework: the server renders every page.
(function () {
  const main = document.getElementById("content");
  if (!main || main.dataset.live !== "on") return;
  async function refresh() {
    if (document.hidden) return;
    try {
      const r = await fetch(location.href, { credentials: "same-origin" });
      if (!r.ok) return;
      const page = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = page.getElementById("content");
      if (fresh) main.innerHTML = fresh.innerHTML;
    } catch (e) {
      // The driver is restarting: keep the last page and try again.
    }
  }
  setInterval(refresh, 2000);
})();
