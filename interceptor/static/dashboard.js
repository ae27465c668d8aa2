// tiffin dashboard: polls the admin listener's /api/dashboard (and /api/dashboard/NAME for an open drill-down)
// every 2 s and redraws in place. No framework and no build step; the charts are dashboard-charts.js.
"use strict";

(() => {
  const POLL_MS = 2000;
  const STALE_MS = 3 * POLL_MS + 1000; // no fresh answer for this long: say contact is lost
  const FETCH_TIMEOUT_MS = 5000;
  const TOKEN_KEY = "tiffin.adminToken";
  const STATE_ICONS = { idle: "\u25CB", sleeping: "\u25D2", waking: "\u25D0", warm: "\u25CF" };

  const $ = (id) => document.getElementById(id);
  const view = {
    summary: null, detail: null, open: null, lastOkMs: null, error: null, detailError: null, drawError: null,
    rows: new Map(), // deployment name -> its <tr>, kept across polls so focus and scroll survive
  };

  const { el, dur, rate, clock, ago, sparkline, lineChart, coldChart, phaseText } = window.TiffinCharts;
  const reqs = (n) => `${n} req`;
  const replicas = (c) => `${c.ready} / ${c.desired === null || c.desired === undefined ? "\u2013" : c.desired}`;

  // ---- fetching, with the admin token when the listener wants one ----
  class AuthNeeded extends Error {}
  class Gone extends Error {}

  async function getJSON(path) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    let resp;
    try {
      resp = await fetch(path, { headers, signal: ctrl.signal, cache: "no-store" });
    } catch (err) {
      throw new Error(err.name === "AbortError"
        ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s`
        : "tiffin's admin listener does not answer (stopped, or the network is down)");
    } finally {
      clearTimeout(timer);
    }
    if (resp.status === 401) throw new AuthNeeded(token ? "that token was refused" : "");
    let body = null;
    try { body = await resp.json(); } catch { /* reported below */ }
    if (resp.status === 404 && body && body.error) throw new Gone(body.error.message);
    if (!resp.ok || body === null) {
      const why = body && body.error ? body.error.message : "an answer that is not the dashboard's JSON";
      throw new Error(`HTTP ${resp.status}: ${why}`);
    }
    return body;
  }

  async function poll() {
    try {
      const open = view.open;
      const detailPath = open ? `/api/dashboard/${encodeURIComponent(open)}` : null;
      const [summary, detail] = await Promise.all([
        getJSON("/api/dashboard"),
        detailPath ? getJSON(detailPath).catch((err) => (err instanceof Gone ? err : Promise.reject(err))) : null,
      ]);
      view.summary = summary;
      view.lastOkMs = Date.now();
      view.error = null;
      view.drawError = null;
      showToken(false);
      if (open && open === view.open) {
        if (detail instanceof Gone) {
          view.detail = null;
          view.detailError = detail.message;
        } else {
          view.detail = detail;
          view.detailError = null;
        }
      }
      try {
        render();
      } catch (err) {
        // tiffin answered, but with something this page cannot draw (a newer or older API): say so plainly.
        view.drawError = `this page could not show tiffin's answer (${err.message || err})`;
      }
    } catch (err) {
      if (err instanceof AuthNeeded) {
        view.error = null; // not lost contact: tiffin answered, and wants the token
        sessionStorage.removeItem(TOKEN_KEY);
        showToken(true, err.message);
      } else {
        view.error = err.message || String(err);
      }
    } finally {
      tick();
      setTimeout(poll, POLL_MS);
    }
  }

  function showToken(needed, why) {
    const form = $("token-form");
    if (needed === !form.hidden) return;
    form.hidden = !needed;
    $("content").hidden = needed;
    if (needed) {
      $("updated").textContent = why ? `not connected: ${why}` : "not connected: the admin token is needed";
      $("token-input").focus();
    }
  }

  // Once a second: the "updated" line and the lost-contact banner (also when a fetch hangs without failing).
  function tick() {
    const banner = $("banner");
    const content = $("content");
    if (!$("token-form").hidden) {
      banner.hidden = true; // the form says what is needed
      return;
    }
    if (view.drawError && !view.error) {
      banner.hidden = false;
      banner.textContent = `Connected, but ${view.drawError}. Reload the page after upgrading tiffin.`;
      return;
    }
    if (view.lastOkMs === null) {
      if (view.error) {
        banner.hidden = false;
        banner.textContent = `No contact with tiffin: ${view.error}. Retrying every ${POLL_MS / 1000} s.`;
      }
      return;
    }
    const age = Date.now() - view.lastOkMs;
    $("updated").textContent = `updated ${clock(view.lastOkMs)} (${ago(view.lastOkMs)} ago), every ${POLL_MS / 1000} s`;
    const lost = view.error !== null || age > STALE_MS;
    banner.hidden = !lost;
    content.classList.toggle("stale", lost);
    if (lost) {
      const why = view.error || `no answer for ${dur(age / 1000)}`;
      banner.textContent = `Lost contact with tiffin: ${why}. The numbers below are from ${clock(view.lastOkMs)} `
        + `(${ago(view.lastOkMs)} ago). Retrying every ${POLL_MS / 1000} s.`;
    }
  }

  // ---- the overview ----
  function render() {
    const s = view.summary;
    renderTotals(s.totals, s.runner_pool);
    const seen = new Set();
    const tbody = $("rows");
    s.deployments.forEach((d, i) => {
      seen.add(d.name);
      let tr = view.rows.get(d.name);
      if (!tr) {
        tr = makeRow(d.name);
        view.rows.set(d.name, tr);
      }
      fillRow(tr, d);
      // Keep the API's (config) order, moving a row only when it is out of place: a moved node loses focus.
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const [name, tr] of view.rows) {
      if (!seen.has(name)) { tr.remove(); view.rows.delete(name); }
    }
    applyFilter();
    renderDetail();
  }

  function renderTotals(t, pool) {
    const items = [
      ["deployments", t.deployments, "deployments"],
      ["idle", t.idle, "idle"],
      ["sleeping", t.sleeping, "sleeping"],
      ["waking", t.waking, "waking"],
      ["warm", t.warm, "warm"],
      ["api_ready", t.api_ready, "API servers ready"],
      ["runner_ready", t.runner_ready, "runners ready"],
      ["gpu_runners_ready", t.gpu_runners_ready, "GPU runners up"],
      ["queued", t.queued, "requests queued"],
      ["in_flight", t.in_flight, "requests in flight"],
    ];
    if (pool && pool.rss_bytes != null) {
      items.push(["runner_pool", `${Math.round(pool.rss_bytes / 1048576)} MiB`, `runner pool (${pool.state})`]);
    }
    $("totals").replaceChildren(...items.map(([key, value, label]) =>
      el("div", { class: "total", "data-total": key }, el("div", { class: "v" }, value), el("div", { class: "k" }, label))));
  }

  const COLUMNS = [
    ["name", "Deployment"], ["state", "State"], ["api", "API servers ready/desired"],
    ["runner", "Runners ready/desired"], ["queued", "Queued"], ["in_flight", "In flight"],
    ["oldest", "Oldest wait"], ["last_request", "Last request"], ["cold", "Last cold start"], ["spark", "Last hour"],
  ];

  function makeRow(name) {
    const tr = el("tr", { "data-name": name });
    for (const [key, label] of COLUMNS) tr.append(el("td", { class: key, "data-field": key, "data-label": label }));
    const button = el("button", { type: "button", title: `Details of ${name}` }, name);
    button.addEventListener("click", () => openDetail(view.open === name ? null : name));
    tr.querySelector("td.name").append(button);
    return tr;
  }

  function stateBadge(state) {
    return el("span", { class: `state ${state}` }, el("span", { class: "icon", "aria-hidden": "true" }, STATE_ICONS[state] || "?"), ` ${state}`);
  }

  function fillRow(tr, d) {
    const cell = (key) => tr.querySelector(`td[data-field="${key}"]`);
    tr.classList.toggle("open", view.open === d.name);
    tr.dataset.state = d.state;
    cell("state").replaceChildren(stateBadge(d.state));
    for (const c of ["api", "runner"]) {
      cell(c).textContent = replicas(d[c]);
      cell(c).classList.toggle("short", (d[c].desired || 0) > d[c].ready);
    }
    cell("queued").textContent = reqs(d.queued);
    cell("in_flight").textContent = reqs(d.in_flight);
    cell("oldest").textContent = d.oldest_waiting_s === null ? "none waiting" : dur(d.oldest_waiting_s);
    let last;
    if (d.queued + d.in_flight > 0) last = "now (busy)";
    else if (d.idle_s === null || d.idle_s === undefined) last = "none yet";
    else last = `${dur(d.idle_s)} ago`;
    cell("last_request").textContent = last;
    const lc = d.last_cold_start;
    if (!lc) cell("cold").textContent = "none yet";
    else if (lc.outcome === "failed" || lc.total_ms === null) cell("cold").replaceChildren(el("span", { class: "failed" }, "\u2715 failed"), `, ${ago(lc.at_ms)} ago`);
    else cell("cold").textContent = `${dur(lc.total_ms / 1000)}, ${ago(lc.at_ms)} ago`;
    cell("spark").replaceChildren(sparkline(d.spark));
  }

  function applyFilter() {
    const q = $("filter").value.trim().toLowerCase();
    let shown = 0;
    for (const [name, tr] of view.rows) {
      const hit = !q || name.includes(q) || tr.dataset.state === q;
      tr.hidden = !hit;
      if (hit) shown += 1;
    }
    const total = `${view.rows.size} deployment${view.rows.size === 1 ? "" : "s"}`;
    $("shown").textContent = q ? `${shown} of ${total}` : total;
    $("empty").hidden = shown > 0 || view.rows.size === 0;
  }

  // ---- the drill-down ----
  function openDetail(name) {
    view.open = name;
    view.detail = null;
    view.detailError = null;
    history.replaceState(null, "", name ? `#${encodeURIComponent(name)}` : location.pathname);
    for (const [n, tr] of view.rows) tr.classList.toggle("open", n === name);
    renderDetail();
    if (name) {
      getJSON(`/api/dashboard/${encodeURIComponent(name)}`).then((detail) => {
        if (view.open === name) { view.detail = detail; renderDetail(); }
      }, (err) => {
        if (view.open === name) { view.detailError = err.message; renderDetail(); }
      });
      $("detail").scrollIntoView({ block: "nearest" });
    }
  }

  function renderDetail() {
    const box = $("detail");
    const name = view.open;
    box.hidden = !name;
    if (!name) return;
    const det = view.detail;
    const title = $("detail-title");
    if (!det) {
      title.replaceChildren(`${name}: ${view.detailError || "loading\u2026"}`);
      return;
    }
    const d = det.deployment;
    title.replaceChildren(`${d.name} `, stateBadge(d.state));
    const s = det.series || {};
    const t = s.t || [];
    lineChart($("chart-replicas"), t, [
      { name: "API servers ready", values: s.api_ready, cls: "c1" },
      { name: "API servers desired", values: s.api_desired, cls: "c1 dashed" },
      { name: "runners ready", values: s.runner_ready, cls: "c3" },
      { name: "runners desired", values: s.runner_desired, cls: "c3 dashed" },
    ], { step: true, fmt: (v) => `${Math.round(v)}`, unit: "replicas", minTop: 2, nowMs: det.generated_at_ms });
    lineChart($("chart-requests"), t, [
      { name: "requests/s", values: s.requests_per_s, cls: "c1" },
      { name: "errors/s", values: s.errors_per_s, cls: "cbad dotted" },
    ], { fmt: rate, unit: "per second", minTop: 0.1, nowMs: det.generated_at_ms });
    lineChart($("chart-latency"), t, [
      { name: "queue wait p50", values: s.queue_wait_p50_s, cls: "c2" },
      { name: "queue wait p95", values: s.queue_wait_p95_s, cls: "c2 dashed" },
      { name: "upstream p50", values: s.upstream_p50_s, cls: "c4" },
      { name: "upstream p95", values: s.upstream_p95_s, cls: "c4 dashed" },
    ], { fmt: dur, unit: "seconds", minTop: 0.01, nowMs: det.generated_at_ms });
    coldChart($("chart-coldstarts"), det.cold_starts, det.generated_at_ms, view.summary ? view.summary.window_s : 3600);
    renderSettings(det.settings);
    renderReplicas(det.replicas);
    renderColdTable(det.cold_starts);
  }

  function renderSettings(st) {
    if (!st) return;
    const scaled = (c) => `${c.min_replicas}\u2013${c.max_replicas} replicas, ${c.concurrency} req at once each, target ${c.target} req each`;
    const gpus = st.runner.gpus ? `${st.runner.gpus} per runner${st.runner.gpu_type ? ` (${st.runner.gpu_type})` : ""}` : "none (CPU)";
    const rows = [
      ["model", st.model], ["served as", st.served_model_name],
      ["API servers", scaled(st.api)], ["runners", scaled(st.runner)], ["GPUs", gpus],
      ["idle period", `${dur(st.idle_period_s)} (then to min_replicas)`], ["scale-down window", dur(st.scale_down_window_s)],
      ["queue", `up to ${st.limits.max_queue} req waiting, each up to ${dur(st.limits.wait_timeout_s)}`],
    ];
    $("settings").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function table(head, rows) {
    return el("div", { class: "scroll" }, el("table", { class: "minor" },
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", {}, c))))))));
  }

  function renderReplicas(reps) {
    const rows = [];
    for (const [component, label] of [["api", "API server"], ["runner", "runner"]]) {
      for (const r of (reps && reps[component]) || []) {
        const load = r.in_flight === null || r.in_flight === undefined ? "\u2013" : `${r.in_flight}`;
        rows.push([label, r.id, r.age_s === null || r.age_s === undefined ? "\u2013" : dur(r.age_s),
          `${load} / ${r.concurrency ?? "\u2013"} req`, r.url || "\u2013"]);
      }
    }
    $("replicas").replaceChildren(rows.length
      ? table(["component", "replica", "age", "in flight / concurrency", "address"], rows)
      : el("p", { class: "nodata" }, "no replica is ready (at zero, or starting)"));
  }

  function renderColdTable(cold) {
    const recent = (cold && cold.recent) || [];
    const rows = recent.map((cs) => [
      `${clock(cs.at_ms)} (${ago(cs.at_ms)} ago)`,
      cs.total_ms === null ? "did not finish" : dur(cs.total_ms / 1000),
      cs.outcome === "failed" ? el("span", { class: "failed" }, "\u2715 failed") : "\u2713 ok",
      el("span", { class: "phases" }, phaseText(cs)),
    ]);
    $("coldstarts").replaceChildren(rows.length
      ? table(["arrived", "arrival \u2192 first byte", "outcome", "phases (time since arrival)"], rows)
      : el("p", { class: "nodata" }, "no cold start in the last hour"));
  }

  // ---- wiring ----
  function start() {
    $("filter").addEventListener("input", applyFilter);
    $("detail-close").addEventListener("click", () => openDetail(null));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && view.open && document.activeElement !== $("filter")) openDetail(null);
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      showToken(false);
      $("updated").textContent = "connecting\u2026";
    });
    const fromHash = decodeURIComponent(location.hash.slice(1));
    if (fromHash) openDetail(fromHash);
    setInterval(tick, 1000);
    poll();
  }

  start();
})();
