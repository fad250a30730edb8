// featurelake UI: draws the charts and lineage graphs from data embedded in the page, as inline SVG.
// No library, no network: every page also carries the same data as a table or list (the text alternative).
"use strict";
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var COLOURS = ["#2563eb", "#ea580c", "#15803d", "#9333ea", "#b91c1c", "#0891b2", "#ca8a04"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, value, attrs) {
    var t = el("text", Object.assign({ x: x, y: y, "font-size": 11, fill: "#374151" }, attrs || {}), parent);
    t.textContent = value;
    return t;
  }

  function fmt(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1e6 || a < 1e-3) return v.toExponential(2);
    return Number(v.toPrecision(4)).toLocaleString("en-US");
  }

  function drawChart(fig) {
    var spec = JSON.parse(fig.getAttribute("data-chart"));
    var names = Object.keys(spec.series);
    var xs = [];
    names.forEach(function (n) {
      spec.series[n].forEach(function (p) { if (xs.indexOf(p[0]) < 0) xs.push(p[0]); });
    });
    var ys = [];
    names.forEach(function (n) {
      spec.series[n].forEach(function (p) { if (p[1] !== null && isFinite(p[1])) ys.push(p[1]); });
    });
    var W = 560, H = 220, L = 58, R = 12, T = 10, B = 40;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": spec.title, class: "plot" });
    el("title", {}, svg).textContent = spec.title + " (the table below holds the same data)";
    el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#f9fafb", stroke: "#e5e7eb" }, svg);
    var lo = ys.length ? Math.min.apply(null, ys) : 0, hi = ys.length ? Math.max.apply(null, ys) : 1;
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    var pad = (hi - lo) * 0.06; lo -= pad; hi += pad;
    if (ys.every(function (y) { return y >= 0; }) && lo < 0) lo = 0;  // rates and counts stay >= 0
    function X(i) { return xs.length < 2 ? L + (W - L - R) / 2 : L + 8 + i * (W - L - R - 16) / (xs.length - 1); }
    function Y(v) { return T + (H - T - B) * (1 - (v - lo) / (hi - lo)); }
    for (var k = 0; k <= 4; k++) {
      var v = lo + (hi - lo) * k / 4, y = Y(v);
      el("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e5e7eb" }, svg);
      text(svg, L - 4, y + 4, fmt(v), { "text-anchor": "end" });
    }
    var every = Math.max(1, Math.ceil(xs.length / 6));
    xs.forEach(function (x, i) {
      if (i % every === 0 || i === xs.length - 1) {
        var label = String(x).length > 16 ? String(x).slice(0, 15) + "…" : String(x);
        text(svg, X(i), H - B + 16, label, { "text-anchor": "middle" });
      }
    });
    var legend = document.createElement("div");
    legend.className = "legend";
    names.forEach(function (n, s) {
      var colour = COLOURS[s % COLOURS.length];
      var points = spec.series[n].filter(function (p) { return p[1] !== null && isFinite(p[1]); })
        .map(function (p) { return [X(xs.indexOf(p[0])), Y(p[1]), p]; });
      var g = el("g", { class: "series", "data-series": n }, svg);
      if (points.length > 1) {
        el("polyline", {
          points: points.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "),
          fill: "none", stroke: colour, "stroke-width": 2
        }, g);
      }
      points.forEach(function (p) {
        var c = el("circle", { cx: p[0], cy: p[1], r: 3.5, fill: colour }, g);
        el("title", {}, c).textContent = n + " at " + p[2][0] + ": " + fmt(p[2][1]);
      });
      var item = document.createElement("span");
      var swatch = document.createElement("i");
      swatch.style.background = colour;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(n));
      legend.appendChild(item);
    });
    if (!ys.length) text(svg, W / 2, H / 2, "no values", { "text-anchor": "middle" });
    var caption = fig.querySelector("figcaption");
    caption.after(svg);
    svg.after(legend);
    fig.classList.add("drawn");
  }

  var ORDER = ["model", "training set", "snapshot", "run"];

  function drawGraph(fig) {
    var source = document.getElementById(fig.getAttribute("data-graph"));
    if (!source) return;
    var graph = JSON.parse(source.textContent);
    var columns = ORDER.map(function () { return []; });
    graph.nodes.forEach(function (n) {
      var c = ORDER.indexOf(n.kind);
      columns[c < 0 ? ORDER.length - 1 : c].push(n);
    });
    var BW = 210, BH = 46, GX = 60, GY = 14;
    var rows = Math.max.apply(null, columns.map(function (c) { return c.length; }).concat([1]));
    var W = ORDER.length * BW + (ORDER.length - 1) * GX + 20, H = rows * (BH + GY) + 30;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": fig.getAttribute("aria-label") || "lineage" });
    el("title", {}, svg).textContent = (fig.getAttribute("aria-label") || "lineage") + " (the list below holds the same links)";
    var at = {};
    columns.forEach(function (col, c) {
      text(svg, 10 + c * (BW + GX), 14, ORDER[c], { "font-weight": 600 });
      col.forEach(function (n, r) { at[n.id] = { x: 10 + c * (BW + GX), y: 22 + r * (BH + GY) }; });
    });
    graph.edges.forEach(function (e) {
      var a = at[e[0]], b = at[e[1]];
      if (!a || !b) return;
      var x1 = a.x + BW, y1 = a.y + BH / 2, x2 = b.x, y2 = b.y + BH / 2, m = (x1 + x2) / 2;
      el("path", { d: "M" + x1 + "," + y1 + " C" + m + "," + y1 + " " + m + "," + y2 + " " + x2 + "," + y2,
        fill: "none", stroke: "#9ca3af", "stroke-width": 1.5, class: "edge" }, svg);
    });
    var fills = { "model": "#dbeafe", "training set": "#fef3c7", "snapshot": "#dcfce7", "run": "#f3e8ff" };
    graph.nodes.forEach(function (n) {
      var p = at[n.id];
      var parent = svg;
      if (n.href) {
        parent = el("a", { href: n.href, class: "node-link" }, svg);
        el("title", {}, parent).textContent = n.kind + " " + n.label + ": " + n.detail;
      }
      var g = el("g", { class: "node", "data-kind": n.kind }, parent);
      el("rect", { x: p.x, y: p.y, width: BW, height: BH, rx: 6, fill: fills[n.kind] || "#f3f4f6", stroke: "#6b7280" }, g);
      text(g, p.x + 8, p.y + 19, n.label.length > 30 ? n.label.slice(0, 29) + "…" : n.label, { "font-weight": 600, fill: n.href ? "#1d4ed8" : "#111827" });
      text(g, p.x + 8, p.y + 36, n.detail.length > 34 ? n.detail.slice(0, 33) + "…" : n.detail);
    });
    fig.querySelector("figcaption").after(svg);
    fig.classList.add("drawn");
  }

  function each(selector, fn) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), function (node) {
      try { fn(node); } catch (err) { node.setAttribute("data-draw-error", String(err)); throw err; }
    });
  }

  function start() {
    each("figure.chart[data-chart]", drawChart);
    each("figure.graph[data-graph]", drawGraph);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
