/* The report page (experiments/webpage.py): draws the interactive charts from the JSON embedded in the
 * page, and registers the service worker that keeps the page and its files for offline use (browsers
 * run none for a page opened from the file system: there the page is a plain page). */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);

  function figure(host, caption) {
    var fig = document.createElement("figure"), cap = document.createElement("figcaption"), plot = document.createElement("div");
    cap.textContent = caption;
    plot.className = "plot";
    fig.appendChild(cap);
    fig.appendChild(plot);
    host.appendChild(fig);
    return plot;
  }

  // Every figure is placed before any is drawn: a chart takes the width its grid cell has.
  function draw() {
    var charts = [];
    var curves = document.getElementById("curves");
    if (curves) {
      curves.textContent = "";
      Object.keys(data.val_loss).forEach(function (profile) {
        var runs = data.val_loss[profile], row = document.createElement("div"), name = profile || "(none)";
        row.className = "charts";
        curves.appendChild(row);
        charts.push([window.DltChart.line, figure(row, "Profile " + name + ": validation loss against time"), {
          xLabel: "time since the run started (s)", yLabel: "validation loss (nats/byte)",
          series: runs.map(function (r) { return {name: r.name, kind: "line", points: r.time}; })}]);
        charts.push([window.DltChart.line, figure(row, "Profile " + name + ": validation loss against MB through the PS"), {
          xLabel: "MB through the PS (up + down)", yLabel: "validation loss (nats/byte)",
          series: runs.map(function (r) { return {name: r.name, kind: "line", points: r.bytes}; })}]);
      });
    }
    var staleness = document.getElementById("staleness-charts");
    if (staleness) {
      staleness.textContent = "";
      Object.keys(data.staleness).forEach(function (protocol) {
        charts.push([window.DltChart.bars, figure(staleness, "Protocol " + protocol + ": updates by staleness"), {
          bars: data.staleness[protocol], xLabel: "staleness (PS versions)", yLabel: "updates"}]);
      });
    }
    charts.forEach(function (c) { c[0](c[1], c[2]); });
  }

  var width = window.innerWidth, timer = null;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { if (window.innerWidth !== width) { width = window.innerWidth; draw(); } }, 200);
  });
  draw();
  if ("serviceWorker" in navigator && /^https?:$/.test(location.protocol)) {
    navigator.serviceWorker.register("sw.js").catch(function (e) { console.warn("no offline copy:", e.message); });
  }
})();
