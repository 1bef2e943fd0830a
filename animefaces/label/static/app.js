// The labelling page: keyboard first. Every label is sent at once and the next frame is shown
// when the server says it is on disk; writes go one at a time (a chain of promises), each with
// the manifest version this page last saw, so a change made elsewhere is refused, not lost.
"use strict";

const $ = (id) => document.getElementById(id);
let version = null;      // the manifest's version stamp when this page last read or wrote it
let current = null;      // the frame shown
let back = [];           // frames shown before it (for the left arrow)
let ahead = [];          // frames stepped back over (for the right arrow)
const skipped = new Set();
let chain = Promise.resolve();
let pending = 0;
let modelRound = -1;
let gridWhich = "queue";
let blocked = false;     // after a refused write: nothing more until a reload

function enqueue(fn) {
  pending += 1;
  document.body.dataset.pending = pending;
  chain = chain.then(fn).catch(showError).finally(() => {
    pending -= 1;
    document.body.dataset.pending = pending;
  });
  return chain;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) {
    const err = new Error(data.error || `HTTP ${r.status}`);
    err.conflict = !!data.conflict;
    throw err;
  }
  return data;
}

function showError(err) {
  $("banner-text").textContent = err.message;
  $("banner").hidden = false;
  $("banner-reload").hidden = !err.conflict;
  if (err.conflict) blocked = true;
}

function fmt(x, d = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }

function show(item) {
  current = item;
  const frame = $("frame");
  $("empty").hidden = !!item;
  $("frame-img").hidden = !item;
  frame.dataset.i = item ? item.i : "";
  if (!item) {
    $("label-badge").textContent = ""; $("reason").textContent = ""; $("where").textContent = "";
    return;
  }
  $("frame-img").src = `/image/${item.i}`;
  $("frame-img").alt = item.path;
  const badge = $("label-badge");
  badge.textContent = item.label || "not labelled";
  badge.className = "badge " + (item.label || "");
  const why = item.reason || (item.picked ? `${item.picked} (labelled)` : "browse");
  $("reason").textContent = why;
  $("reason").className = "chip " + (item.reason || "");
  $("pval").textContent = fmt(item.p);
  $("pbar").style.width = item.p === null ? "0" : `${Math.round(item.p * 100)}%`;
  $("where").textContent = `${item.path}` + (item.group ? ` · ${item.group}` : "") +
    (item.split ? ` · ${item.split}` : "") + (item.error ? ` · unreadable: ${item.error}` : "");
}

async function showNext() {
  if (ahead.length) { show(await fresh(ahead.pop())); return; }
  const r = await api(`/api/next?n=${skipped.size + 3}`);
  version = r.version;
  show(r.items.find((it) => !skipped.has(it.i)) || null);
}

async function fresh(item) {
  const now = await api(`/api/item/${item.i}`);
  now.reason = item.reason;
  return now;
}

function give(label) {
  if (!current || blocked) return;
  const it = current;
  enqueue(async () => {
    const picked = it.reason || it.picked || "browse";
    const r = await api("/api/label", {i: it.i, label, picked, version});
    version = r.version;
    $("saved").textContent = `saved ${it.path}: ${label}`;
    skipped.delete(it.i);
    back.push(Object.assign(r.item, {reason: null}));
    ahead = [];
    await showNext();
  });
}

function undo() {
  if (blocked) return;
  enqueue(async () => {
    const r = await api("/api/undo", {version});
    version = r.version;
    $("saved").textContent = `undone: ${r.item.path} is ${r.item.label || "not labelled"} again`;
    back = back.filter((b) => b.i !== r.item.i);
    if (current) ahead.push(current);
    show(r.item);
  });
}

function goBack() {
  if (!back.length) return;
  enqueue(async () => {
    if (current) ahead.push(current);
    show(await fresh(back.pop()));
  });
}

function goForward() {
  enqueue(async () => {
    if (current && !ahead.length) skipped.add(current.i);
    if (current) back.push(current);
    await showNext();
  });
}

function toggleGrid(on) {
  const grid = on === undefined ? $("grid-view").hidden : on;
  $("grid-view").hidden = !grid;
  $("single").hidden = grid;
  if (grid) loadGrid();
}

async function loadGrid() {
  const r = await api(`/api/grid?which=${gridWhich}&n=120`);
  const box = $("grid");
  box.replaceChildren();
  for (const it of r.items) {
    const cell = document.createElement("div");
    cell.className = "cell " + (it.label || "");
    cell.dataset.i = it.i;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = `/thumb/${it.i}`;
    img.alt = it.path;
    const cap = document.createElement("div");
    const a = document.createElement("span");
    a.textContent = it.label || it.reason || "";
    const b = document.createElement("span");
    b.textContent = `P ${fmt(it.p, 2)}`;
    cap.append(a, b);
    cell.append(img, cap);
    cell.addEventListener("click", () => {
      if (current) back.push(current);
      show(Object.assign(it, {reason: gridWhich === "queue" ? it.reason : null}));
      toggleGrid(false);
    });
    box.append(cell);
  }
}

function row(table, cells, head) {
  const tr = document.createElement("tr");
  cells.forEach((c, k) => {
    const td = document.createElement(head ? "th" : "td");
    td.textContent = c;
    if (k > 0) td.className = "n";
    tr.append(td);
  });
  table.append(tr);
}

function renderState(s) {
  $("manifest").textContent = s.manifest;
  const a = s.progress.all;
  const pct = (n) => `${(100 * n / Math.max(1, a.total)).toFixed(2)}%`;
  $("bar-face").style.width = pct(a.face);
  $("bar-noface").style.width = pct(a.no_face);
  $("bar-unsure").style.width = pct(a.unsure);
  $("progress-text").textContent =
    `${a.labelled} / ${a.total} labelled (face ${a.face}, no_face ${a.no_face}, unsure ${a.unsure})`;
  const m = s.model;
  const f = s.features;
  let status = f.running ? `features ${f.done}/${f.total} (${s.backbone})` :
    f.error ? `features failed: ${f.error}` : `${s.backbone} features ready`;
  if (m.current === "none") status += " · no model yet";
  else if (m.current === "start" && !m.round) status += ` · model: ${m.start}`;
  else status += ` · model #${m.round} on ${m.labels_at_fit} labels` +
    (m.current === "start" ? ` (kept ${m.start}: better on the held-out labels)` : "");
  if (m.fitting) status += " · refitting…";
  else if (m.next_fit_in !== null) status += ` · next refit in ${m.next_fit_in}`;
  if (m.error) status += ` · refit failed: ${m.error}`;
  if (s.bad) status += ` · ${s.bad} unreadable`;
  $("model-status").textContent = status;

  const e = s.estimate;
  const box = $("estimate");
  if (e) {
    let text = e.acc === null ? `no unbiased held-out labels yet (all labelled: ${fmt(e.acc_all)} on ${e.n_all})` :
      `${fmt(e.acc)} ± ${fmt(e.se)} on ${e.n} held-out random / prior labels (${e.how}); ` +
      `all labelled frames, hard ones included: ${fmt(e.acc_all)} on ${e.n_all}`;
    if (s.start_estimate && s.start_estimate.acc !== null)
      text += ` · ${s.model.start}: ${fmt(s.start_estimate.acc)} on the same frames`;
    box.textContent = text;
  }
  $("hint").hidden = !s.hint;
  $("hint").textContent = s.hint || "";
  const groups = $("groups");
  groups.replaceChildren();
  if (e && Object.keys(e.per_group).length > 1) {
    row(groups, ["group (held out)", "acc", "n"], true);
    for (const [g, v] of Object.entries(e.per_group)) row(groups, [g, fmt(v.acc, 2), v.n]);
  }
  const splits = $("splits");
  splits.replaceChildren();
  row(splits, ["split / group", "labelled", "total"], true);
  for (const [k, v] of Object.entries(s.progress.split)) row(splits, [`split ${k}`, v.labelled, v.total]);
  const gs = Object.entries(s.progress.group);
  for (const [k, v] of gs.slice(0, 30)) row(splits, [k, v.labelled, v.total]);
  if (gs.length > 30) row(splits, [`… ${gs.length - 30} more groups`, "", ""]);

  $("commands").textContent =
    `animefaces label-sweep ${s.manifest}\n` +
    `animefaces scan EPISODE.mkv ... --model models/best --out scan/`;
  const sw = s.sweep;
  $("run-sweep").disabled = sw.running;
  $("run-sweep").textContent = sw.running ? "sweep running…" : "Run the sweep now";
  if (sw.log.length) {
    $("sweep-log").hidden = false;
    $("sweep-log").textContent = sw.log.join("\n") +
      (sw.returncode !== null ? `\n[exit ${sw.returncode}]` : "");
  }
  if (m.round !== modelRound) {
    modelRound = m.round;
    if (current) fresh(current).then((it) => { if (current && it.i === current.i) show(it); }).catch(() => {});
  }
}

async function poll() {
  try { renderState(await api("/api/state")); } catch (err) { /* server restarting: try again */ }
  setTimeout(poll, 1500);
}

const KEYS = {f: () => give("face"), n: () => give("no_face"), u: () => give("unsure"), z: undo,
  ArrowLeft: goBack, ArrowRight: goForward, g: () => toggleGrid(), Escape: () => toggleGrid(false)};

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const fn = KEYS[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
  if (fn) { ev.preventDefault(); fn(); }
});
document.querySelectorAll("button[data-key]").forEach((b) => b.addEventListener("click", () => {
  KEYS[b.dataset.key](); b.blur();
}));
document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".tabs button").forEach((x) => x.classList.toggle("on", x === b));
  gridWhich = b.dataset.which;
  loadGrid();
}));
$("banner-reload").addEventListener("click", () => location.reload());
$("banner-close").addEventListener("click", () => { $("banner").hidden = true; });
$("run-sweep").addEventListener("click", () => api("/api/sweep", {}).catch(showError));

enqueue(showNext);
poll();
