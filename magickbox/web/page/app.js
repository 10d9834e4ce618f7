// MagickBox page: one small script, no build step. Every fact comes from /api/v1.
"use strict";

const API = "/api/v1";
const POLL_MS = 2000; // how often the open view asks again (states, log, queue)
const PAGE_SIZE = 50;
const main = document.getElementById("main");
let timer = null; // the open view's poll
let viewToken = 0; // bumps on every navigation, so late answers of a left view are dropped

// -- helpers -------------------------------------------------------------------------------

const esc = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

let csrf = ""; // the session's CSRF token (from /me): sent back on every change
let myRole = ""; // from /me: a viewer is offered no change (the API would refuse it)
let whoami = null; // the promise of /me (null until the page starts): views ask it for the role
const isAdmin = async () => { try { return (await whoami)?.role === "admin"; } catch (_) { return false; } };

async function api(path, opts = {}) {
  const method = (opts.method || "GET").toUpperCase();
  if (method !== "GET") opts = { ...opts, headers: { ...(opts.headers || {}), ...(await csrfHeader()) } };
  const res = await fetch(API + path, opts);
  setStatus(true);
  if (res.status === 401 && path !== "/logout") {
    location.href = "/login"; // not logged in (or the session ended): to the form
  }
  if (!res.ok) {
    let detail = res.statusText;
    try {
      const body = await res.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON: keep the status text */ }
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return res;
}
const getJSON = async (path) => (await api(path)).json();
// /health answers 503 while a part is down (a disk below its reserve too), with the same
// report as its body: read it either way.
async function getHealth() {
  const res = await fetch(API + "/health");
  setStatus(true);
  return res.json();
}
// The CSRF header of a change. A change made before /me has answered (a quick click on a
// slow box) waits for it: without the token the box would refuse the change.
async function csrfHeader() {
  if (!csrf && whoami) {
    try { csrf = (await whoami).csrf || ""; } catch (_) { /* not logged in: the box says so */ }
  }
  return csrf ? { "X-CSRF-Token": csrf } : {};
}

// The dot in the header is easy to miss: when the box does not answer, a banner across
// the page says so until an answer comes again.
function setStatus(ok) {
  const el = document.getElementById("status");
  el.className = "status " + (ok ? "ok" : "down");
  el.textContent = ok ? "live" : "offline";
  document.getElementById("offline").hidden = ok;
}

const pad = (n) => String(n).padStart(2, "0");
function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
const epochTime = (sec) => (sec == null ? "" : localTime(new Date(sec * 1000).toISOString()));
function duration(sec) {
  if (sec == null || isNaN(sec)) return "";
  sec = Math.max(0, sec);
  if (sec < 0.1) return "< 0.1 s";
  if (sec < 60) return `${sec < 10 ? sec.toFixed(1) : Math.round(sec)} s`;
  const m = Math.floor(sec / 60), s = Math.round(sec % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
const num = (n) => Number(n).toLocaleString("en-US");

// Seconds a job has taken so far, or took.
function jobSeconds(job) {
  if (job.processing_seconds != null) return job.processing_seconds;
  if (job.started_at && job.state === "running") return (Date.now() - Date.parse(job.started_at)) / 1000;
  return null;
}
const badge = (state) => `<span class="badge s-${esc(state)}">${esc(state)}</span>`;

function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function every(fn) {
  clearInterval(timer);
  const token = viewToken;
  const run = () => token === viewToken && fn().catch(onError);
  timer = setInterval(run, POLL_MS);
}

// A poll that failed: the next one may do better, so note it and carry on.
function onError(err) {
  if (!(err && err.status)) setStatus(false); // the box did not answer; it may come back
  console.warn(err);
}

// The day filter (YYYY-MM-DD, local) as the API's since/until epoch seconds.
function dayRange(day) {
  const [y, m, d] = day.split("-").map(Number);
  return [new Date(y, m - 1, d).getTime() / 1000, new Date(y, m - 1, d + 1).getTime() / 1000];
}

// -- jobs list ---------------------------------------------------------------------------

const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ".split("");
const STATES = ["", "queued", "running", "done", "failed"];
// The list's columns: header, and the API's sort key (sorted by the database).
const COLUMNS = [["State", "state"], ["Job", "scratchdir"], ["Patient", "patient_id"], ["Bucket", "bucket"],
  ["Sender", "caller_aet"], ["Peer IP", "caller_ip"], ["Received", "received_at"],
  ["Duration", "processing_seconds"], ["Log", "log_size"]];
const FILTER_KEYS = ["q", "state", "initial", "bucket"];

// The filter of the list as the API's fields (no page, no sort): the list, the bulk
// actions over "all matching" and the zip of all matching outputs ask with the same.
function filterFields(p) {
  const f = {};
  for (const key of FILTER_KEYS) if (p.get(key)) f[key] = p.get(key);
  if (p.get("day")) [f.since, f.until] = dayRange(p.get("day"));
  return f;
}

function jobsQuery(p) {
  const q = new URLSearchParams({ limit: PAGE_SIZE, offset: p.get("offset") || 0, ...filterFields(p) });
  if (p.get("sort")) { q.set("sort", p.get("sort")); q.set("order", p.get("order") || "desc"); }
  return q;
}

function setParam(p, key, value) {
  if (value) p.set(key, value); else p.delete(key);
  if (key !== "offset") p.delete("offset");
  const s = p.toString();
  history.replaceState(null, "", "#/jobs" + (s ? "?" + s : ""));
}

function sortHeader(p, [label, key]) {
  const on = p.get("sort") === key;
  const order = on ? p.get("order") || "desc" : "";
  const aria = on ? (order === "asc" ? "ascending" : "descending") : "none";
  return `<th aria-sort="${aria}"><button class="sort${on ? " on" : ""}" data-sort="${key}" title="Sort by ${esc(label)}">${esc(label)}<span class="arrow">${on ? (order === "asc" ? "▲" : "▼") : ""}</span></button></th>`;
}

async function viewJobs(p) {
  // The buckets come while the first rows are drawn: the list never waits for them.
  const bucketNames = p.get("bucket") ? [p.get("bucket")] : [];
  const bucketOptions = () => `<option value="">any bucket</option>${bucketNames.map((b) => `<option value="${esc(b)}" ${p.get("bucket") === b ? "selected" : ""}>${esc(b)}</option>`).join("")}`;
  main.innerHTML = `
    <section class="toolbar">
      <input id="q" type="search" placeholder="Search jobs: patient, study UID, sender, IP, bucket, state…" aria-label="Search jobs" value="${esc(p.get("q") || "")}">
      <select id="state" aria-label="State">${STATES.map((s) => `<option value="${s}" ${p.get("state") === s ? "selected" : ""}>${s || "any state"}</option>`).join("")}</select>
      <select id="bucket" aria-label="Bucket">${bucketOptions()}</select>
      <select id="sortby" class="narrow-only" aria-label="Sort by"><option value="">newest first</option>${COLUMNS.flatMap(([label, key]) => ["desc", "asc"].map((o) => `<option value="${key}:${o}" ${p.get("sort") === key && (p.get("order") || "desc") === o ? "selected" : ""}>${esc(label)} ${o === "asc" ? "▲" : "▼"}</option>`)).join("")}</select>
      <label class="narrow-only pickline"><input type="checkbox" class="pickpage" id="pickpage-narrow"> Select this page</label>
      <span id="dayfilter"></span>
    </section>
    <nav class="letters" aria-label="Sender AE title starts with">
      <button data-letter="" class="${p.get("initial") ? "" : "on"}">All</button>
      ${LETTERS.map((l) => `<button data-letter="${l}" class="${p.get("initial") === l ? "on" : ""}">${l}</button>`).join("")}
    </nav>
    <div id="receiving"></div>
    <div id="bulkbar" class="bulkbar" role="region" aria-label="Selected jobs" hidden></div>
    <p id="bulkmsg" class="msg" role="status"></p>
    <table class="jobs list">
      <thead><tr><th class="pick"><input type="checkbox" class="pickpage" id="pickpage" aria-label="Select the jobs on this page"></th>${COLUMNS.map((c) => sortHeader(p, c)).join("")}<th></th></tr></thead>
      <tbody id="rows"></tbody>
    </table>
    <div class="pager" id="pager"></div>
    <dialog id="confirm" class="confirm"><form method="dialog"><p id="confirm-text"></p>
      <div class="buttons"><button value="no" class="btn" id="confirm-no">Cancel</button> <button value="yes" class="btn danger" id="confirm-yes">OK</button></div></form></dialog>`;
  const dayEl = document.getElementById("dayfilter");
  if (p.get("day")) {
    dayEl.innerHTML = `<span class="chip">received ${esc(p.get("day"))} <button aria-label="Clear day" id="clearday">×</button></span>`;
    document.getElementById("clearday").onclick = () => { setParam(p, "day", ""); refilter(); };
  }
  const sel = { names: new Set(), all: false, total: 0, page: [] }; // what the bulk bar acts on
  const refilter = () => { sel.names.clear(); sel.all = false; refresh(); }; // a new filter: a new selection
  let debounce = null;
  document.getElementById("q").addEventListener("input", (e) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { setParam(p, "q", e.target.value.trim()); refilter(); }, 250);
  });
  document.getElementById("state").onchange = (e) => { setParam(p, "state", e.target.value); refilter(); };
  document.getElementById("bucket").onchange = (e) => { setParam(p, "bucket", e.target.value); refilter(); };
  const sortBy = (key, order) => {
    setParam(p, "sort", key);
    if (key) p.set("order", order); else p.delete("order");
    history.replaceState(null, "", "#/jobs?" + p.toString());
    for (const th of main.querySelectorAll("table.list thead th[aria-sort]")) {
      const c = COLUMNS.find(([, k]) => k === th.querySelector("button").dataset.sort);
      th.outerHTML = sortHeader(p, c);
    }
    bindSort();
    refresh();
  };
  function bindSort() {
    for (const b of main.querySelectorAll("button.sort")) {
      b.onclick = () => {
        const key = b.dataset.sort;
        const order = p.get("sort") === key && (p.get("order") || "desc") === "desc" ? "asc" : "desc";
        sortBy(key, order);
      };
    }
  }
  bindSort();
  document.getElementById("sortby").onchange = (e) => { const [key, order] = e.target.value.split(":"); sortBy(key, order); };
  for (const b of main.querySelectorAll(".letters button")) {
    b.onclick = () => {
      setParam(p, "initial", b.dataset.letter);
      for (const o of main.querySelectorAll(".letters button")) o.classList.toggle("on", o === b);
      refilter();
    };
  }
  const rowsEl = document.getElementById("rows");
  rowsEl.addEventListener("change", (e) => {
    if (!e.target.matches("input.pick")) return;
    if (e.target.checked) sel.names.add(e.target.value);
    else { // out of "all matching": the rest of this page stays selected
      if (sel.all) for (const n of sel.page) sel.names.add(n);
      sel.names.delete(e.target.value);
      sel.all = false;
    }
    drawPicks(sel);
    drawBulkBar(p, sel, bucketNames, refresh);
  });
  // The page's checkbox: in the header, and above the cards on a phone (no header there).
  for (const box of main.querySelectorAll("input.pickpage")) {
    box.onchange = (e) => {
      for (const name of sel.page) if (e.target.checked) sel.names.add(name); else sel.names.delete(name);
      if (!e.target.checked) sel.all = false;
      drawPicks(sel);
      drawBulkBar(p, sel, bucketNames, refresh);
    };
  }
  const token = viewToken;
  getJSON("/buckets?all=true").then((buckets) => {
    if (token !== viewToken) return;
    const names = new Set([...bucketNames, ...buckets.map((b) => b.aetitle)]);
    bucketNames.splice(0, bucketNames.length, ...[...names].sort());
    document.getElementById("bucket").innerHTML = bucketOptions();
    document.getElementById("bulkbar").dataset.key = ""; // its "Run again with" list too
    drawBulkBar(p, sel, bucketNames, refresh);
  }).catch(onError);
  let asked = 0;
  async function refresh() {
    const mine = ++asked; // only the newest answer is drawn (typing sends many)
    // The rows first: what is still arriving is drawn when its answer comes.
    const sendsP = getJSON("/receiving").catch(() => null);
    const data = await getJSON("/jobs?" + jobsQuery(p));
    if (token !== viewToken || mine !== asked) return;
    sel.total = data.total;
    sel.page = data.jobs.map((j) => j.scratchdir);
    drawRows(data);
    drawPicks(sel);
    drawPager(p, data, refresh);
    drawBulkBar(p, sel, bucketNames, refresh);
    const sends = await sendsP;
    if (sends && token === viewToken && mine === asked) drawReceiving(sends);
  }
  await refresh();
  every(refresh);
}

function drawRows(data) {
  const rows = document.getElementById("rows");
  if (!data.jobs.length) {
    rows.innerHTML = `<tr><td colspan="${COLUMNS.length + 2}" class="empty">No jobs match.</td></tr>`;
    return;
  }
  rows.innerHTML = data.jobs.map((j) => {
    const href = `#/job/${encodeURIComponent(j.scratchdir)}`;
    const who = [j.patient_id, personName(j.patient_name)].filter(Boolean).join(" · ");
    return `<tr data-job="${esc(j.scratchdir)}" data-state="${esc(j.state)}">
      <td class="pick"><input type="checkbox" class="pick" value="${esc(j.scratchdir)}" aria-label="Select ${esc(j.scratchdir)}"></td>
      <td data-label="State"><div class="cell">${badge(j.state)}${j.state === "failed" && j.reason ? `<div class="sub why" title="${esc(j.reason)}">${esc(j.reason)}</div>` : ""}</div></td>
      <td data-label="Job"><div class="cell"><a href="${href}" class="mono">${esc(j.scratchdir)}</a><div class="sub mono" title="StudyInstanceUID">${esc(j.study_uid || j.jobname)}</div></div></td>
      <td data-label="Patient"><div class="cell">${esc(who)}${(j.modalities || []).length ? `<div class="sub" title="modalities">${esc(j.modalities.join(" "))}</div>` : ""}</div></td>
      <td data-label="Bucket">${esc(j.bucket)}</td>
      <td data-label="Sender">${esc(j.caller_aet)}</td>
      <td data-label="Peer IP" class="mono">${esc(j.caller_ip)}</td>
      <td data-label="Received" class="nowrap">${esc(localTime(j.received_at))}</td>
      <td data-label="Duration" class="num">${esc(duration(jobSeconds(j)))}</td>
      <td data-label="Log" class="num">${esc(bytes(j.log_size))}</td>
      <td class="actions"><a class="btn small" href="${href}">View</a><a class="btn small" href="${esc(j.links.output)}" download>Output</a></td>
    </tr>`;
  }).join("");
}

// The checkboxes as the selection says (the rows are drawn again at every poll).
function drawPicks(sel) {
  for (const box of document.querySelectorAll("#rows input.pick")) box.checked = sel.all || sel.names.has(box.value);
  const picked = sel.page.filter((n) => sel.all || sel.names.has(n)).length;
  for (const page of document.querySelectorAll("input.pickpage")) {
    page.checked = sel.page.length > 0 && picked === sel.page.length;
    page.indeterminate = picked > 0 && picked < sel.page.length;
  }
}

const jobsWord = (n) => `${num(n)} job${n === 1 ? "" : "s"}`;

// What is selected, and what can be done to it: retry, delete, download, run again.
function drawBulkBar(p, sel, bucketNames, refresh) {
  const bar = document.getElementById("bulkbar");
  const count = sel.all ? sel.total : sel.names.size;
  bar.hidden = count === 0;
  if (!count) { bar.dataset.key = ""; return; }
  const offerAll = !sel.all && sel.total > sel.names.size && sel.page.every((n) => sel.names.has(n));
  const key = `${count}|${sel.all}|${offerAll}`;
  if (bar.dataset.key === key) return; // unchanged: keep what the user chose in the bar
  bar.dataset.key = key;
  bar.innerHTML = `<span id="bulkcount"><b>${jobsWord(count)}</b> ${sel.all ? "(all matching the filter)" : "selected"}</span>
    ${offerAll ? `<button class="btn small" id="pickall">Select all ${jobsWord(sel.total)} matching</button>` : ""}
    <button class="btn small" id="picknone">Clear</button>
    <span class="group"><button class="btn" id="bulk-download">Download outputs</button></span>
    ${myRole === "viewer" ? "" : `<span class="group"><button class="btn" id="bulk-retry">Retry</button>
    <button class="btn danger" id="bulk-delete">Delete</button></span>
    <span class="group"><label for="bulk-bucket">Run again with</label>
    <select id="bulk-bucket">${bucketNames.map((b) => `<option value="${esc(b)}">${esc(b)}</option>`).join("")}</select>
    <button class="btn" id="bulk-run">Run</button></span>`}`;
  const pickAll = document.getElementById("pickall");
  if (pickAll) pickAll.onclick = () => { sel.all = true; drawPicks(sel); drawBulkBar(p, sel, bucketNames, refresh); };
  document.getElementById("picknone").onclick = () => { sel.all = false; sel.names.clear(); drawPicks(sel); drawBulkBar(p, sel, bucketNames, refresh); };
  const which = () => (sel.all ? { filter: filterFields(p) } : { scratchdirs: [...sel.names] });
  const act = async (action, question, extra = {}) => {
    if (question && !(await confirmed(question))) return;
    bulkMessage("Working…");
    try {
      const res = await (await api("/jobs/bulk", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action, ...which(), ...extra }) })).json();
      const failed = res.failed.length ? `; ${jobsWord(res.failed.length)} could not: ` + res.failed.slice(0, 3).map((f) => `${f.scratchdir}: ${f.reason}`).join("; ") : "";
      const verb = { retry: "Queued again", delete: "Deleted", run: "New jobs made for" }[action];
      bulkMessage(`${verb}: ${jobsWord(res.done.length)}${failed}`, res.failed.length > 0);
      sel.all = false; sel.names.clear();
      await refresh();
    } catch (e) { bulkMessage(e.message, true); }
  };
  document.getElementById("bulk-download").onclick = () => downloadOutputs(p, sel);
  if (myRole === "viewer") return;
  document.getElementById("bulk-retry").onclick = () => act("retry",
    `Run ${jobsWord(count)} again? Each OUTPUT is replaced, and the results of done jobs are routed (sent) again.`);
  document.getElementById("bulk-delete").onclick = () => act("delete",
    `Delete ${jobsWord(count)} and all their files? This cannot be undone.`);
  document.getElementById("bulk-run").onclick = () => {
    const bucket = document.getElementById("bulk-bucket").value;
    act("run", `Make ${jobsWord(count)} of bucket ${bucket} from the same studies in the archive?`, { run: { bucket } });
  };
}

// One zip of the selected jobs' OUTPUTs, streamed by the box: the browser saves it.
function downloadOutputs(p, sel) {
  const q = sel.all ? new URLSearchParams(filterFields(p)) : new URLSearchParams([...sel.names].map((n) => ["scratchdir", n]));
  const a = document.createElement("a");
  a.href = `${API}/jobs.zip?${q}`;
  a.download = "";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function bulkMessage(text, bad) {
  const m = document.getElementById("bulkmsg");
  if (m) { m.textContent = text; m.className = "msg " + (bad ? "bad" : "good"); }
}

// A question in a dialog of the page (says what and how many); resolves true for OK.
function confirmed(question) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = question;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "yes"), { once: true }));
}

function drawPager(p, data, refresh) {
  const el = document.getElementById("pager");
  const from = data.total ? data.offset + 1 : 0;
  const to = data.offset + data.jobs.length;
  const first = p.get("sort") ? "‹ Previous" : "‹ Newer", next = p.get("sort") ? "Next ›" : "Older ›";
  el.innerHTML = `<span id="count">${num(from)}–${num(to)} of ${num(data.total)} jobs</span>
    <button id="prev" ${data.offset ? "" : "disabled"}>${first}</button>
    <button id="next" ${to < data.total ? "" : "disabled"}>${next}</button>`;
  const go = (offset) => { setParam(p, "offset", offset ? String(offset) : ""); refresh(); };
  document.getElementById("prev").onclick = () => go(Math.max(0, data.offset - PAGE_SIZE));
  document.getElementById("next").onclick = () => go(data.offset + PAGE_SIZE);
}

function drawReceiving(sends) {
  const el = document.getElementById("receiving");
  el.innerHTML = sends.length
    ? `<div class="receiving">${sends.map((s) => `<div class="send">${badge("receiving")}
        <b>${esc(s.called_aet)}</b> from ${esc(s.caller_aet)} <span class="mono">${esc(s.caller_ip)}</span>:
        ${num(s.files)} files <span class="sub mono">${esc(s.study_uid)}</span></div>`).join("")}</div>`
    : "";
}

// -- one job -------------------------------------------------------------------------------

const IMAGES_SHOWN = 12; // OUTPUT images drawn inline on a job's page; the rest are listed
const SEND_RETRYABLE = ["failed", "pending"];

// The URL of one file of a job; ``how``: {render: "png"} or {download: 1}.
function fileURL(base, part, name, how = {}) {
  const q = new URLSearchParams({ part, ...how });
  return `${API}${base}/files/${name.split("/").map(encodeURIComponent).join("/")}?${q}`;
}

async function viewJob(name) {
  const token = viewToken;
  const base = `/jobs/${encodeURIComponent(name)}`;
  let job;
  try {
    job = await getJSON(base);
  } catch (err) {
    main.innerHTML = `<p class="notice">${esc(err.message)}</p><p><a href="#/jobs">Back to the jobs</a></p>`;
    return;
  }
  main.innerHTML = `
    <p class="crumbs"><a href="#/jobs">Jobs</a> › <span class="mono">${esc(name)}</span></p>
    <section class="jobhead">
      <h1><span class="mono">${esc(name)}</span> <span id="jstate"></span></h1>
      <div class="buttons">
        <a class="btn" href="${esc(job.links.output)}" download id="dl-output">Download OUTPUT</a>
        <a class="btn" href="${esc(job.links.input)}" download id="dl-input">Download INPUT</a>
        <button class="btn" id="retry">Retry</button>
        <button class="btn danger" id="delete">Delete</button>
      </div>
    </section>
    <div id="jbanner" class="banner" role="status" hidden></div>
    <p id="jmsg" class="msg" role="status"></p>
    <section class="grid2">
      <div class="card"><h2>Info</h2><dl id="info" class="facts"></dl></div>
      <div class="card"><h2>Files</h2>
        <div class="seg"><button data-part="OUTPUT" class="on">OUTPUT</button><button data-part="INPUT">INPUT</button></div>
        <div id="files"></div></div>
    </section>
    <section class="card"><h2>Series <span class="sub" id="series-count"></span></h2><div id="series"></div></section>
    <section class="card" id="images-card" hidden><h2>Images in OUTPUT <span class="sub" id="images-count"></span></h2><div id="images" class="images"></div></section>
    <section class="card"><h2>Sends <span class="sub">where routing sent the results</span></h2><div id="sends"></div></section>
    <section class="card"><h2>Processing log <span class="sub" id="logsize"></span></h2><pre id="log" class="log" tabindex="0"></pre></section>`;
  const msg = (text, bad) => { const m = document.getElementById("jmsg"); m.textContent = text; m.className = "msg " + (bad ? "bad" : "good"); };
  document.getElementById("retry").onclick = async () => {
    // A done job was routed already: running it again sends its results again.
    if (job.state === "done" && !confirm(`Run job ${name} again? Its OUTPUT is replaced and its results are routed (sent) again.`)) return;
    try { await api(base + "/retry", { method: "POST" }); msg("Queued again."); await drawInfo(); } catch (e) { msg(e.message, true); }
  };
  document.getElementById("delete").onclick = async () => {
    if (!confirm(`Delete job ${name} and all its files? This cannot be undone.`)) return;
    try { await api(base, { method: "DELETE" }); location.hash = "#/jobs"; } catch (e) { msg(e.message, true); }
  };
  let part = "OUTPUT";
  for (const b of main.querySelectorAll(".seg button")) {
    b.onclick = () => {
      part = b.dataset.part;
      for (const o of main.querySelectorAll(".seg button")) o.classList.toggle("on", o === b);
      drawFiles();
    };
  }
  async function drawFiles() {
    const shown = part;
    const list = await getJSON(`${base}/files?part=${shown}`);
    if (token !== viewToken) return;
    const more = list.total > list.files.length ? `<p class="sub">${num(list.total - list.files.length)} more not shown</p>` : "";
    document.getElementById("files").innerHTML = list.files.length
      ? `<table class="files"><tbody>${list.files.map((f) => `<tr data-file="${esc(f.name)}">
          <td class="mono"><a href="${esc(fileURL(base, shown, f.name, { download: 1 }))}" download title="Download ${esc(f.name)}">${esc(f.name)}</a></td>
          <td class="sub">${esc(f.kind === "dicom" ? "DICOM" : f.kind)}</td><td class="num">${esc(bytes(f.size))}</td></tr>`).join("")}</tbody></table>${more}`
      : `<p class="sub">${shown} is empty.</p>`;
    if (shown === "OUTPUT") drawImages(list);
  }
  function drawImages(list) {
    const pics = list.files.filter((f) => f.kind === "image" || f.kind === "dicom");
    const card = document.getElementById("images-card");
    card.hidden = !pics.length;
    if (!pics.length) return;
    // PNG and JPEG as they are; DICOM drawn to PNG by the box, one request per image.
    document.getElementById("images").innerHTML = pics.slice(0, IMAGES_SHOWN).map((f) => {
      const src = fileURL(base, "OUTPUT", f.name, f.kind === "dicom" ? { render: "png" } : {});
      return `<figure><a href="${esc(src)}" target="_blank" rel="noopener"><img src="${esc(src)}" alt="${esc(f.name)}" loading="lazy" data-kind="${esc(f.kind)}"></a><figcaption class="mono">${esc(f.name)}</figcaption></figure>`;
    }).join("");
    document.getElementById("images-count").textContent =
      pics.length > IMAGES_SHOWN ? `${IMAGES_SHOWN} of ${num(pics.length)} shown` : `${num(pics.length)}`;
  }
  function drawBanner() {
    const el = document.getElementById("jbanner");
    const v = job.verdict;
    const said = v && (v.message || v.success) ? `The bucket says (proc.json): ${v.success || "no success value"}${v.message ? " — " + v.message : ""}` : "";
    if (job.state === "failed") {
      el.className = "banner bad";
      el.innerHTML = `<b>Failed:</b> <span id="jreason">${esc(job.reason || "no reason recorded")}</span>${said ? `<div id="jverdict">${esc(said)}</div>` : ""}`;
    } else if (said) {
      el.className = "banner " + (job.state === "done" ? "good" : "");
      el.innerHTML = `<div id="jverdict">${esc(said)}</div>`;
    }
    el.hidden = !(job.state === "failed" || said);
  }
  async function drawInfo(j) {
    job = j || (await getJSON(base));
    if (token !== viewToken) return;
    document.getElementById("jstate").innerHTML = badge(job.state);
    drawBanner();
    const facts = [
      ["Bucket", job.bucket], ["Sender AE", job.caller_aet], ["Peer IP", job.caller_ip],
      ["Patient ID", job.patient_id], ["Patient name", personName(job.patient_name)], ["Accession", job.accession_number],
      ["Study date", dicomDate(job.study_date)], ["Study description", job.study_description],
      ["Modalities", (job.modalities || []).join(" ")], ["Series", job.series_count || ""],
      ["StudyInstanceUID", job.study_uid], ["Source", job.source], ["Job name", job.jobname],
      ["Description", job.description], ["Arguments", (job.arguments || []).join(" ")], ["Files received", job.files],
      ["Received", localTime(job.received_at)], ["Started", localTime(job.started_at)], ["Finished", localTime(job.finished_at)],
      ["Duration", duration(jobSeconds(job))], ["Attempts", job.attempts], ["Exit code", job.exit_code],
      ["Result", job.success], ["Reason", job.reason], ["Slurm", job.slurm],
      ["Expected end", job.eta ? `${localTime(job.eta.finishes_at)} (in ${duration(job.eta.seconds_left)}; ${job.eta.ahead} ahead)` : null],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "");
    // Other jobs of this study and bucket: a send the box made into several jobs.
    const parts = (job.parts || []).map((s) => `<a class="mono" href="#/job/${encodeURIComponent(s)}">${esc(s)}</a>`).join(" ");
    document.getElementById("info").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("")
      + (parts ? `<dt>Parts of this study</dt><dd id="jparts">${parts}</dd>` : "");
  }
  async function drawSends() {
    const sends = await getJSON(`${base}/sends`);
    if (token !== viewToken) return;
    const el = document.getElementById("sends");
    if (!sends.length) {
      el.innerHTML = `<p class="sub" id="no-sends">${["done", "failed"].includes(job.state) ? "No routing rule sent this job's results anywhere." : "Sends are made when the job has finished."}</p>`;
      return;
    }
    el.innerHTML = sendsTable(sends, false);
    bindSendRetry(el, drawSends, msg);
  }

  // The series were summed up when the job was made: drawn once.
  async function drawSeries() {
    const series = await getJSON(`${base}/series`);
    if (token !== viewToken) return;
    document.getElementById("series-count").textContent = series.length ? num(series.length) : "";
    document.getElementById("series").innerHTML = series.length
      ? `<table class="jobs series"><thead><tr><th class="num">#</th><th>Description</th><th>Modality</th><th class="num">Files</th><th>Types</th><th>SeriesInstanceUID</th></tr></thead><tbody>
        ${series.map((s) => `<tr data-series="${esc(s.series_uid)}"><td data-label="#" class="num">${esc(s.series_number)}</td><td data-label="Description">${esc(s.description)}</td>
          <td data-label="Modality">${esc(s.modality)}</td><td data-label="Files" class="num">${num(s.num_files)}</td>
          <td data-label="Types">${s.classify_type.map((t) => `<span class="chip">${esc(t)}</span>`).join(" ")}</td>
          <td data-label="Series UID" class="mono sub">${esc(s.series_uid)}</td></tr>`).join("")}</tbody></table>`
      : `<p class="sub">No DICOM series in INPUT.</p>`;
  }
  // The log grows while the job runs: ask only for the bytes after the ones we have.
  let logOffset = 0;
  const decoder = new TextDecoder();
  async function tailLog() {
    const res = await api(`${base}/log?offset=${logOffset}`);
    const chunk = new Uint8Array(await res.arrayBuffer());
    if (token !== viewToken) return;
    const size = Number(res.headers.get("X-Log-Size") || logOffset);
    if (size < logOffset) { logOffset = 0; document.getElementById("log").textContent = ""; return; } // retried: a new log
    logOffset = size;
    if (!chunk.length) return;
    const pre = document.getElementById("log");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.textContent += decoder.decode(chunk, { stream: true });
    document.getElementById("logsize").textContent = bytes(logOffset);
    if (atEnd) pre.scrollTop = pre.scrollHeight; // follow the tail unless the reader scrolled up
  }
  // A finished job changes no more, unless retried: then drawInfo sees it queued again.
  // Its sends do change (tries, retries), so they are asked for on every poll.
  async function poll() {
    await Promise.all([tailLog(), drawSends()]);
    if (!["done", "failed"].includes(job.state)) {
      const before = job.state;
      await drawInfo();
      if (job.state !== before) drawFiles();
    }
  }
  await drawInfo(job);
  await Promise.all([tailLog(), drawFiles(), drawSends(), drawSeries()]);
  every(async () => {
    try { await poll(); } catch (e) { if (e.status === 404) { msg("This job no longer exists.", true); clearInterval(timer); } else throw e; }
  });
}

// Sends as a table: one row per send with its latest state; ``withJob`` adds the job column.
function sendsTable(sends, withJob, history = {}) {
  const head = ["Created", ...(withJob ? ["Job"] : []), "Rule", "Destination", "State", "Files", "Tries", "Last word", ""];
  return `<table class="jobs sends"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>
    ${sends.map((s) => {
      const d = s.destination;
      const steps = history[s.id] || [];
      const last = s.reason || (steps[0] && steps[0].message) || "";
      const more = steps.length ? `<details><summary>${steps.length} step${steps.length === 1 ? "" : "s"}</summary><ol class="steps">${steps.map((r) => `<li><span class="nowrap">${esc(r.time)}</span> <b>${esc(r.outcome)}</b> ${esc(r.message)}</li>`).join("")}</ol></details>` : "";
      return `<tr data-send="${s.id}" data-state="${esc(s.state)}">
        <td data-label="Created" class="nowrap">${esc(epochTime(s.created_at))}</td>
        ${withJob ? `<td data-label="Job"><a class="mono" href="#/job/${encodeURIComponent(s.scratchdir)}">${esc(s.scratchdir)}</a></td>` : ""}
        <td data-label="Rule"><div class="cell">#${esc(s.rule)} ${esc(s.rule_name)} <span class="sub">key ${esc(s.key)}</span></div></td>
        <td data-label="Destination" class="mono">${esc(`${d.AETitleTo}@${d.IP}:${d.PORT}`)}</td>
        <td data-label="State">${badge(s.state)}</td>
        <td data-label="Files" class="num">${num(s.accepted)} of ${num(s.files)}</td>
        <td data-label="Tries" class="num">${num(s.attempts)}/${num(s.max_attempts)}</td>
        <td data-label="Last word" class="reason"><div class="cell">${esc(last)}${more}</div></td>
        <td class="actions">${SEND_RETRYABLE.includes(s.state) ? `<button class="btn small" data-retry-send="${s.id}">Retry send</button>` : ""}</td></tr>`;
    }).join("")}</tbody></table>`;
}

function bindSendRetry(el, redraw, msg) {
  for (const b of el.querySelectorAll("button[data-retry-send]")) {
    b.onclick = async () => {
      b.disabled = true;
      try { await api(`/sends/${b.dataset.retrySend}/retry`, { method: "POST" }); await redraw(); msg(`Send ${b.dataset.retrySend} is tried again now.`); } catch (e) { msg(e.message, true); b.disabled = false; }
    };
  }
}

// -- overview ------------------------------------------------------------------------------

async function viewOverview() {
  main.innerHTML = `
    <section class="card"><h2>Jobs per day <span class="sub" id="yeartotal"></span></h2><div id="heat" class="heat"></div>
      <p class="sub">Hover a day for its count; click it to list its jobs.</p></section>
    <section class="grid2">
      <div class="card"><h2>Queue</h2><div id="queue"></div></div>
      <div class="card"><h2>Disk <span class="sub">the scratch folder's file system, as df shows it</span></h2><div id="disk"></div></div>
    </section>
    <section class="grid2">
      <div class="card"><h2>Buckets <span class="sub">finished jobs</span></h2><div id="bstats"></div></div>
      <div class="card"><h2>Failing sends</h2><div id="failing"></div></div>
    </section>
    <section class="card"><h2>Refused associations <span class="sub" id="refused-total"></span></h2>
      <p class="sub">DICOM peers the box turned away: an unknown AE title, a caller not on the allow-list, a failed TLS handshake.</p>
      <div id="refused"></div><div class="pager" id="refused-pager"></div></section>`;
  const token = viewToken;
  let refusedOffset = 0;
  const offset = -new Date().getTimezoneOffset();
  const days = await getJSON(`/stats/days?days=365&utc_offset_minutes=${offset}`);
  if (token !== viewToken) return;
  drawHeat(days.counts);
  const queue = async () => {
    const [rows, disk, stats, failing, refused] = await Promise.all([getJSON("/queue"), getJSON("/disk?scratch_size=true"),
      getJSON("/stats/buckets"), getJSON("/sends/failing?limit=5"),
      getJSON(`/rejections?limit=${REFUSED_PAGE}&offset=${refusedOffset}`)]);
    if (token !== viewToken) return;
    drawDisk(disk);
    drawBucketStats(stats);
    drawFailing(failing);
    drawRefused(refused, (offset) => { refusedOffset = offset; queue().catch(onError); });
    document.getElementById("queue").innerHTML = rows.length
      ? `<table class="plain"><thead><tr><th>Bucket</th><th class="num">Queued</th><th class="num">Running</th><th class="num">Workers</th></tr></thead><tbody>
        ${rows.map((r) => `<tr><td>${esc(r.bucket)}</td><td class="num">${r.queued}</td><td class="num">${r.running}</td><td class="num">${r.workers}</td></tr>`).join("")}</tbody></table>`
      : `<p class="sub">No buckets installed.</p>`;
  };
  await queue();
  every(queue);
}

const REFUSED_PAGE = 20;

function drawRefused(data, go) {
  document.getElementById("refused-total").textContent = data.total ? `${num(data.total)} in all, newest first` : "";
  document.getElementById("refused").innerHTML = data.rejections.length
    ? `<table class="plain refused"><thead><tr><th>Time</th><th>Calling AE</th><th>Called AE</th><th>Address</th><th class="num">Port</th><th>Reason</th></tr></thead><tbody>
      ${data.rejections.map((r) => `<tr data-id="${esc(r.id)}"><td class="nowrap">${esc(r.time)}</td><td class="mono">${esc(r.calling_aet)}</td><td class="mono">${esc(r.called_aet)}</td>
        <td class="mono">${esc(r.address)}</td><td class="num">${esc(r.port)}</td><td>${esc(r.reason)}</td></tr>`).join("")}</tbody></table>`
    : `<p class="sub" id="refused-none">None refused.</p>`;
  const pager = document.getElementById("refused-pager");
  const to = data.offset + data.rejections.length;
  pager.innerHTML = data.total > REFUSED_PAGE
    ? `<button id="refused-prev" ${data.offset ? "" : "disabled"}>‹ Newer</button><button id="refused-next" ${to < data.total ? "" : "disabled"}>Older ›</button>`
    : "";
  if (data.total > REFUSED_PAGE) {
    document.getElementById("refused-prev").onclick = () => go(Math.max(0, data.offset - REFUSED_PAGE));
    document.getElementById("refused-next").onclick = () => go(to);
  }
}

function dayKey(d) { return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`; }

function drawHeat(counts) {
  const cell = 12, gap = 3, step = cell + gap;
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const start = new Date(today);
  start.setDate(start.getDate() - 364 - start.getDay()); // a Sunday, so weeks are columns
  const max = Math.max(1, ...Object.values(counts));
  const level = (n) => (n ? Math.min(4, Math.ceil((4 * n) / max)) : 0);
  const rects = [], months = [];
  let total = 0, week = 0;
  for (const d = new Date(start); d <= today; d.setDate(d.getDate() + 1)) {
    week = Math.round((d - start) / 864e5 - d.getDay()) / 7;
    const key = dayKey(d), n = counts[key] || 0;
    total += n;
    if (d.getDate() === 1) months.push(`<text x="${30 + week * step}" y="10">${d.toLocaleString("en-US", { month: "short" })}</text>`);
    rects.push(`<rect x="${30 + week * step}" y="${16 + d.getDay() * step}" width="${cell}" height="${cell}" rx="2" class="l${level(n)}" data-day="${key}" data-count="${n}"></rect>`);
  }
  const w = 30 + (week + 1) * step, h = 16 + 7 * step;
  const names = ["", "Mon", "", "Wed", "", "Fri", ""].map((t, i) => `<text x="0" y="${26 + i * step}">${t}</text>`).join("");
  const legend = [0, 1, 2, 3, 4].map((l) => `<svg width="11" height="11"><rect width="11" height="11" rx="2" class="l${l}"></rect></svg>`).join("");
  document.getElementById("heat").innerHTML = `<svg viewBox="0 0 ${w} ${h}" style="max-width:${Math.round(w * 1.35)}px" role="img" aria-label="Jobs per day">${months.join("")}${names}${rects.join("")}</svg>
    <div class="legend">Less ${legend} More <span class="sub">(darkest: ${num(max)} a day)</span></div>`;
  document.getElementById("yeartotal").textContent = `${num(total)} in the last year`;
  const tip = document.getElementById("tip");
  const svg = document.querySelector("#heat svg");
  svg.addEventListener("mousemove", (e) => {
    const r = e.target.closest("rect");
    if (!r) { tip.hidden = true; return; }
    const n = Number(r.dataset.count);
    tip.textContent = `${n} job${n === 1 ? "" : "s"} on ${r.dataset.day}`;
    tip.style.left = `${e.clientX + 12}px`;
    tip.style.top = `${e.clientY + 12}px`;
    tip.hidden = false;
  });
  svg.addEventListener("mouseleave", () => { tip.hidden = true; });
  svg.addEventListener("click", (e) => {
    const r = e.target.closest("rect");
    if (r) { tip.hidden = true; location.hash = `#/jobs?day=${r.dataset.day}`; }
  });
}

// The figures df prints for the scratch folder (Size, Used, Avail, Use%): Use% is
// used / (used + available), so blocks kept for root do not make a full disk look roomy.
function drawDisk(d) {
  const pct = d.use_percent;
  document.getElementById("disk").innerHTML = `
    <div class="bar" title="${pct} % used"><span style="width:${pct}%" class="${pct > 90 ? "full" : ""}"></span></div>
    <dl class="facts" id="diskfacts">
      <dt>Size</dt><dd data-disk="total">${esc(bytes(d.total))}</dd>
      <dt>Used</dt><dd data-disk="used">${esc(bytes(d.used))}</dd>
      <dt>Available</dt><dd data-disk="free">${esc(bytes(d.free))} <span class="sub">to the box</span></dd>
      <dt>Use%</dt><dd data-disk="use_percent">${pct} % <span class="sub">used of used + available, as df</span></dd>
      ${d.reserved ? `<dt>Not available</dt><dd data-disk="reserved">${esc(bytes(d.reserved))} <span class="sub">reserved for root or held by the file system</span></dd>` : ""}
      <dt>Reserve</dt><dd data-disk="reserve">${esc(bytes(d.reserve))}${d.low ? ' <span class="badge s-failed">low: refusing data</span>' : ""}</dd>
      <dt>Scratch folder</dt><dd>${d.scratch_bytes != null ? esc(bytes(d.scratch_bytes)) : "measuring…"} <span class="sub">the jobs and the archive</span></dd>
      <dt>Path</dt><dd class="mono">${esc(d.path)}</dd>
    </dl>`;
}

const percent = (x) => (x == null ? "" : `${(100 * x).toFixed(x === 1 || x === 0 ? 0 : 1)} %`);

function drawBucketStats(stats) {
  const names = Object.keys(stats).sort();
  const cell = (label, stat, text, cls = "") => `<td data-label="${label}" class="num ${cls}" data-stat="${stat}">${text}</td>`;
  document.getElementById("bstats").innerHTML = names.length
    ? `<table class="jobs stats" id="bucket-stats"><thead><tr><th>Bucket</th><th class="num">Done</th><th class="num">Failed</th><th class="num">Success</th>
        <th class="num">Mean run</th><th class="num">Mean wait</th><th class="num">Last 24 h</th></tr></thead><tbody>
        ${names.map((n) => {
          const b = stats[n];
          const run = esc(duration(b.mean_done_seconds ?? b.mean_failed_seconds)) + (b.mean_done_seconds == null ? ' <span class="sub">(failed)</span>' : "");
          return `<tr data-bucket="${esc(n)}"><td data-label="Bucket">${esc(n)}</td>
            ${cell("Done", "done", num(b.done))}${cell("Failed", "failed", num(b.failed))}
            ${cell("Success", "success", percent(b.success_rate), b.success_rate < 1 ? "bad" : "")}
            ${cell("Mean run", "run", run)}${cell("Mean wait", "wait", esc(duration(b.mean_wait_seconds)))}
            ${cell("Last 24 h", "rate", `${num(b.finished_recently)} <span class="sub">${b.per_hour}/h</span>`)}</tr>`;
        }).join("")}</tbody></table>
      <p class="sub">Mean run: start to end of done jobs (of failed ones when none is done). Mean wait: queued to started. Last 24 h: jobs finished, and per hour.</p>`
    : `<p class="sub">No finished jobs yet.</p>`;
}

function drawFailing(sends) {
  const el = document.getElementById("failing");
  el.innerHTML = sends.length
    ? `<ul class="failing">${sends.map((s) => `<li data-send="${s.id}">${badge(s.state === "pending" ? "retrying" : s.state)}
        <span class="mono">${esc(`${s.destination.AETitleTo}@${s.destination.IP}:${s.destination.PORT}`)}</span>
        <a class="mono" href="#/job/${encodeURIComponent(s.scratchdir)}">${esc(s.scratchdir)}</a>
        <div class="sub">${esc(s.reason)}</div></li>`).join("")}</ul><p><a href="#/admin/routing-log">All sends</a></p>`
    : `<p class="sub" id="no-failing">No failing sends.</p>`;
}

// -- buckets -------------------------------------------------------------------------------

// A bucket's badge: green only when it is enabled and nothing is wrong with it.
function bucketBadge(b) {
  if (b.ready) return `<span class="badge s-done">enabled</span>`;
  if (b.enabled || !b.info.AETitle) return `<span class="badge s-failed">broken</span>`;
  return `<span class="badge s-off">disabled</span>`;
}

function meanTime(b) {
  const s = b.stats;
  if (!s) return "no finished jobs yet";
  if (s.mean_done_seconds != null) return duration(s.mean_done_seconds);
  return `no job done yet; ${num(s.failed)} failed (mean ${duration(s.mean_failed_seconds) || "not started"})`;
}

async function viewBuckets() {
  // /health (anyone) has the DICOM port; /setup is for admins.
  const [buckets, setup, admin] = await Promise.all([getJSON("/buckets?all=true"), getHealth(), isAdmin()]);
  const host = location.hostname;
  const broken = buckets.filter((b) => b.problems.some((t) => !t.startsWith("disabled"))).length;
  main.innerHTML = `<h1>Buckets</h1><p class="sub">Send a study to a bucket's AE title on this box (${esc(host)}, DICOM port ${esc(setup.dicom_port)}).</p>
    ${broken ? `<p class="notice bad" id="buckets-broken">${broken} bucket${broken === 1 ? " needs" : "s need"} fixing: see the problems below.</p>` : ""}
    <div class="buckets">${buckets.map((b) => {
      const i = b.info || {};
      const line = `storescu +sd +r -nh -aet ME -aec ${b.aetitle} ${host} ${setup.dicom_port} <dir>`;
      return `<article class="card bucket ${b.ready ? "" : b.enabled || !i.AETitle ? "broken" : "disabled"}" data-bucket="${esc(b.aetitle)}">
        <header><h2>${esc(i.name || b.aetitle)}</h2>${bucketBadge(b)}</header>
        ${b.problems.length ? `<ul class="problems">${b.problems.map((t) => `<li class="${t.startsWith("disabled") ? "off" : ""}">${esc(t)}</li>`).join("")}</ul>` : ""}
        <p>${esc(i.description || "")}</p>
        <dl class="facts"><dt>AE title</dt><dd class="mono">${esc(b.aetitle)}</dd>
          <dt>Version</dt><dd>${esc(i.version ?? "")}</dd>
          <dt>Mean time</dt><dd data-stat="mean">${esc(meanTime(b))}</dd>
          ${b.timing ? `<dt>All runs</dt><dd>${esc(duration(b.timing.mean_seconds))} ± ${esc(duration(b.timing.std_seconds))} over ${esc(num(b.timing.n))}</dd>` : ""}
          <dt>Folder</dt><dd class="mono">${esc(b.folder)}</dd></dl>
        <div class="cmd"><code>${esc(line)}</code><button class="btn small copy" data-line="${esc(line)}">Copy</button></div>
        ${admin && i.AETitle ? `<p class="bucket-admin">${b.enabled
          ? `<button class="btn small danger" data-toggle="disable">Disable</button>`
          : `<button class="btn small" data-toggle="enable">Enable</button>`}</p>` : ""}
      </article>`;
    }).join("") || `<p class="notice">No buckets installed.</p>`}</div>
    <p id="buckets-msg" class="msg" role="status"></p>`;
  for (const btn of main.querySelectorAll("button[data-toggle]")) btn.onclick = () => toggleBucket(btn);
  for (const b of main.querySelectorAll("button.copy")) {
    b.onclick = async () => {
      try { await navigator.clipboard.writeText(b.dataset.line); b.textContent = "Copied"; } catch (_) { b.textContent = "Select and copy"; }
    };
  }
}

// An admin's enable or disable of a bucket (audited by the box); then the view again.
async function toggleBucket(btn) {
  const name = btn.closest("article").dataset.bucket, verb = btn.dataset.toggle;
  if (verb === "disable" && !confirm(`Disable bucket ${name}? Sends to its AE title are refused until it is enabled again.`)) return;
  btn.disabled = true;
  try {
    await api(`/buckets/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
    await viewBuckets();
    document.getElementById("buckets-msg").textContent = `${name}: ${verb}d.`;
  } catch (e) {
    const m = document.getElementById("buckets-msg");
    m.textContent = e.message; m.className = "msg bad"; btn.disabled = false;
  }
}

// -- admin ---------------------------------------------------------------------------------

async function viewAdmin(section) {
  section = section || "setup";
  const tabs = [["setup", "Setup"], ["routing", "Routing"], ["routing-log", "Routing log"], ["classify", "Classification"], ["archive", "Archived studies"], ["audit", "Audit"]];
  main.innerHTML = `<nav class="subtabs">${tabs.map(([k, t]) => `<a href="#/admin/${k}" class="${k === section ? "on" : ""}">${t}</a>`).join("")}</nav><div id="admin"></div>`;
  const el = document.getElementById("admin");
  const views = { setup: adminSetup, routing: adminRouting, "routing-log": adminRoutingLog, classify: adminClassify, archive: adminArchive, audit: adminAudit };
  await (views[section] || adminSetup)(el);
}

async function adminSetup(el) {
  const s = await getJSON("/setup");
  const rows = [["AE title", s.aet], ["Listens on", s.host], ["DICOM port", s.dicom_port], ["Web port", s.web_port],
    ["Home", s.home], ["Quiet seconds before a send becomes a job", s.quiet_seconds], ["Jobs per bucket at once", s.concurrency],
    ["Bucket timeout", duration(s.bucket_timeout)], ["Runs per job at most", s.max_attempts],
    ["$me in routing rules", s.routing_me || "this box's address"], ["$port in routing rules", s.routing_port || "this box's DICOM port"]];
  el.innerHTML = `<section class="card"><h2>Setup</h2><dl class="facts wide">${rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd class="mono">${esc(v)}</dd>`).join("")}</dl>
    <p class="notice">Read-only here for now: change these in <span class="mono">magickbox.toml</span> in the home (or <span class="mono">MAGICKBOX_*</span> variables) and restart the box.</p></section>`;
}

// Routing is another part of the box; until its API exists the page says so.
async function routingOr404(path, el) {
  try {
    return await api(path);
  } catch (e) {
    if (e.status === 404) {
      el.innerHTML = `<section class="card"><h2>${path === "/routing" ? "Routing table" : "Routing log"}</h2><p class="notice" id="routing-na">Routing is not available yet on this box.</p></section>`;
      return null;
    }
    throw e;
  }
}

async function adminRouting(el) {
  const res = await routingOr404("/routing", el);
  if (!res) return;
  const table = await res.json();
  el.innerHTML = `<section class="card"><h2>Routing table</h2>
    <p class="sub">JSON. The box checks it before saving: a table with a mistake is refused and the stored one stays.</p>
    <textarea id="routing-text" class="editor" spellcheck="false" aria-label="Routing table">${esc(JSON.stringify(table, null, 2))}</textarea>
    <div class="buttons"><button class="btn primary" id="routing-save">Save</button><button class="btn" id="routing-reload">Reload</button></div>
    <pre id="routing-msg" class="msg" role="status"></pre></section>
    <section class="card"><h2>Destinations <span class="sub">of the stored table; test one with a C-ECHO</span></h2><div id="dests"></div></section>`;
  drawDestinations(table);
  const msg = (t, bad) => { const m = document.getElementById("routing-msg"); m.textContent = t; m.className = "msg " + (bad ? "bad" : "good"); };
  document.getElementById("routing-reload").onclick = () => adminRouting(el);
  document.getElementById("routing-save").onclick = async () => {
    // The box checks the text (JSON and rules) itself: its answer is shown word for word.
    const text = document.getElementById("routing-text").value;
    try {
      await api("/routing", { method: "PUT", headers: { "Content-Type": "application/json" }, body: text });
      msg("Saved.");
      drawDestinations(JSON.parse(text)); // the box took it, so it is JSON
    } catch (e) { msg(e.message, true); }
  };
}

// Every distinct destination of a routing table, with where it is used.
function destinations(table) {
  const found = new Map();
  (table.routing || []).forEach((rule, i) => {
    for (const group of Array.isArray(rule.send) ? rule.send : []) {
      for (const [key, d] of Object.entries(group || {})) {
        if (!d || typeof d !== "object") continue;
        const dest = { IP: d.IP, PORT: d.PORT, AETitleSender: d.AETitleSender || "MAGICKBOX", AETitleTo: d.AETitleTo };
        const id = JSON.stringify(dest);
        if (!found.has(id)) found.set(id, { dest, uses: [] });
        found.get(id).uses.push(`#${i} ${rule.name || ""} key ${key}`.replace(/\s+/g, " "));
      }
    }
  });
  return [...found.values()];
}

function drawDestinations(table) {
  const el = document.getElementById("dests");
  const list = destinations(table);
  el.innerHTML = list.length
    ? `<table class="jobs stats"><thead><tr><th>Destination</th><th>Used by</th><th></th><th>Answer</th></tr></thead><tbody>
      ${list.map(({ dest, uses }, i) => `<tr data-dest="${i}"><td data-label="Destination"><div class="cell"><span class="mono">${esc(`${dest.AETitleTo}@${dest.IP}:${dest.PORT}`)}</span> <span class="sub">as ${esc(dest.AETitleSender)}</span></div></td>
        <td data-label="Used by" class="sub">${esc(uses.join("; "))}</td><td class="actions"><button class="btn small" data-echo="${i}">C-ECHO</button></td><td data-label="Answer" class="echo-answer" id="echo-${i}"></td></tr>`).join("")}</tbody></table>`
    : `<p class="sub">The table names no destination.</p>`;
  for (const b of el.querySelectorAll("button[data-echo]")) {
    b.onclick = async () => {
      const out = document.getElementById(`echo-${b.dataset.echo}`);
      out.className = "echo-answer";
      out.textContent = "asking…";
      b.disabled = true;
      try {
        const res = await api("/destinations/echo", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(list[b.dataset.echo].dest) });
        const answer = await res.json();
        out.className = "echo-answer " + (answer.ok ? "good" : "bad");
        out.textContent = `${answer.ok ? "answered" : "no"}: ${answer.message || answer.status || ""}`;
      } catch (e) { out.className = "echo-answer bad"; out.textContent = e.message; }
      b.disabled = false;
    };
  }
}

// The routing log, grouped: one row per send with its latest state (its steps folded in),
// then what routing noted without a send (evaluations, saved tables, errors).
async function adminRoutingLog(el) {
  const res = await routingOr404("/routing/log?limit=1000", el);
  if (!res) return;
  const entries = await res.json();
  const rows = Array.isArray(entries) ? entries : entries.entries || [];
  const sends = (await getJSON("/sends")).reverse().slice(0, 200); // newest first
  const history = {};
  for (const r of rows) if (r.send != null) (history[r.send] = history[r.send] || []).push(r);
  const other = rows.filter((r) => r.send == null);
  const cols = ["time", "scratchdir", "outcome", "message"];
  el.innerHTML = `<section class="card"><h2>Sends <span class="sub">newest first, each with its latest state</span></h2>
      <p id="rmsg" class="msg" role="status"></p>
      ${sends.length ? sendsTable(sends, true, history) : `<p class="sub" id="no-sends">No sends yet.</p>`}</section>
    <section class="card"><h2>Routing log <span class="sub">evaluations and notes, newest first</span></h2>
    ${other.length ? `<table class="jobs" id="routing-notes"><thead><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>
      ${other.map((r) => `<tr>${cols.map((c) => c === "scratchdir" && r[c]
        ? `<td data-label="job"><a class="mono" href="#/job/${encodeURIComponent(r[c])}">${esc(r[c])}</a></td>`
        : `<td data-label="${esc(c)}" class="${c === "outcome" || c === "time" ? "nowrap" : ""}">${esc(r[c])}</td>`).join("")}</tr>`).join("")}
      </tbody></table>` : `<p class="sub" id="routing-log-empty">Nothing routed yet.</p>`}</section>`;
  const msg = (t, bad) => { const m = document.getElementById("rmsg"); m.textContent = t; m.className = "msg " + (bad ? "bad" : "good"); };
  bindSendRetry(el, () => adminRoutingLog(el), msg);
}

// The classification rules (classifyRules.json) with a test on DICOM files or a stored series.
async function adminClassify(el) {
  const text = await (await api("/classify/rules")).text();
  el.innerHTML = `<section class="card"><h2>Classification rules</h2>
    <p class="sub">classifyRules.json, the original's format. The box checks it before saving: rules with a mistake are refused (every problem named by place) and the stored ones stay.</p>
    <textarea id="classify-text" class="editor" spellcheck="false" aria-label="Classification rules">${esc(text)}</textarea>
    <div class="buttons"><button class="btn primary" id="classify-save">Save</button><button class="btn" id="classify-reload">Reload</button></div>
    <pre id="classify-msg" class="msg" role="status"></pre></section>
    <section class="card"><h2>Test the rules</h2>
    <p class="sub">On DICOM files (each series apart) or a stored series, with the rules in the editor above (saved or not).</p>
    <div class="toolbar"><input type="file" id="classify-files" multiple aria-label="DICOM files">
      <input id="classify-study" placeholder="or StudyInstanceUID" aria-label="StudyInstanceUID">
      <input id="classify-series" placeholder="SeriesInstanceUID (optional)" aria-label="SeriesInstanceUID">
      <button class="btn" id="classify-test">Test</button></div>
    <div id="classify-result"></div></section>`;
  const msg = (t, bad) => { const m = document.getElementById("classify-msg"); m.textContent = t; m.className = "msg " + (bad ? "bad" : "good"); };
  document.getElementById("classify-reload").onclick = () => adminClassify(el);
  document.getElementById("classify-save").onclick = async () => {
    const body = document.getElementById("classify-text").value;
    const res = await fetch(API + "/classify/rules", { method: "PUT", headers: { "Content-Type": "application/json", ...(await csrfHeader()) }, body });
    const answer = await res.json();
    if (res.ok) msg(`Saved: ${answer.types} types.`);
    else msg((answer.problems || [answer.detail]).join("\n"), true);
  };
  document.getElementById("classify-test").onclick = async () => {
    const form = new FormData();
    for (const f of document.getElementById("classify-files").files) form.append("file", f);
    const study = document.getElementById("classify-study").value.trim();
    const series = document.getElementById("classify-series").value.trim();
    if (study) form.append("study_uid", study);
    if (series) form.append("series_uid", series);
    form.append("rules", document.getElementById("classify-text").value);
    const out = document.getElementById("classify-result");
    const res = await fetch(API + "/classify/test", { method: "POST", headers: await csrfHeader(), body: form });
    const answer = await res.json();
    if (!res.ok) { out.innerHTML = `<pre class="msg bad">${esc((answer.problems || [answer.detail]).join("\n"))}</pre>`; return; }
    out.innerHTML = answer.series.map((s) => `<div class="classified" data-series="${esc(s.series_uid)}">
      <h3>${esc(s.view.SeriesDescription || s.series_uid)} <span class="sub">${num(s.view.NumFiles)} files</span></h3>
      <p>Types: ${s.ClassifyType.length ? s.ClassifyType.map((t) => `<span class="chip">${esc(t)}</span>`).join(" ") : "none"}</p>
      <table class="jobs"><thead><tr><th>Type</th><th>Rule</th><th>Result</th></tr></thead><tbody>
      ${s.types.map((t) => t.rules.map((r, i) => `<tr class="${r.held ? "held" : "failed"}"><td>${i ? "" : `${esc(t.type)} ${t.matched ? "✓" : "✗"}`}</td>
        <td class="mono">${esc(r.rule)}</td><td>${r.held ? "held" : "failed"}</td></tr>`).join("")).join("")}</tbody></table></div>`).join("");
  };
}

// DICOM's YYYYMMDD and Family^Given^Middle, as people write them.
const dicomDate = (d) => (/^\d{8}$/.test(d || "") ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d);
function personName(pn) {
  const [family, ...rest] = String(pn || "").split("^");
  const given = rest.filter(Boolean).join(" ");
  return given ? `${family}, ${given}` : family;
}

async function adminArchive(el, offset = 0) {
  const data = await getJSON(`/archive?limit=100&offset=${offset}`);
  el.innerHTML = `<section class="card"><h2>Archived studies <span class="sub">${num(data.total)}</span></h2>
    <p id="amsg" class="msg" role="status"></p>
    <table class="jobs archive"><thead><tr><th>Patient ID</th><th>Name</th><th>Accession</th><th>Date</th><th>Description</th><th>StudyInstanceUID</th><th class="num">Files</th><th></th></tr></thead>
    <tbody>${data.studies.map((s) => `<tr data-uid="${esc(s.StudyInstanceUID)}">
      <td data-label="Patient ID">${esc(s.PatientID)}</td><td data-label="Name">${esc(personName(s.PatientName))}</td><td data-label="Accession">${esc(s.AccessionNumber)}</td>
      <td data-label="Date" class="nowrap">${esc(dicomDate(s.StudyDate))}</td><td data-label="Description">${esc(s.StudyDescription)}</td>
      <td data-label="Study UID" class="mono sub">${esc(s.StudyInstanceUID)}</td><td data-label="Files" class="num">${num(s.files)}</td>
      <td class="actions"><button class="btn small danger" data-del="${esc(s.StudyInstanceUID)}">Delete</button></td></tr>`).join("") || `<tr><td colspan="8" class="empty">The archive is empty.</td></tr>`}</tbody></table>
    <div class="pager"><button id="aprev" ${offset ? "" : "disabled"}>‹ Newer</button><button id="anext" ${offset + data.studies.length < data.total ? "" : "disabled"}>Older ›</button></div></section>`;
  document.getElementById("aprev").onclick = () => adminArchive(el, Math.max(0, offset - 100));
  document.getElementById("anext").onclick = () => adminArchive(el, offset + 100);
  for (const b of el.querySelectorAll("button[data-del]")) {
    b.onclick = async () => {
      const uid = b.dataset.del;
      if (!confirm(`Delete study ${uid} from the archive, and every job made of it?`)) return;
      try { await api(`/studies/${encodeURIComponent(uid)}`, { method: "DELETE" }); await adminArchive(el, offset); } catch (e) {
        const m = document.getElementById("amsg"); m.textContent = e.message; m.className = "msg bad";
      }
    };
  }
}

// The audit trail (admins): who did what to which job, study or setting, newest first.
async function adminAudit(el, offset = 0, action = "") {
  const q = `limit=100&offset=${offset}` + (action ? `&action=${encodeURIComponent(action)}` : "");
  let data;
  try { data = await getJSON(`/audit?${q}`); } catch (e) {
    el.innerHTML = `<section class="card"><h2>Audit</h2><p class="msg bad">${esc(e.message)}</p></section>`;
    return;
  }
  const actions = ["", ...data.actions]; // every name the box records
  el.innerHTML = `<section class="card"><h2>Audit <span class="sub">${num(data.total)}</span></h2>
    <p><label>Action <select id="audit-action">${actions.map((a) => `<option value="${a}" ${a === action ? "selected" : ""}>${a || "all"}</option>`).join("")}</select></label>
      <a class="btn small" href="${API}/audit.jsonl" download id="audit-export">Export (JSON lines)</a></p>
    <table class="jobs" id="audit-rows"><thead><tr><th>Time</th><th>Who</th><th>Address</th><th>Action</th><th>Target</th><th>Detail</th></tr></thead>
    <tbody>${data.events.map((e) => `<tr><td class="nowrap">${esc(localTime(new Date(e.at * 1000).toISOString()))}</td><td>${esc(e.actor)}</td>
      <td class="mono">${esc(e.address)}</td><td>${esc(e.action)}</td><td class="mono">${esc(e.target)}</td>
      <td class="mono sub">${esc(JSON.stringify(e.detail)).slice(0, 300)}</td></tr>`).join("") || `<tr><td colspan="6" class="empty">Nothing recorded yet.</td></tr>`}</tbody></table>
    <div class="pager"><button id="uprev" ${offset ? "" : "disabled"}>‹ Newer</button><button id="unext" ${offset + data.events.length < data.total ? "" : "disabled"}>Older ›</button></div></section>`;
  document.getElementById("audit-action").onchange = (ev) => adminAudit(el, 0, ev.target.value);
  document.getElementById("uprev").onclick = () => adminAudit(el, Math.max(0, offset - 100), action);
  document.getElementById("unext").onclick = () => adminAudit(el, offset + 100, action);
}

// -- navigation ------------------------------------------------------------------------------

async function route() {
  viewToken++;
  clearInterval(timer);
  const { parts, params } = parseHash();
  const tab = parts[0] === "job" ? "jobs" : parts[0] || "jobs";
  for (const a of document.querySelectorAll(".tabs a")) a.classList.toggle("on", a.dataset.tab === tab);
  try {
    if (parts[0] === "job" && parts[1]) await viewJob(parts[1]);
    else if (tab === "overview") await viewOverview();
    else if (tab === "buckets") await viewBuckets();
    else if (tab === "admin") await viewAdmin(parts[1]);
    else await viewJobs(params);
  } catch (err) {
    if (err.status) {
      main.innerHTML = `<p class="notice bad">${esc(err.message)}</p>`;
      return;
    }
    onError(err); // the box is down or restarting: say so, and try again shortly
    main.innerHTML = `<p class="notice bad">The box does not answer. Trying again…</p>`;
    const token = viewToken;
    setTimeout(() => token === viewToken && route(), POLL_MS);
  }
}

// -- the disk, on every view: below its reserve the box takes no data ------------------------

const HEALTH_MS = 10000;
async function checkDisk() {
  const el = document.getElementById("disk-low");
  try {
    const { disk } = await getHealth();
    el.hidden = !disk.low;
    el.textContent = disk.low
      ? `Disk low: ${bytes(disk.free)} free, ${bytes(disk.reserve)} kept in reserve. ` +
        "The box refuses new sends and uploads until space is freed (delete jobs or studies)."
      : "";
  } catch (_) { /* the box is down: the status dot says so */ }
}

window.addEventListener("hashchange", route);

// Who is logged in, and the way out.
whoami = getJSON("/me");
(async () => {
  try {
    const me = await whoami;
    csrf = me.csrf || "";
    myRole = me.role || "";
    const el = document.getElementById("who");
    el.hidden = false;
    el.querySelector(".user").textContent = `${me.name} (${me.role})`;
    el.querySelector("button").hidden = me.kind !== "user";
    el.querySelector("button").addEventListener("click", async () => {
      try { await api("/logout", { method: "POST" }); } catch (_) { /* gone already */ }
      location.href = "/login";
    });
  } catch (_) { /* 401 sends the browser to the login form */ }
})();
route();
checkDisk();
setInterval(checkDisk, HEALTH_MS);
