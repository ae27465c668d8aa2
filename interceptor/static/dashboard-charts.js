// tiffin dashboard, part 1 of 2: formatting and the inline-SVG charts (dashboard.js polls and lays out).
// No dependencies; everything it draws comes from the numbers it is given, as text and SVG nodes only.
"use strict";

window.TiffinCharts = (() => {
  const PHASES = ["activated", "replica_started", "api_ready", "engine_ready", "dispatched", "first_byte"];
  const PHASE_NAMES = {
    activated: "activation", replica_started: "replica started", api_ready: "API server ready",
    engine_ready: "engine ready", dispatched: "dispatched", first_byte: "first byte", total: "total (no phases)",
  };
  const SVGNS = "http://www.w3.org/2000/svg";

  // ---- small DOM helpers (text only: nothing from the API is parsed as HTML) ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function sv(tag, attrs, ...children) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  // ---- formatting: every number leaves with its unit ----
  function dur(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return "\u2013";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    // Round first, then split, so 59.6 s never shows as "1 min 60 s".
    const [big, small, bigUnit, smallUnit] = s < 3600
      ? [Math.floor(Math.round(s) / 60), Math.round(s) % 60, "min", "s"]
      : [Math.floor(Math.round(s / 60) / 60), Math.round(s / 60) % 60, "h", "min"];
    return small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`;
  }
  const rate = (r) => (r === null || r === undefined ? "\u2013" : `${r < 10 ? r.toFixed(2) : r.toFixed(1)}/s`);
  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const ago = (ms) => dur(Math.max(0, (Date.now() - ms) / 1000));

  function sparkline(spark) {
    const W = 120, H = 22;
    const svg = sv("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    const req = (spark && spark.requests_per_s) || [];
    const run = (spark && spark.runner_ready) || [];
    const n = Math.max(req.length, run.length);
    const known = (a) => a.filter((v) => v !== null && v !== undefined);
    const peakReq = Math.max(0, ...known(req));
    const peakRun = Math.max(0, ...known(run));
    svg.append(sv("title", {}, n && (known(req).length || known(run).length)
      ? `last hour: requests per second (line, peak ${rate(peakReq)}), runners ready (shaded, peak ${peakRun})`
      : "last hour: nothing recorded yet"));
    svg.append(sv("line", { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: "axis" }));
    if (!n) return svg;
    const x = (i) => (n === 1 ? W : (i / (n - 1)) * W);
    if (peakRun > 0) {
      let d = "";
      run.forEach((v, i) => { if (v !== null && v !== undefined) d += `M${x(i).toFixed(1)},${H}V${(H - (v / peakRun) * (H - 2)).toFixed(1)}h${(W / n).toFixed(1)}V${H}Z`; });
      svg.append(sv("path", { d, class: "area" }));
    }
    if (peakReq > 0) svg.append(sv("path", { d: pathOf(req, x, (v) => H - 1 - (v / peakReq) * (H - 3), false), class: "line c1" }));
    return svg;
  }

  function resetFigure(fig) {
    const caption = fig.querySelector("figcaption");
    fig.replaceChildren(caption);
  }

  function pathOf(values, x, y, step) {
    let d = "";
    let pen = false;
    (values || []).forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const X = x(i).toFixed(1), Y = y(v).toFixed(1);
      if (!pen) d += `M${X},${Y}`;
      else d += step ? `H${X}V${Y}` : `L${X},${Y}`;
      pen = true;
    });
    return d;
  }

  function niceTop(v, min) {
    const top = Math.max(v, min);
    const mag = 10 ** Math.floor(Math.log10(top));
    for (const m of [1, 2, 5, 10]) if (m * mag >= top) return m * mag;
    return 10 * mag;
  }

  // Axes in time: "60 min ago" ... "now", from the series' own timestamps (epoch seconds).
  function frame(svg, W, H, pad, top, fmt, t0, t1, nowS) {
    for (const f of [0, 0.5, 1]) {
      const y = pad.t + (1 - f) * (H - pad.t - pad.b);
      svg.append(sv("line", { x1: pad.l, x2: W - pad.r, y1: y, y2: y, class: f === 0 ? "axis" : "gridline" }));
      svg.append(sv("text", { x: pad.l - 4, y: y + 3, "text-anchor": "end" }, fmt(top * f)));
    }
    const minutesAgo = (ts) => Math.round((nowS - ts) / 60);
    const labels = [[pad.l, t0, "start"], [(pad.l + W - pad.r) / 2, (t0 + t1) / 2, "middle"], [W - pad.r, t1, "end"]];
    for (const [x, ts, anchor] of labels) {
      const m = minutesAgo(ts);
      svg.append(sv("text", { x, y: H - 3, "text-anchor": anchor }, m <= 0 ? "now" : `${m} min ago`));
    }
  }

  function legend(items) {
    return el("div", { class: "keys" }, ...items.map((item) => {
      const swatch = sv("svg", { width: 22, height: 10, "aria-hidden": "true" }, item.swatch);
      return el("span", {}, swatch, item.text);
    }));
  }

  function lineChart(fig, t, lines, opts) {
    resetFigure(fig);
    const W = 360, H = 140, pad = { l: 46, r: 8, t: 8, b: 18 };
    const all = lines.flatMap((l) => (l.values || []).filter((v) => v !== null && v !== undefined));
    const peak = Math.max(0, ...all);
    // Whole numbers (replicas): an even top keeps the middle gridline on a whole number too.
    const top = opts.step ? Math.max(opts.minTop, 2 * Math.ceil(peak / 2)) : niceTop(peak, opts.minTop);
    const n = t.length;
    const nowS = (opts.nowMs || Date.now()) / 1000;
    const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    svg.append(sv("title", {}, `${fig.querySelector("figcaption").textContent} (${opts.unit})`));
    frame(svg, W, H, pad, top, opts.fmt, n ? t[0] : nowS - 3600, n ? t[n - 1] : nowS, nowS);
    const x = (i) => pad.l + (n <= 1 ? 1 : i / (n - 1)) * (W - pad.l - pad.r);
    const y = (v) => pad.t + (1 - v / top) * (H - pad.t - pad.b);
    for (const line of lines) {
      const values = line.values || [];
      svg.append(sv("path", { d: pathOf(values, x, y, opts.step), class: `line ${line.cls}` }));
      // A lone point (nulls on both sides) draws no segment: mark it so it is not lost.
      values.forEach((v, i) => {
        const lone = v !== null && v !== undefined && (values[i - 1] ?? null) === null && (values[i + 1] ?? null) === null;
        if (lone) svg.append(sv("circle", { cx: x(i), cy: y(v), r: 2, class: `line ${line.cls}` }));
      });
    }
    fig.append(svg);
    if (!all.length) fig.append(el("div", { class: "nodata" }, "nothing recorded in the last hour yet"));
    fig.append(legend(lines.map((line) => {
      const values = (line.values || []).filter((v) => v !== null && v !== undefined);
      const latest = values.length ? opts.fmt(values[values.length - 1]) : "\u2013";
      return { swatch: sv("line", { x1: 1, x2: 21, y1: 5, y2: 5, class: `line ${line.cls}` }), text: `${line.name} (latest ${latest})` };
    })));
  }

  // Each cold start is a bar at its arrival time, as tall as its total, split into its phases where known.
  function segmentsOf(cs) {
    const segs = [];
    let prev = 0;
    for (const p of PHASES) {
      const at = cs.phases ? cs.phases[p] : undefined;
      if (at !== undefined && at !== null && at >= prev) {
        segs.push({ phase: p, from: prev, to: at });
        prev = at;
      }
    }
    if (cs.total_ms !== null && cs.total_ms !== undefined && cs.total_ms > prev) {
      segs.push({ phase: segs.length ? "first_byte" : "total", from: prev, to: cs.total_ms });
    }
    return segs;
  }

  function phaseText(cs) {
    const parts = PHASES.filter((p) => cs.phases && cs.phases[p] !== undefined && cs.phases[p] !== null)
      .map((p) => `${PHASE_NAMES[p]} at ${dur(cs.phases[p] / 1000)}`);
    return parts.length ? parts.join(" \u00B7 ") : "no phase breakdown recorded";
  }

  function coldChart(fig, cold, generatedMs, windowS) {
    resetFigure(fig);
    const recent = (cold && cold.recent) || [];
    fig.append(el("div", { class: "stats", "data-field": "cold-stats" },
      `${cold ? cold.count : 0} cold start${cold && cold.count === 1 ? "" : "s"} \u00B7 p50 ${dur(cold ? cold.p50_s : null)} \u00B7 p95 ${dur(cold ? cold.p95_s : null)}`));
    const W = 360, H = 140, pad = { l: 46, r: 8, t: 8, b: 18 };
    const nowS = (generatedMs || Date.now()) / 1000;
    const t0 = nowS - windowS;
    const ends = recent.map((cs) => Math.max(cs.total_ms || 0, ...Object.values(cs.phases || {})) / 1000);
    const top = niceTop(Math.max(0, ...ends), 1);
    const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    svg.append(sv("title", {}, "Cold starts in the last hour: one bar each, height = seconds from arrival to first byte"));
    frame(svg, W, H, pad, top, dur, t0, nowS, nowS);
    const x = (s) => pad.l + ((s - t0) / windowS) * (W - pad.l - pad.r);
    const y = (ms) => pad.t + (1 - ms / 1000 / top) * (H - pad.t - pad.b);
    const bw = 7;
    const seen = new Set();
    for (const cs of recent) {
      const cx = Math.min(Math.max(x(cs.at_ms / 1000), pad.l + bw / 2), W - pad.r - bw / 2);
      const g = sv("g", { class: "cold-start", "data-outcome": cs.outcome });
      g.append(sv("title", {}, `cold start at ${clock(cs.at_ms)}: ${cs.total_ms === null ? "did not finish" : dur(cs.total_ms / 1000) + " to first byte"}; ${phaseText(cs)}`));
      const segs = segmentsOf(cs);
      for (const seg of segs) {
        seen.add(seg.phase);
        g.append(sv("rect", { x: cx - bw / 2, width: bw, y: y(seg.to), height: Math.max(1, y(seg.from) - y(seg.to)), class: `seg-${seg.phase}` }));
      }
      if (cs.outcome === "failed") {
        const topMs = segs.length ? segs[segs.length - 1].to : 0;
        g.append(sv("rect", { x: cx - bw / 2, width: bw, y: y(topMs) - 2, height: Math.max(3, y(0) - y(topMs) + 2), class: "bar-failed" }));
        g.append(sv("text", { x: cx, y: y(topMs) - 4, "text-anchor": "middle", class: "fbad" }, "\u2715"));
      }
      svg.append(g);
    }
    fig.append(svg);
    if (!recent.length) fig.append(el("div", { class: "nodata" }, "no cold start in the last hour"));
    const keys = [...PHASES, "total"].filter((p) => seen.has(p)).map((p) => ({
      swatch: sv("rect", { x: 1, y: 0, width: 20, height: 10, class: `seg-${p}` }),
      text: p === "total" ? "arrival \u2192 first byte" : `\u2192 ${PHASE_NAMES[p]}`,
    }));
    if (recent.some((cs) => cs.outcome === "failed")) {
      keys.push({ swatch: sv("rect", { x: 1, y: 1, width: 20, height: 8, class: "bar-failed" }), text: "\u2715 failed" });
    }
    fig.append(legend(keys));
  }

  return { PHASES, PHASE_NAMES, el, sv, dur, rate, clock, ago, sparkline, lineChart, coldChart, phaseText };
})();
