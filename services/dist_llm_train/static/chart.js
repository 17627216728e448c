/* Small SVG charts of our own, shared by the controller's live view (/ui) and the report (index.html).
 *
 *   DltChart.line(figure, {series: [{name, points: [[x, y], ...], kind: "line" | "points"}],
 *                          xLabel, yLabel, xFormat, yFormat})
 *   DltChart.bars(figure, {bars: [[label, value], ...], xLabel, yLabel, yFormat})
 *
 * `figure` is an element the chart owns: its content is replaced at each call, so a caller redraws by
 * calling again with the whole data (a few thousand points cost a few milliseconds). Text goes in with
 * textContent only: every label may come from a file or another process. The drawing is an <svg
 * role="img"> whose accessible name says what it shows and how many points it holds; the pointer and
 * the arrow keys (the chart takes focus) move a readout over the nearest point. A classic script, not a
 * module: the report must also work when opened from a file:// URL, where modules are refused.
 */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var HEIGHT = 260, MARGIN = {left: 64, right: 16, top: 12, bottom: 44};
  var NUMBER = function (v) { return fmt(v); };

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    return String(Math.round(v * 1000) / 1000);
  }

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function html(name, cls, text, parent) {
    var node = document.createElement(name);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  // About `count` round ticks (steps of 1, 2 or 5 times a power of ten), from one at or below lo to one
  // at or above hi: the axis ends on labelled ticks.
  function ticks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; lo = lo - (lo === 0 ? 0 : 1); }
    var raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; });
    var out = [];
    for (var i = Math.floor(lo / step + 1e-9); i <= Math.ceil(hi / step - 1e-9); i++) out.push(i * step);
    return out.map(function (t) { return parseFloat(t.toPrecision(12)); });
  }

  function extent(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } });
    return lo === Infinity ? null : [lo, hi];
  }

  function frame(figure, label) {
    figure.textContent = "";
    figure.classList.add("chart");
    var width = Math.max(280, Math.round(figure.clientWidth || 640));
    var svg = el("svg", {width: width, height: HEIGHT, viewBox: "0 0 " + width + " " + HEIGHT, role: "img",
                         "aria-label": label, tabindex: "0"}, null);
    figure.appendChild(svg);
    return {svg: svg, width: width, plotW: width - MARGIN.left - MARGIN.right,
            plotH: HEIGHT - MARGIN.top - MARGIN.bottom};
  }

  function axes(f, xs, ys, opts) {
    var g = el("g", {"class": "axes", "aria-hidden": "true"}, f.svg);
    ys.ticks.forEach(function (t) {
      var y = ys.at(t);
      el("line", {x1: MARGIN.left, x2: MARGIN.left + f.plotW, y1: y, y2: y, "class": "grid"}, g);
      el("text", {x: MARGIN.left - 6, y: y + 4, "text-anchor": "end"}, g).textContent = (opts.yFormat || NUMBER)(t);
    });
    xs.ticks.forEach(function (t) {
      var x = xs.at(t);
      el("line", {x1: x, x2: x, y1: MARGIN.top + f.plotH, y2: MARGIN.top + f.plotH + 4, "class": "tick"}, g);
      el("text", {x: x, y: MARGIN.top + f.plotH + 18, "text-anchor": "middle"}, g).textContent = (opts.xFormat || NUMBER)(t);
    });
    el("line", {x1: MARGIN.left, x2: MARGIN.left + f.plotW, y1: MARGIN.top + f.plotH, y2: MARGIN.top + f.plotH,
                "class": "axis"}, g);
    el("text", {x: MARGIN.left + f.plotW / 2, y: HEIGHT - 6, "text-anchor": "middle", "class": "label"}, g)
      .textContent = opts.xLabel || "";
    el("text", {x: 14, y: MARGIN.top + f.plotH / 2, "text-anchor": "middle", "class": "label",
                transform: "rotate(-90 14 " + (MARGIN.top + f.plotH / 2) + ")"}, g).textContent = opts.yLabel || "";
  }

  function scale(lo, hi, from, to, count) {
    var t = ticks(lo, hi, count);
    lo = t[0]; hi = t[t.length - 1];
    var span = hi - lo || 1;
    return {ticks: t, at: function (v) { return from + (v - lo) / span * (to - from); }};
  }

  function legend(figure, series) {
    var list = html("ul", "legend", undefined, figure);
    series.forEach(function (s, i) {
      var item = html("li", "", undefined, list);
      html("span", "swatch s" + (i % 8) + " " + (s.kind || "line"), undefined, item).setAttribute("aria-hidden", "true");
      html("span", "", s.name + " (" + s.points.length + ")", item);
    });
  }

  // The readout: nearest point to the pointer, or stepped through with the arrow keys.
  function readout(figure, svg, marks, opts) {
    if (!marks.length) return;
    marks.sort(function (a, b) { return a.sx - b.sx || a.sy - b.sy; });
    var tip = html("div", "tip", undefined, figure);
    tip.setAttribute("role", "status");
    tip.hidden = true;
    var ring = el("circle", {r: 5, "class": "focus-ring", visibility: "hidden"}, svg);
    var current = -1;
    function show(i) {
      current = i;
      var m = marks[i];
      ring.setAttribute("cx", m.sx); ring.setAttribute("cy", m.sy); ring.setAttribute("visibility", "visible");
      tip.textContent = m.name + ": " + (opts.yFormat || NUMBER)(m.y) + " at " + (opts.xLabel || "x") + " " +
                        (opts.xFormat || NUMBER)(m.x);
      tip.hidden = false;
      tip.style.left = Math.min(m.sx + 8, svg.clientWidth - 180) + "px";
      tip.style.top = Math.max(m.sy - 34, 0) + "px";
    }
    function hide() { tip.hidden = true; ring.setAttribute("visibility", "hidden"); }
    svg.addEventListener("pointermove", function (e) {
      var box = svg.getBoundingClientRect(), px = e.clientX - box.left, py = e.clientY - box.top;
      var best = 0, bestD = Infinity;
      marks.forEach(function (m, i) {
        var d = (m.sx - px) * (m.sx - px) + (m.sy - py) * (m.sy - py);
        if (d < bestD) { bestD = d; best = i; }
      });
      show(best);
    });
    svg.addEventListener("pointerleave", hide);
    svg.addEventListener("blur", hide);
    svg.addEventListener("keydown", function (e) {
      var step = {ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1}[e.key];
      if (e.key === "Escape") { hide(); return; }
      if (e.key === "Home") step = -marks.length;
      if (e.key === "End") step = marks.length;
      if (!step) return;
      e.preventDefault();
      show(Math.max(0, Math.min(marks.length - 1, (current < 0 ? (step > 0 ? -1 : marks.length) : current) + step)));
    });
  }

  function line(figure, opts) {
    var series = (opts.series || []).map(function (s) {
      return {name: s.name, kind: s.kind, points: s.points.filter(function (p) { return isFinite(p[0]) && isFinite(p[1]); })};
    });
    var all = [].concat.apply([], series.map(function (s) { return s.points; }));
    var label = (opts.title || opts.yLabel + " against " + opts.xLabel) + ": " +
                (all.length ? series.map(function (s) { return s.name + ", " + s.points.length + " points"; }).join("; ")
                            : "no data yet");
    var f = frame(figure, label);
    figure.dataset.points = String(all.length);
    if (!all.length) {
      el("text", {x: f.width / 2, y: HEIGHT / 2, "text-anchor": "middle", "class": "empty"}, f.svg).textContent = "no data yet";
      legend(figure, series);
      return;
    }
    var xe = extent(all.map(function (p) { return p[0]; })), ye = extent(all.map(function (p) { return p[1]; }));
    var xs = scale(xe[0], xe[1], MARGIN.left, MARGIN.left + f.plotW, Math.max(3, Math.floor(f.plotW / 90)));
    var ys = scale(ye[0], ye[1], MARGIN.top + f.plotH, MARGIN.top, 5);
    axes(f, xs, ys, opts);
    var marks = [];
    // Lines first, points over them: a few evaluations must stay visible on a dense training curve.
    var order = series.map(function (s, i) { return i; })
      .sort(function (a, b) { return (series[a].kind === "points") - (series[b].kind === "points") || a - b; });
    order.forEach(function (i) {
      var s = series[i];
      var g = el("g", {"class": "series s" + (i % 8), "aria-hidden": "true"}, f.svg);
      if (s.kind === "points") {
        s.points.forEach(function (p) { el("circle", {cx: xs.at(p[0]), cy: ys.at(p[1]), r: 3}, g); });
      } else {
        el("path", {d: s.points.map(function (p, j) { return (j ? "L" : "M") + xs.at(p[0]).toFixed(1) + " " +
                                                             ys.at(p[1]).toFixed(1); }).join("")}, g);
      }
      s.points.forEach(function (p) { marks.push({name: s.name, x: p[0], y: p[1], sx: xs.at(p[0]), sy: ys.at(p[1])}); });
    });
    legend(figure, series);
    readout(figure, f.svg, marks, opts);
  }

  function bars(figure, opts) {
    var data = (opts.bars || []).filter(function (b) { return isFinite(b[1]); });
    var label = (opts.title || opts.yLabel + " by " + opts.xLabel) + ": " +
                (data.length ? data.length + " bars" : "no data yet");
    var f = frame(figure, label);
    figure.dataset.points = String(data.length);
    if (!data.length) {
      el("text", {x: f.width / 2, y: HEIGHT / 2, "text-anchor": "middle", "class": "empty"}, f.svg).textContent = "no data yet";
      return;
    }
    var ys = scale(0, extent(data.map(function (b) { return b[1]; }))[1], MARGIN.top + f.plotH, MARGIN.top, 5);
    var slot = f.plotW / data.length;
    var xs = {ticks: [], at: function () { return 0; }};
    axes(f, xs, ys, opts);
    var g = el("g", {"class": "series s0", "aria-hidden": "true"}, f.svg);
    var marks = [];
    var every = Math.ceil(data.length / Math.max(1, Math.floor(f.plotW / 40)));
    data.forEach(function (b, i) {
      var x = MARGIN.left + i * slot, top = ys.at(b[1]);
      el("rect", {x: x + slot * 0.1, y: top, width: slot * 0.8, height: MARGIN.top + f.plotH - top}, g);
      if (i % every === 0) {
        el("text", {x: x + slot / 2, y: MARGIN.top + f.plotH + 18, "text-anchor": "middle", "class": "bar-label"},
           f.svg).textContent = String(b[0]);
      }
      marks.push({name: String(b[0]), x: b[0], y: b[1], sx: x + slot / 2, sy: top});
    });
    readout(figure, f.svg, marks, {xLabel: opts.xLabel, yFormat: opts.yFormat, xFormat: String});
  }

  window.DltChart = {line: line, bars: bars, fmt: fmt};
})();
