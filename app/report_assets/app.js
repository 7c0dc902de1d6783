// ffp report page: reads window.FFP_REPORT (data.js), loads pair details from pairs/chunk-*.js on demand.
// Everything that comes from the run (ids, captions, reasons, notes) is set with textContent, never as HTML.
// In review mode (served by `ffp review`, which fills <meta name="ffp-review">) it also posts labels.
"use strict";

(function () {
  const R = window.FFP_REPORT;
  const PAGE = 48;
  const STATES = ["accepted", "rejected", "failed"];
  const $ = (id) => document.getElementById(id);

  if (!R || !R.pairs) {
    const box = $("load-error");
    box.hidden = false;
    box.textContent = "data.js is missing or damaged: rebuild the report with `ffp report RUN`.";
    return;
  }
  const P = R.pairs;
  const N = P.id.length;
  const meta = document.querySelector('meta[name="ffp-review"]');
  const review = meta && meta.content ? JSON.parse(meta.content) : null;
  const labels = new Map(Object.entries(R.labels).map(([k, v]) => [Number(k), v]));
  const state = { stage: -1, task: -1, status: "all", mediaOnly: false, page: 0 };
  let shown = [];
  let current = -1;

  // DOM helpers: text only ------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }
  function fmt(x) {
    if (x === null || x === undefined) return "-";
    if (typeof x === "string") return x;
    const a = Math.abs(x);
    return a !== 0 && (a < 0.01 || a >= 1e5) ? x.toExponential(2) : (Math.round(x * 1000) / 1000).toString();
  }

  // Pair details, loaded a chunk at a time (script tags work from file:// where fetch does not) ----------
  const chunks = new Map();
  const waiting = new Map();
  window.FFP_CHUNK = function (index, data) {
    chunks.set(index, data);
    (waiting.get(index) || []).forEach((w) => w.resolve(data));
    waiting.delete(index);
  };
  function details(i) {
    const c = Math.floor(i / R.chunk);
    if (chunks.has(c)) return Promise.resolve(chunks.get(c)[i % R.chunk]);
    return new Promise((resolve, reject) => {
      const first = !waiting.has(c);
      if (first) waiting.set(c, []);
      waiting.get(c).push({ resolve, reject });
      if (!first) return;
      const script = document.createElement("script");
      script.src = "pairs/chunk-" + String(c).padStart(6, "0") + ".js";
      script.onerror = () => {
        (waiting.get(c) || []).forEach((w) => w.reject(new Error("cannot load " + script.src)));
        waiting.delete(c);
      };
      document.body.appendChild(script);
    }).then((data) => (Array.isArray(data) ? data[i % R.chunk] : data));
  }

  // Summary ------------------------------------------------------------------------------------------------
  function renderSummary() {
    $("run-name").textContent = R.run.name || "";
    $("run-meta").textContent = R.run.url + " · generated " + R.run.generated_at;
    const tbody = clear($("stages").tBodies[0]);
    for (const s of R.run.stages) {
      const tr = el("tr");
      const rate = s.samples_per_s ? s.samples_per_s.toFixed(2) : "-";
      const shards = s.shards_done + "/" + s.shards_total + (s.shards_stale ? " (" + s.shards_stale + " stale)" : "");
      for (const v of [s.stage, s.type, shards, s.ok, s.filtered, s.failed, s.quarantined, rate]) tr.appendChild(el("td", null, v));
      tr.dataset.stage = s.stage;
      tbody.appendChild(tr);
    }
    const box = clear($("judge-summary"));
    for (const j of R.judges) {
      const c = j.counts;
      const p = el("p", "judge-counts");
      p.dataset.stage = j.stage;
      p.textContent = j.stage + ": " + c.pairs + " pairs, " + c.accepted + " accepted, " + c.rejected + " rejected, " +
        c.failed + " failed, " + c.labelled + " labelled" +
        j.exports.map((e) => "; " + e.stage + " (" + e.folder + "/, " + e.select + "): " + e.written + " written, " +
          e.left_out + " left out").join("");
      box.appendChild(p);
      if (j.not_computed.length) box.appendChild(el("p", "muted", j.stage + ": not computed (all empty): " + j.not_computed.join(", ")));
    }
    const warnings = clear($("warnings"));
    for (const w of R.warnings) warnings.appendChild(el("li", null, w));
    const media = R.judges.reduce((n, j) => n + j.counts.media, 0);
    $("media-note").textContent = "Media (clips, thumbnails, masks) copied for " + media + " of " + N +
      " pairs (--max-media " + R.run.max_media + " per judge stage, rejected pairs included); " +
      "pairs marked \u201cno media\u201d show their scores, reasons and text only.";
    if (review) {
      const banner = $("review-banner");
      banner.hidden = false;
      banner.textContent = "Reviewing as " + review.reviewer + ": open a pair to accept or reject it.";
    }
  }

  // Filters --------------------------------------------------------------------------------------------------
  function option(select, value, text) {
    const o = el("option", null, text);
    o.value = String(value);
    select.appendChild(o);
  }
  function setupFilters() {
    const stage = $("f-stage");
    option(stage, -1, "all");
    R.stage_names.forEach((name, i) => option(stage, i, name));
    stage.parentElement.hidden = R.stage_names.length < 2;
    const task = $("f-task");
    option(task, -1, "all");
    R.tasks.forEach((name, i) => option(task, i, name));
    stage.addEventListener("change", () => { state.stage = Number(stage.value); refresh(); });
    task.addEventListener("change", () => { state.task = Number(task.value); refresh(); });
    $("f-status").addEventListener("change", (e) => { state.status = e.target.value; refresh(); });
    $("f-media").addEventListener("change", (e) => { state.mediaOnly = e.target.checked; refresh(); });
  }
  function matches(i) {
    if (state.stage >= 0 && P.stage[i] !== state.stage) return false;
    if (state.task >= 0 && P.task[i] !== state.task) return false;
    if (state.mediaOnly && P.media[i] < 0) return false;
    switch (state.status) {
      case "accepted": return P.state[i] === 0;
      case "rejected": return P.state[i] === 1;
      case "failed": return P.state[i] === 2;
      case "labelled": return labels.has(i);
      case "unlabelled": return !labels.has(i);
      default: return true;
    }
  }
  function refresh() {
    state.page = 0;
    filter();
    renderReasons();
    renderHistograms();
  }
  function filter() {
    shown = [];
    for (let i = 0; i < N; i++) if (matches(i)) shown.push(i);
    $("shown-count").textContent = shown.length + " of " + N + " pairs";
    $("shown-count").dataset.count = String(shown.length);
    renderGrid();
  }

  // Grid ------------------------------------------------------------------------------------------------------
  function badge(text, cls) {
    return el("span", "badge " + (cls || ""), text);
  }
  function labelBadge(i) {
    const l = labels.get(i);
    return l ? badge("label: " + l.decision, "label " + l.decision) : null;
  }
  function card(i) {
    const c = el("button", "card " + STATES[P.state[i]]);
    c.type = "button";
    c.dataset.index = String(i);
    c.dataset.id = P.id[i];
    const m = P.media[i];
    if (m >= 0) {
      const img = el("img");
      img.loading = "lazy";
      img.alt = "src | edit first frames";
      img.src = R.media[m].thumb;
      c.appendChild(img);
    } else {
      c.appendChild(el("div", "nomedia", "no media"));
    }
    c.appendChild(el("div", "id", P.id[i]));
    const b = el("div", "badges");
    b.appendChild(badge(R.tasks[P.task[i]], "task"));
    b.appendChild(badge(STATES[P.state[i]], STATES[P.state[i]]));
    if (P.checks[i].length) b.appendChild(badge(R.checks[P.checks[i][0]] + (P.checks[i].length > 1 ? " +" + (P.checks[i].length - 1) : ""), "check"));
    const lb = labelBadge(i);
    if (lb) b.appendChild(lb);
    c.appendChild(b);
    c.addEventListener("click", () => openPair(i));
    return c;
  }
  function renderPager(nav, pages) {
    clear(nav);
    const prev = el("button", null, "\u2190 previous");
    prev.type = "button";
    prev.disabled = state.page === 0;
    prev.addEventListener("click", () => { state.page -= 1; renderGrid(); });
    const next = el("button", null, "next \u2192");
    next.type = "button";
    next.disabled = state.page >= pages - 1;
    next.addEventListener("click", () => { state.page += 1; renderGrid(); });
    nav.append(prev, el("span", "page", "page " + (pages ? state.page + 1 : 0) + " of " + pages), next);
  }
  function renderGrid() {
    const pages = Math.ceil(shown.length / PAGE);
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    const grid = clear($("grid"));
    for (const i of shown.slice(state.page * PAGE, (state.page + 1) * PAGE)) grid.appendChild(card(i));
    if (!shown.length) grid.appendChild(el("p", "muted", "no pairs match these filters"));
    renderPager($("pager-top"), pages);
    renderPager($("pager-bottom"), pages);
  }
  function updateCard(i) {
    const old = document.querySelector('#grid .card[data-index="' + i + '"]');
    if (old) old.replaceWith(card(i));
  }

  // Reject reasons ---------------------------------------------------------------------------------------------
  function judgesInScope() {
    return R.judges.filter((j, k) => state.stage < 0 || state.stage === k);
  }
  function renderReasons() {
    const box = clear($("reasons"));
    const task = state.task >= 0 ? R.tasks[state.task] : null;
    for (const j of judgesInScope()) {
      const judged = task ? taskJudged(j, task) : j.counts.accepted + j.counts.rejected;
      const table = el("table", "reasons");
      table.dataset.stage = j.stage;
      const head = el("tr");
      for (const h of ["check", "pairs", "share of judged", "examples"]) head.appendChild(el("th", null, h));
      table.createTHead().appendChild(head);
      const body = table.createTBody();
      let rows = 0;
      for (const r of j.reasons) {
        const count = task ? r.by_task[task] || 0 : r.count;
        if (!count) continue;
        const tr = el("tr");
        tr.dataset.check = r.check;
        tr.appendChild(el("td", "check", r.check));
        const n = el("td", "n", count);
        n.dataset.count = String(count);
        tr.appendChild(n);
        tr.appendChild(el("td", null, judged ? (100 * count / judged).toFixed(1) + "%" : "-"));
        const ex = el("td", "examples");
        for (const i of r.examples) {
          if (task && R.tasks[P.task[i]] !== task) continue;
          const b = el("button", "link", P.id[i]);
          b.type = "button";
          b.dataset.index = String(i);
          b.addEventListener("click", () => openPair(i));
          ex.appendChild(b);
        }
        tr.appendChild(ex);
        body.appendChild(tr);
        rows += 1;
      }
      if (R.judges.length > 1) box.appendChild(el("h3", null, j.stage));
      if (rows) box.appendChild(table);
      else box.appendChild(el("p", "muted", "no rejected pairs" + (task ? " for task " + task : "")));
    }
  }
  function taskJudged(j, task) {
    let n = 0;
    const k = R.stage_names.indexOf(j.stage);
    const t = R.tasks.indexOf(task);
    for (let i = 0; i < N; i++) if (P.stage[i] === k && P.task[i] === t && P.state[i] < 2) n++;
    return n;
  }

  // Histograms ------------------------------------------------------------------------------------------------
  const W = 300, H = 120, PAD = 4;
  function thresholdLines(j, check, task) {
    // [{kind, value, tasks}] for the selected task, or every task's distinct bounds
    const lines = new Map();
    for (const [t, set] of Object.entries(j.task_thresholds)) {
      if (task && t !== task) continue;
      const bounds = (R.thresholds[set] || {})[check] || {};
      for (const kind of ["min", "max"]) {
        if (bounds[kind] === undefined) continue;
        const key = kind + ":" + bounds[kind];
        if (!lines.has(key)) lines.set(key, { kind, value: bounds[kind], tasks: [] });
        lines.get(key).tasks.push(t);
      }
    }
    return [...lines.values()];
  }
  const JUDGED = { a: "accepted", r: "rejected", o: "other" };
  function histogram(j, h) {
    const task = state.task >= 0 ? R.tasks[state.task] : null;
    const sum = { a: new Array(h.bins).fill(0), r: new Array(h.bins).fill(0), o: new Array(h.bins).fill(0) };
    let infinite = 0;
    for (const [t, counts] of Object.entries(h.counts)) {
      if (task && t !== task) continue;
      for (const k of ["a", "r", "o"]) counts[k].forEach((v, b) => { sum[k][b] += v; });
      infinite += h.infinite[t] || 0;
    }
    const lines = thresholdLines(j, h.check, task).map((l) => ({ kind: l.kind, value: l.value, note: l.tasks.join(", ") }));
    return plot(j.stage, h, h.check, sum, lines, JUDGED, infinite ? ", " + infinite + " infinite" : "");
  }
  // one histogram: bars stacked by outcome (a, r, o), threshold lines [{kind, value, note}]
  function plot(stage, h, caption, sum, lines, names, extra) {
    const totals = sum.a.map((v, b) => v + sum.r[b] + sum.o[b]);
    const peak = Math.max(1, ...totals);
    const n = totals.reduce((a, b) => a + b, 0);
    const fig = el("figure", "hist");
    fig.dataset.column = h.column;
    fig.dataset.stage = stage;
    fig.appendChild(el("figcaption", null, caption));
    const s = svg("svg", { viewBox: "0 0 " + W + " " + (H + 16), width: W, height: H + 16, role: "img" });
    s.setAttribute("aria-label", "histogram of " + caption);
    const bw = (W - 2 * PAD) / h.bins;
    const y = (v) => H - (v / peak) * (H - PAD);
    for (let b = 0; b < h.bins; b++) {
      let base = 0;
      for (const k of ["a", "r", "o"]) {
        const v = sum[k][b];
        if (!v) continue;
        const rect = svg("rect", { x: PAD + b * bw + 0.5, y: y(base + v), width: Math.max(0.5, bw - 1), height: y(base) - y(base + v), class: "bar " + k });
        const title = svg("title");
        title.textContent = v + " " + names[k] + " in [" + fmt(h.lo + b * (h.hi - h.lo) / h.bins) + ", " + fmt(h.lo + (b + 1) * (h.hi - h.lo) / h.bins) + ")";
        rect.appendChild(title);
        s.appendChild(rect);
        base += v;
      }
    }
    const x = (v) => PAD + ((v - h.lo) / (h.hi - h.lo)) * (W - 2 * PAD);
    for (const line of lines) {
      const l = svg("line", { x1: x(line.value), x2: x(line.value), y1: 0, y2: H, class: "threshold " + line.kind });
      l.dataset.value = String(line.value);
      const title = svg("title");
      title.textContent = line.kind + " " + fmt(line.value) + (line.note ? " (" + line.note + ")" : "");
      l.appendChild(title);
      s.appendChild(l);
    }
    s.appendChild(svg("line", { x1: PAD, x2: W - PAD, y1: H, y2: H, class: "axis" }));
    const lo = svg("text", { x: PAD, y: H + 13, class: "tick" });
    lo.textContent = fmt(h.lo);
    const hi = svg("text", { x: W - PAD, y: H + 13, class: "tick end" });
    hi.textContent = fmt(h.hi);
    s.append(lo, hi);
    fig.appendChild(s);
    fig.appendChild(el("div", "muted small", n + " values" + extra));
    return fig;
  }
  function renderHistograms() {
    const box = clear($("histograms"));
    for (const j of judgesInScope()) {
      if (R.judges.length > 1) box.appendChild(el("h3", null, j.stage));
      const row = el("div", "hist-row");
      for (const h of j.histograms) row.appendChild(histogram(j, h));
      if (!j.histograms.length) row.appendChild(el("p", "muted", "no scores"));
      box.appendChild(row);
    }
  }

  // Gates of raw-video ingest: each gate's values over the stage's rows, ok against filtered ----------------
  const GATED = { a: "ok", r: "filtered", o: "failed" };
  function gateHistogram(g, h) {
    const lines = h.thresholds.map((l) => ({ kind: l.kind, value: l.value, note: h.threshold_columns[l.kind] }));
    const beyond = [h.below ? h.below + " below the range" : "", h.above ? h.above + " above it" : "",
      h.missing ? h.missing + " rows without a value" : ""].filter(Boolean);
    const fig = plot(g.stage, h, h.column, h.counts, lines, GATED, beyond.length ? " (" + beyond.join(", ") + ")" : "");
    fig.classList.add("gate");
    return fig;
  }
  function renderGates() {
    const gates = R.gates || [];
    $("gates-section").hidden = !gates.length;
    const box = clear($("gates"));
    for (const g of gates) {
      const c = g.counts;
      const p = el("p", "gate-counts", g.stage + " (" + g.type + "): " + c.rows + " rows, " + c.ok + " ok, " +
        c.filtered + " filtered, " + c.failed + " failed");
      p.dataset.stage = g.stage;
      box.appendChild(p);
      const row = el("div", "hist-row");
      for (const h of g.histograms) row.appendChild(gateHistogram(g, h));
      box.appendChild(row);
      if (!g.reasons.length) continue;
      const table = el("table", "gate-reasons");
      table.dataset.stage = g.stage;
      const head = el("tr");
      for (const h of ["filtered because", "rows"]) head.appendChild(el("th", null, h));
      table.createTHead().appendChild(head);
      const body = table.createTBody();
      for (const r of g.reasons) {
        const tr = el("tr");
        tr.dataset.reason = r.reason;
        tr.append(el("td", null, r.reason), el("td", "n", r.count));
        body.appendChild(tr);
      }
      box.appendChild(table);
    }
  }

  // The pair dialog ---------------------------------------------------------------------------------------------
  const dialog = $("pair");
  const srcVideo = $("d-src"), editVideo = $("d-edit");
  const overlays = [[srcVideo, $("d-src-mask")], [editVideo, $("d-edit-mask")]];
  const maskImage = new Image();
  let mediaEntry = null;
  let drawing = false;

  function drawMasks() {
    if (!mediaEntry || !mediaEntry.mask || !maskImage.complete || !maskImage.naturalWidth || !$("d-mask").checked) return;
    const m = mediaEntry;
    const rowH = maskImage.naturalHeight / m.mask_frames;
    for (const [video, canvas] of overlays) {
      const total = m.mask_total || m.mask_frames;
      let t = m.fps ? Math.floor(video.currentTime * m.fps + 1e-6)
        : Math.floor((video.currentTime / (video.duration || 1)) * total);
      t = Math.max(0, Math.min(total - 1, t));
      const row = total > 1 ? Math.round((t * (m.mask_frames - 1)) / (total - 1)) : 0;
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(maskImage, 0, row * rowH, maskImage.naturalWidth, rowH, 0, 0, canvas.width, canvas.height);
      canvas.dataset.frame = String(t);
    }
  }
  function maskLoop() {
    drawMasks();
    if (drawing) requestAnimationFrame(maskLoop);
  }
  function setMask(on) {
    for (const [, canvas] of overlays) canvas.hidden = !on;
    if (on) drawMasks();
  }
  $("d-mask").addEventListener("change", (e) => setMask(e.target.checked));
  maskImage.addEventListener("load", drawMasks);
  for (const v of [srcVideo, editVideo]) {
    v.addEventListener("play", () => { if (!drawing) { drawing = true; maskLoop(); } });
    v.addEventListener("pause", () => { drawing = !srcVideo.paused || !editVideo.paused; drawMasks(); });
    v.addEventListener("seeked", drawMasks);
    v.addEventListener("loadeddata", drawMasks);
  }
  $("d-play").addEventListener("click", () => {
    const play = srcVideo.paused;
    for (const v of [srcVideo, editVideo]) {
      if (play) { v.currentTime = srcVideo.currentTime; v.play().catch(() => {}); } else v.pause();
    }
  });

  function stopMedia() {
    drawing = false;
    for (const v of [srcVideo, editVideo]) {
      v.pause();
      v.removeAttribute("src");
      v.load();
    }
  }
  function openPair(i) {
    current = i;
    stopMedia();
    $("d-title").textContent = P.id[i];
    renderDialogBadges(i);
    const m = P.media[i] >= 0 ? R.media[P.media[i]] : null;
    mediaEntry = m;
    $("d-media").hidden = !m;
    $("d-media-controls").hidden = !m;
    $("d-nomedia").hidden = !!m;
    $("d-nomedia").textContent = "No media for this pair: the report copies media for --max-media pairs per judge stage.";
    if (m) {
      srcVideo.src = m.src;
      editVideo.src = m.edit;
      $("d-mask").disabled = !m.mask;
      for (const [, canvas] of overlays) { canvas.width = m.width || 320; canvas.height = m.height || 180; }
      if (m.mask) maskImage.src = m.mask;
      setMask($("d-mask").checked && !!m.mask);
    }
    $("d-review").hidden = !review;
    $("d-note").value = "";
    $("d-review-msg").textContent = "";
    for (const id of ["d-text", "d-reasons", "d-status"]) clear($(id));
    clear($("d-scores").tBodies[0]);
    if (!dialog.open) dialog.showModal();
    details(i).then((d) => { if (current === i) renderDetails(i, d); })
      .catch((e) => { $("d-status").textContent = String(e.message || e); });
  }
  function renderDialogBadges(i) {
    const b = clear($("d-badges"));
    b.appendChild(badge(R.stage_names[P.stage[i]], "stage"));
    b.appendChild(badge(R.tasks[P.task[i]], "task"));
    b.appendChild(badge(STATES[P.state[i]], STATES[P.state[i]]));
    b.appendChild(badge("shard " + P.shard[i]));
    if (P.export[i] === 1) b.appendChild(badge("exported", "accepted"));
    if (P.export[i] === 2) b.appendChild(badge("left out of export", "rejected"));
    const l = labels.get(i);
    const lb = labelBadge(i);
    if (lb) {
      lb.id = "d-label";
      lb.textContent = "label: " + l.decision + " by " + l.reviewer + (l.at ? " (" + l.at + ")" : "");
      b.appendChild(lb);
      if (l.note) b.appendChild(el("span", "note", "note: " + l.note));
    }
  }
  function renderDetails(i, d) {
    const dl = $("d-text");
    for (const [k, v] of Object.entries(d.text || {})) {
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, v));
    }
    if (!Object.keys(d.text || {}).length) dl.appendChild(el("dd", "muted", "no text"));
    const ul = $("d-reasons");
    for (const r of d.reasons) ul.appendChild(el("li", null, r));
    if (!d.reasons.length) ul.appendChild(el("li", "muted", P.state[i] === 1 ? "(no reasons given)" : "none"));
    const status = [d.status ? "judge status: " + d.status : "", d.reason ? "reason: " + d.reason : "",
      ...d.exports.map((e) => e.stage + ": " + (e.written ? "written" : "left out (" + e.reason + ")")),
      d.media_note ? "media: " + d.media_note : ""];
    $("d-status").textContent = status.filter(Boolean).join(" · ");
    const bounds = R.thresholds[d.thresholds] || {};
    const tbody = $("d-scores").tBodies[0];
    const failed = new Set(P.checks[i].map((c) => R.checks[c]));
    for (const [check, value] of Object.entries(d.scores)) {
      const tr = el("tr");
      tr.dataset.check = check;
      const b = bounds[check] || {};
      const text = [b.min !== undefined ? "\u2265 " + fmt(b.min) : "", b.max !== undefined ? "\u2264 " + fmt(b.max) : ""].filter(Boolean).join(", ");
      tr.append(el("td", null, check), el("td", "num", fmt(value)), el("td", null, text || "-"),
        el("td", failed.has(check) ? "fail" : "", failed.has(check) ? "fails" : ""));
      if (failed.has(check)) tr.className = "failing";
      tbody.appendChild(tr);
    }
  }
  $("d-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", stopMedia);
  function step(delta) {
    const k = shown.indexOf(current);
    const next = shown[k + delta];
    if (k >= 0 && next !== undefined) openPair(next);
  }
  $("d-prev").addEventListener("click", () => step(-1));
  $("d-next").addEventListener("click", () => step(1));

  // Review ------------------------------------------------------------------------------------------------------
  function applyLabels(map) {
    for (const [k, v] of Object.entries(map)) labels.set(Number(k), v);
  }
  async function decide(decision) {
    const i = current;
    const msg = $("d-review-msg");
    msg.textContent = "saving\u2026";
    try {
      const response = await fetch("api/label", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-FFP-Token": review.token },
        body: JSON.stringify({ stage: R.stage_names[P.stage[i]], sample_id: P.id[i], decision, note: $("d-note").value }),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
      labels.set(i, answer.label);
      msg.textContent = "saved: " + decision;
      msg.dataset.saved = decision;
      if (current === i) renderDialogBadges(i);
      updateCard(i);
    } catch (e) {
      msg.textContent = "not saved: " + (e.message || e);
    }
  }
  if (review) {
    $("d-accept").addEventListener("click", () => decide("accept"));
    $("d-reject").addEventListener("click", () => decide("reject"));
    fetch("api/labels", { headers: { "X-FFP-Token": review.token } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then((answer) => { applyLabels(answer.labels || {}); filter(); })
      .catch((e) => { $("review-banner").textContent += " (cannot load current labels: " + (e.message || e) + ")"; });
  }

  renderSummary();
  renderGates();
  for (const id of ["filters", "reasons-section", "hist-section", "pairs-section"]) $(id).hidden = !R.judges.length;
  setupFilters();
  refresh();
  document.body.dataset.ready = "1";
})();
