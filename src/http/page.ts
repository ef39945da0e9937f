// The status page: one self-contained HTML document (inline CSS and script, no fonts or files from elsewhere) that
// polls /status and redraws itself.

const STYLE = `
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d232b; --muted:#66707c; --line:#e2e5ea; --ok:#1a7f37; --warn:#9a6700;
  --bad:#cf222e; --idle:#6e7781; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:8px 16px; align-items:center; padding:14px 18px; background:var(--card); border-bottom:1px solid var(--line); }
header h1 { font-size:18px; margin:0; font-weight:600; }
#summary { font-weight:600; }
#updated { color:var(--muted); margin-left:auto; font-size:12px; }
main { padding:16px 18px; max-width:1200px; margin:0 auto; }
h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); margin:22px 0 8px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.node[data-state="stopped"] { opacity:.7; }
.node[data-state="unreachable"] { border-color:var(--bad); }
.card h3 { margin:0 0 6px; font-size:16px; display:flex; align-items:center; gap:8px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; color:#fff; background:var(--idle); white-space:nowrap; }
.s-ready { background:var(--ok); } .s-catching-up, .s-starting, .s-restoring { background:var(--warn); }
.s-unreachable { background:var(--bad); } .s-stopped { background:var(--idle); }
.facts { display:grid; grid-template-columns:auto 1fr; gap:2px 12px; margin:6px 0; }
.facts dt { color:var(--muted); } .facts dd { margin:0; overflow-wrap:anywhere; }
.reason { color:var(--bad); font-size:12px; margin:4px 0; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:500; font-size:12px; }
td.num, th.num { text-align:right; }
.lag-0 { color:var(--ok); } .lag-some { color:var(--warn); font-weight:600; }
.bad { color:var(--bad); font-weight:600; } .ok { color:var(--ok); }
.scroll { overflow-x:auto; }
#banner { display:none; background:var(--bad); color:#fff; padding:8px 18px; }
.plot { width:100%; height:140px; display:block; margin-top:6px; }
.legend { font-size:12px; color:var(--muted); display:flex; gap:4px 14px; flex-wrap:wrap; }
.legend b { color:var(--ink); font-weight:600; }
.legend i { display:inline-block; width:10px; height:3px; vertical-align:middle; margin-right:4px; }
@media (max-width:520px) { main { padding:10px; } header { padding:10px; } .grid { grid-template-columns:1fr; } }
`;

const SCRIPT = `
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&":"&amp;", "<":"&lt;", ">":"&gt;", '"':"&quot;", "'":"&#39;" })[c]);
const ago = (ms) => { const s = Math.max(0, Math.round(ms / 1000)); return s < 90 ? s + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago"; };
const bytes = (n) => n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB" : (n / 1048576).toFixed(1) + " MiB";
const cls = (state) => "s-" + String(state).replace(/ /g, "-");

function nodeCard(n, now) {
  const shards = n.shards.length === 0 ? '<p class="facts">does not apply (replicate = false)</p>' :
    '<div class="scroll"><table><tr><th>shard</th><th class="num">applied</th><th class="num">last seq</th><th class="num">lag</th><th>agreement</th></tr>' +
    n.shards.map((s) => '<tr><td>' + s.shard + '</td><td class="num">' + s.applied + '</td><td class="num">' + (s.lastSeq ?? "?") +
      '</td><td class="num lag ' + (s.lag === 0 ? "lag-0" : "lag-some") + '" data-lag="' + (s.lag ?? "") + '">' + (s.lag ?? "?") +
      '</td><td class="' + (s.agreement === "differ" ? "bad" : s.agreement === "agree" ? "ok" : "") + '">' + esc(s.agreement) + '</td></tr>').join("") +
    '</table></div>';
  const snap = n.lastSnapshot ? ago(now - n.lastSnapshot.takenAt) + " (" + bytes(n.lastSnapshot.sizeBytes) + ")" : "none";
  return '<section class="card node" data-node="' + esc(n.id) + '" data-state="' + esc(n.state) + '">' +
    '<h3>node ' + esc(n.id) + ' <span class="badge state ' + cls(n.state) + '">' + esc(n.state) + '</span></h3>' +
    (n.reason ? '<div class="reason">' + esc(n.reason) + '</div>' : '') +
    '<dl class="facts"><dt>last seen</dt><dd>' + ago(now - n.lastSeen) + '</dd>' +
    '<dt>version</dt><dd>' + esc(n.version) + '</dd>' +
    '<dt>NATS</dt><dd>' + esc(n.natsServer || "not connected") + '</dd>' +
    '<dt>pending</dt><dd>' + n.pendingChanges + ' change(s) to publish</dd>' +
    '<dt>parked</dt><dd class="' + (n.parkedChanges > 0 ? "bad" : "") + '">' + n.parkedChanges + (n.parkedChanges > 0 ? " (marmot -parked)" : "") + '</dd>' +
    '<dt>snapshot</dt><dd>' + esc(snap) + '</dd></dl>' + shards + '</section>';
}

function natsCard(nats) {
  const streams = nats.streams.map((s) => '<tr><td>' + esc(s.stream) + '</td><td>' + esc(s.leader || (s.error ? "?" : "none")) + '</td><td>' +
    (s.error ? '<span class="bad">' + esc(s.error) + '</span>' : s.replicas.map((r) => '<span class="' + (r.current && !r.offline ? "ok" : "bad") + '">' + esc(r.name) +
      (r.offline ? " offline" : r.current ? " \\u2713" : " behind " + r.lag) + '</span>').join("<br>") || "single server") +
    '</td><td class="num">' + s.messages + '</td></tr>').join("");
  return '<section class="card"><dl class="facts"><dt>connection</dt><dd class="' + (nats.connected ? "ok" : "bad") + '">' +
    (nats.connected ? "connected" : "not connected") + (nats.error ? " \\u2014 " + esc(nats.error) : "") + '</dd>' +
    '<dt>server</dt><dd>' + esc(nats.serverName ? nats.serverName + " (" + nats.server + ")" : nats.server || "none") + '</dd>' +
    '<dt>meta leader</dt><dd class="' + (nats.jetstreamAnswering === false ? "bad" : "") + '">' + esc(nats.metaLeader ??
      (nats.jetstreamAnswering === true ? "elected (its name is not visible to this account; the servers' /jsz shows it)" :
       nats.jetstreamAnswering === false ? "none: JetStream does not answer" : "unknown")) + '</dd></dl>' +
    '<div class="scroll"><table><tr><th>stream</th><th>leader</th><th>replicas</th><th class="num">messages</th></tr>' + streams + '</table></div></section>';
}

/** Lines over time on one scale; labels stay in HTML, since the SVG is stretched to the card's width. */
function plot(history, series) {
  const w = 600, h = 140, pad = 4;
  if (history.length < 2) return '<svg class="plot" viewBox="0 0 ' + w + ' ' + h + '" preserveAspectRatio="none"></svg><div class="legend">collecting\u2026</div>';
  const t0 = history[0].at, span = Math.max(history[history.length - 1].at - t0, 1);
  const max = Math.max(1, ...history.flatMap((p) => series.map((s) => p[s.key])));
  const line = (s, i) => '<polyline fill="none" stroke="' + s.color + '" stroke-width="2"' + (i > 0 ? ' stroke-dasharray="6 4"' : '') + ' vector-effect="non-scaling-stroke" points="' +
    history.map((p) => ((p.at - t0) / span * (w - 2 * pad) + pad).toFixed(1) + "," + (h - pad - p[s.key] / max * (h - 2 * pad)).toFixed(1)).join(" ") + '"/>';
  const last = history[history.length - 1];
  const minutes = Math.round(span / 60000);
  return '<div class="legend">' + series.map((s) => '<span><i style="background:' + s.color + '"></i>' + esc(s.label) + ': <b>' + last[s.key] + '</b> now</span>').join("") +
    '<span>scale 0\u2013' + max + ', last ' + (minutes < 1 ? "minute" : minutes + " min") + '</span></div>' +
    '<svg class="plot" viewBox="0 0 ' + w + ' ' + h + '" preserveAspectRatio="none" role="img">' +
    '<line x1="0" y1="' + (h - pad) + '" x2="' + w + '" y2="' + (h - pad) + '" stroke="#e2e5ea" vector-effect="non-scaling-stroke"/>' +
    series.map(line).join("") + '</svg>';
}

function render(st) {
  const now = st.generatedAt;
  const notReady = st.nodes.filter((n) => n.state !== "ready");
  const parked = st.nodes.reduce((sum, n) => sum + n.parkedChanges, 0);
  const summary = $("summary");
  summary.textContent = notReady.length === 0 && parked === 0 ? "all " + st.nodes.length + " nodes ready" :
    notReady.length + " of " + st.nodes.length + " nodes not ready" + (parked > 0 ? ", " + parked + " parked change(s)" : "");
  summary.className = notReady.length === 0 && parked === 0 ? "ok" : "bad";
  $("nodes").innerHTML = st.nodes.map((n) => nodeCard(n, now)).join("");
  $("nats").innerHTML = natsCard(st.nats);
  $("plots").innerHTML =
    '<section class="card"><h3>lag on node ' + esc(st.self) + '</h3>' +
    plot(st.history, [{ key: "lag", color: "#cf222e", label: "messages not applied yet" }]) + '</section>' +
    '<section class="card"><h3>throughput on node ' + esc(st.self) + '</h3>' +
    plot(st.history, [{ key: "appliedPerSecond", color: "#0969da", label: "applied/s" }, { key: "publishedPerSecond", color: "#1a7f37", label: "published/s" }]) + '</section>';
  const staleFor = st.heartbeatsReadAt > 0 ? now - st.heartbeatsReadAt : 0;
  $("updated").textContent = "node " + st.self + " \\u00b7 updated " + new Date(now).toLocaleTimeString() +
    (staleFor > 5000 ? " \\u00b7 other nodes as of " + ago(staleFor) : "");
}

async function poll() {
  try {
    const res = await fetch("status", { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    render(await res.json());
    $("banner").style.display = "none";
  } catch (err) {
    $("banner").textContent = "cannot reach this marmot node (" + err.message + "); retrying\\u2026";
    $("banner").style.display = "block";
  }
  setTimeout(poll, 1000);
}
poll();
`;

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>marmot cluster</title>
<style>${STYLE}</style>
</head>
<body>
<div id="banner" role="alert"></div>
<header><h1>marmot cluster</h1><span id="summary">loading\u2026</span><span id="updated"></span></header>
<main>
<h2>Nodes</h2>
<div id="nodes" class="grid"></div>
<h2>Lag and throughput</h2>
<div id="plots" class="grid"></div>
<h2>NATS</h2>
<div id="nats"></div>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;

export function statusPage(): string {
  return PAGE;
}
