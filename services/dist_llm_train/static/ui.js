/* The live view: follows /ui/events (server-sent events, at most two updates a second) and falls back to
 * polling /ui/state when the stream cannot be had. Every update carries the whole run (controller
 * routers/ui.py) and the loss-curve rows after the last `seq` this page holds. Fields the page does not
 * know are shown as they come, in the "more" cells and the key/value lists: new ones appear as they land.
 * All text goes in with textContent: names and reasons come from other processes and files. */
(function () {
  "use strict";
  var POLL_S = 2, ENDED_POLL_S = 10, MAX_ROWS = 6000;
  var fmt = window.DltChart.fmt;
  var page = {runId: null, lastSeq: 0, rows: [], snap: null, drawn: -1, source: null, timer: null};

  function $(id) { return document.getElementById(id); }

  function cell(row, text, title) {
    var td = document.createElement("td");
    td.textContent = text;
    if (title) td.title = title;
    row.appendChild(td);
    return td;
  }

  function mb(bytes) { return bytes >= 1e6 ? fmt(bytes / 1e6) + " MB" : fmt(bytes / 1e3) + " kB"; }
  function pct(share) { return share === null || share === undefined ? "–" : Math.round(share * 100) + " %"; }
  function seconds(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
  }

  // Any value under any key, readable: the generic path every unknown field takes.
  function show(key, v) {
    if (v === null || v === undefined || v === "") return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") {
      if (/^(since|time)$|_at$/.test(key) && v > 1e9) return new Date(v * 1000).toLocaleTimeString();  // Unix time
      if (/bytes/.test(key)) return mb(v);
      if (/utilization/.test(key)) return pct(v);
      return fmt(v);
    }
    if (Array.isArray(v)) return v.length ? v.map(function (x) { return show(key, x); }).join(", ") : "none";
    if (typeof v === "object") {
      return Object.keys(v).map(function (k) { return k + " " + show(k, v[k]); }).join(", ") || "–";
    }
    v = String(v);
    return v.length > 300 ? v.slice(0, 300) + "…" : v;
  }

  function others(obj, shown) {
    return Object.keys(obj || {}).filter(function (k) { return shown.indexOf(k) < 0; })
      .map(function (k) { return k + " " + show(k, obj[k]); }).join("; ");
  }

  function kv(dl, obj, skip) {
    dl.textContent = "";
    Object.keys(obj || {}).forEach(function (k) {
      if (skip && skip.indexOf(k) >= 0) return;
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = show(k, obj[k]);
      dl.appendChild(dt);
      dl.appendChild(dd);
    });
  }

  function fill(tbody, items, build) {
    tbody.textContent = "";
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      build(tr, item);
      tbody.appendChild(tr);
    });
  }

  // ---- the run ---------------------------------------------------------------------------------
  function renderRun(snap) {
    var run = snap.status.run, p = snap.progress;
    $("run-id").textContent = run.id;
    var state = $("state");
    state.textContent = run.state;
    state.className = "badge state-" + run.state;
    $("reason").textContent = run.reason ? run.reason : (run.degraded ? "links degraded: " + run.degraded : "");
    var bar = $("progress");
    if (p.fraction === null) bar.removeAttribute("value"); else bar.value = p.fraction;
    var text = p.done + " of " + p.total + " " + p.unit + (p.fraction === null ? "" : " (" + pct(p.fraction) + ")");
    if (run.elapsed_s !== null) text += " · elapsed " + seconds(run.elapsed_s);
    if (p.eta_s !== null) text += " · about " + seconds(p.eta_s) + " left (" + p.bound + ")";
    if (p.note && !snap.ended) text += ", " + p.note;
    if (run.state === "waiting") text += " · waiting for the emulated links to be applied and probed";
    $("progress-text").textContent = text;
    $("progress-label").textContent = "Progress (" + p.unit + ")";
    var fields = {};
    Object.keys(run).forEach(function (k) { if (["id", "state", "reason"].indexOf(k) < 0) fields[k] = run[k]; });
    Object.keys(snap.status.tasks || {}).forEach(function (k) { fields["tasks." + k] = snap.status.tasks[k]; });
    if (snap.codec) Object.keys(snap.codec).forEach(function (k) { fields["compression." + k] = snap.codec[k]; });
    kv($("run-fields"), fields);
    document.title = run.state + " · " + run.id + " · dist-llm-train";
  }

  // ---- workers ---------------------------------------------------------------------------------
  var WORKER_SHOWN = ["worker_id", "name", "status", "task", "ewma_tokens_per_sec", "ewma_step_time_s",
                      "compute_utilization", "rtt_ms", "down_mbit", "codec", "ratio", "staleness", "silent_s"];

  function presetLink(l) {
    if (!l) return "–";
    if (l.down) return "cut";
    var parts = [fmt(l.delay_ms) + " ms" + (l.jitter_ms ? " ± " + fmt(l.jitter_ms) : "")];
    if (l.loss_pct) parts.push(fmt(l.loss_pct) + " % loss");
    parts.push(l.rate_mbit ? fmt(l.rate_mbit) + " Mbit/s" : "no rate cap");
    return parts.join(", ");
  }

  // Each container's link, TCP in force and delayer figures, by container name (/status's links.containers).
  function containers(snap) { return (snap.status.links || {}).containers || {}; }

  function renderWorkers(snap) {
    var links = containers(snap), codec = snap.codec;
    fill($("workers").tBodies[0], snap.status.workers, function (tr, w) {
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = w.name;
      th.title = w.worker_id;
      tr.appendChild(th);
      cell(tr, w.status).className = "status-" + w.status;
      cell(tr, w.task || "–");
      cell(tr, fmt(w.ewma_tokens_per_sec));
      cell(tr, fmt(w.ewma_step_time_s));
      cell(tr, pct(w.compute_utilization));
      cell(tr, presetLink(links[w.name]));
      var measured = w.rtt_ms === null || w.rtt_ms === undefined ? "–" : "RTT " + fmt(w.rtt_ms) + " ms";
      if (w.down_mbit) measured += ", input " + fmt(w.down_mbit) + " Mbit/s";
      cell(tr, measured, "heartbeat round trip (EWMA) and task-input download rate, measured by the worker");
      var name = w.codec || (codec ? codec.codec : null), ratio = w.codec ? w.ratio : (codec ? codec.ratio : null);
      cell(tr, name ? name + (ratio ? " " + fmt(ratio) : "") + (w.codec ? "" : " (run)") : "–");
      cell(tr, fmt(w.staleness));
      cell(tr, fmt(w.silent_s));
      cell(tr, others(w, WORKER_SHOWN)).className = "more";
    });
  }

  // ---- links -----------------------------------------------------------------------------------
  var LINK_SHOWN = ["role", "delay_ms", "jitter_ms", "loss_pct", "rate_mbit", "down", "installed", "delayer", "tcp",
                    "tcp_in_force"];
  var DELAYER_SHOWN = ["late_ms", "dropped_loss", "overflow_drops", "socket_drops", "cpu_pct"];

  function renderLinks(snap) {
    var report = snap.links_report || {}, probe = report.probe;
    var fields = {}, emulation = report.emulation, overRun = (emulation && emulation.containers) || {};
    Object.keys(report).forEach(function (k) { if (k !== "probe" && k !== "emulation") fields[k] = report[k]; });
    // The delayers over the whole run (the row's emulation_* figures); per container in the table below.
    if (emulation) {
      Object.keys(emulation).forEach(function (k) { if (k !== "containers") fields["emulation." + k] = emulation[k]; });
    } else if (snap.links_report) {
      fields.emulation = "no delayer runs (nothing emulated in userspace)";
    }
    if (probe) {
      Object.keys(probe).forEach(function (k) {
        if (["expected", "verdict"].indexOf(k) < 0 && !(probe.expected && k in probe.expected)) fields["probe." + k] = probe[k];
      });
    }
    if (!snap.links_report) fields = {"sidecar": "no report yet (it posts one as soon as it starts)"};
    kv($("links-fields"), fields);
    var expected = (probe && probe.expected) || {};
    fill($("probe").tBodies[0], Object.keys(expected), function (tr, k) {
      cell(tr, k);
      cell(tr, show(k, expected[k]));
      cell(tr, show(k, probe[k]));
      cell(tr, show(k, probe.verdict ? probe.verdict[k] : null));
    });
    var links = containers(snap);
    fill($("links").tBodies[0], Object.keys(links).sort(), function (tr, name) {
      var l = links[name] || {}, d = l.delayer || {}, late = d.late_ms || {}, tcp = l.tcp_in_force || {};
      var run = overRun[l.role === "worker" ? "worker-" + l.index : l.role];
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      tr.appendChild(th);
      cell(tr, show("role", l.role));
      cell(tr, fmt(l.delay_ms));
      cell(tr, fmt(l.jitter_ms));
      cell(tr, fmt(l.loss_pct));
      cell(tr, l.rate_mbit ? fmt(l.rate_mbit) : "unlimited");
      var identity = !l.delay_ms && !l.jitter_ms && !l.loss_pct && !l.rate_mbit;
      cell(tr, l.down ? "cut" : l.installed !== false ? "applied" : identity ? "nothing to emulate" : "not applied yet");
      cell(tr, show("congestion_control", tcp.congestion_control), l.tcp_in_force ? "in force: " + show("tcp", tcp) : "");
      cell(tr, l.delayer ? fmt(late.p50) + " / " + fmt(late.p99) : "no delayer");
      cell(tr, run ? fmt(run.late_p99_ms) + " / " + show("drops", run.drops) : "–",
           run ? run.packets + " packets, " + run.late_over_tolerance + " later than the tolerance" : "");
      cell(tr, l.delayer ? "loss model " + show("n", d.dropped_loss) + ", overflow " + show("n", d.overflow_drops) +
                           (d.socket_drops ? ", socket " + show("n", d.socket_drops) : "") : "–");
      cell(tr, l.delayer ? fmt(d.cpu_pct) : "–");
      var more = [others(l, LINK_SHOWN), l.delayer ? others(d, DELAYER_SHOWN) : ""].filter(Boolean).join("; ");
      cell(tr, more).className = "more";
    });
  }

  // ---- parameter server ------------------------------------------------------------------------
  function renderPs(snap) {
    var ps = snap.status.ps;
    kv($("ps-fields"), ps || {"parameter server": snap.status.run.mode === "ml" ? "no report yet" : "none in a basic run"});
    var note = "";
    if (!snap.staleness && snap.status.run.mode === "ml") {
      note = "The PS writes the histogram when the run ends" +
             (ps ? "; mean staleness so far " + fmt(ps.mean_staleness) + "." : ".");
    }
    $("staleness-note").textContent = note;
    var key = JSON.stringify(snap.staleness);
    if (key !== page.stalenessKey) {
      page.stalenessKey = key;
      window.DltChart.bars($("staleness"), {bars: snap.staleness || [], xLabel: "staleness", yLabel: "updates",
                                            title: "staleness histogram"});
    }
  }

  // ---- the loss curve --------------------------------------------------------------------------
  function addRows(curve) {
    curve.rows.forEach(function (r) { if (r.seq > page.lastSeq) page.rows.push(r); });
    page.lastSeq = Math.max(page.lastSeq, curve.last_seq);
    while (page.rows.length > MAX_ROWS) {
      var plain = 0;
      page.rows = page.rows.filter(function (r, i) {
        return r.val_loss !== null || i === page.rows.length - 1 || (plain++ % 2 === 0);
      });
      if (plain === 0) page.rows = page.rows.slice(-MAX_ROWS);
    }
  }

  function renderCurve(snap, skipped) {
    var note = "";
    if (snap.status.run.mode !== "ml") note = "A basic run trains no model: it has no loss curve.";
    else if (!page.rows.length) note = "Waiting for the parameter server's first version.";
    if (skipped) note += " " + skipped + " lines of curve.csv were refused (malformed).";
    $("curve-note").textContent = note;
    if (page.drawn === page.rows.length && page.drawnWidth === window.innerWidth) return;
    page.drawn = page.rows.length;
    page.drawnWidth = window.innerWidth;
    var val = page.rows.filter(function (r) { return r.val_loss !== null; });
    var train = page.rows.filter(function (r) { return r.train_loss !== null; });
    var bytes = function (r) { return ((r.bytes_up || 0) + (r.bytes_down || 0)) / 1e6; };
    window.DltChart.line($("loss-time"), {xLabel: "time since the start (s)", yLabel: "loss (nats/byte)", series: [
      {name: "validation", kind: "points", points: val.map(function (r) { return [r.t_s, r.val_loss]; })},
      {name: "training (recent mean)", kind: "line", points: train.map(function (r) { return [r.t_s, r.train_loss]; })}]});
    window.DltChart.line($("loss-bytes"), {xLabel: "MB through the PS", yLabel: "loss (nats/byte)", series: [
      {name: "validation", kind: "points", points: val.map(function (r) { return [bytes(r), r.val_loss]; })},
      {name: "training (recent mean)", kind: "line", points: train.map(function (r) { return [bytes(r), r.train_loss]; })}]});
    fill($("val-table").tBodies[0], val, function (tr, r) {
      [fmt(r.t_s), fmt(r.version), fmt(r.val_loss), fmt(r.train_loss), fmt(bytes(r))].forEach(function (t) { cell(tr, t); });
    });
  }

  // ---- updates and transport -------------------------------------------------------------------
  function apply(update) {
    var run = update.status.run;
    if (page.runId !== run.id) { page.runId = run.id; page.rows = []; page.lastSeq = 0; page.drawn = -1; }
    addRows(update.curve);
    page.snap = update;
    renderRun(update);
    renderWorkers(update);
    renderLinks(update);
    renderPs(update);
    renderCurve(update, update.curve.skipped);
  }

  function connection(text) { $("connection").textContent = text; }

  function poll(period) {
    clearTimeout(page.timer);
    fetch("/ui/state?since=" + page.lastSeq, {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (update) {
        apply(update);
        var next = update.ended ? ENDED_POLL_S : period;
        connection(update.ended ? "run over: checking for a new run every " + next + " s"
                                : "polling every " + next + " s (no event stream)");
        page.timer = setTimeout(function () { poll(period); }, next * 1000);
      })
      .catch(function () {
        connection("controller unreachable: retrying in " + period + " s");
        page.timer = setTimeout(function () { poll(period); }, period * 1000);
      });
  }

  function stream() {
    if (!window.EventSource) { poll(POLL_S); return; }
    var source = new EventSource("/ui/events?since=" + page.lastSeq);
    page.source = source;
    source.addEventListener("update", function (e) {
      var update = JSON.parse(e.data);
      apply(update);
      connection("live: the controller pushes changes");
      if (update.ended) { source.close(); poll(ENDED_POLL_S); }  // the stream ends with the run
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) { poll(POLL_S); return; }  // refused (e.g. 503): poll
      connection("stream interrupted: reconnecting");
    };
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { if (page.snap) { page.stalenessKey = null; renderPs(page.snap);
                                                            renderCurve(page.snap, page.snap.curve.skipped); } }, 200);
  });
  stream();
})();
