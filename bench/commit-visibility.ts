// Why a commit at synchronous = FULL is seen late: times, per row, the first file event after its write, the moment
// the commit becomes visible to another connection, the moment a scan run on file events alone finds it, and the
// moment marmot's DatabaseWatcher (file events and the looks after them) finds it, all in the same run.
//
//   npm run build && node dist/bench/commit-visibility.js [FULL|NORMAL|shell] [rows]

import { watch } from "node:fs";
import { basename, dirname, join } from "node:path";
import Database from "better-sqlite3";
import { tempDir } from "../test/helpers/sqlite.js";
import { silentLogger } from "../src/log.js";
import { commitWatch, DatabaseWatcher } from "../src/sqlite/watcher.js";
import { killAll } from "../test/helpers/processes.js";
import { startApp } from "./child.js";
import { fixed, percentile } from "./stats.js";
import { latencyTableSql, nowNs } from "./workload.js";

const arg = process.argv[2] ?? "FULL";
/** the app: better-sqlite3 at synchronous FULL or NORMAL, or a sqlite3 shell (at its default, FULL) */
const synchronous = (arg === "shell" ? "shell" : arg.toUpperCase()) as "FULL" | "NORMAL" | "shell";
const rows = Number(process.argv[3] ?? 250);
const dbPath = join(tempDir("marmot-visibility-"), "app.db");
const setup = new Database(dbPath);
setup.pragma("journal_mode = WAL");
setup.exec(latencyTableSql("latency"));
setup.close();

const db = new Database(dbPath);
db.defaultSafeIntegers(true);
const newRows = db.prepare(`SELECT id, written_ns FROM latency WHERE id > ? ORDER BY id`).raw(true);
const dataVersion = () => db.pragma("data_version", { simple: true }) as bigint;

interface Row {
  writtenNs: bigint;
  firstEventNs?: bigint;
  visibleNs?: bigint;
  foundByEventNs?: bigint;
  foundByWatcherNs?: bigint;
}
const seen = new Map<bigint, Row>();
let lastFound = 0n;
let eventsWithNothingNew = 0;
let events = 0;
let lastVersion = dataVersion();
const pendingEvent: bigint[] = [];

// What an event-driven scanner does: look once per file event.
const name = basename(dbPath);
const watcher = watch(dirname(dbPath), { persistent: false }, (_e, file) => {
  if (file !== name && file !== `${name}-wal`) return;
  const at = nowNs();
  events++;
  pendingEvent.push(at);
  const found = newRows.all(lastFound) as [bigint, bigint][];
  if (found.length === 0) eventsWithNothingNew++;
  for (const [id, writtenNs] of found) {
    const row = seen.get(id) ?? { writtenNs };
    row.foundByEventNs = at;
    seen.set(id, row);
    lastFound = id;
  }
});

// marmot's watcher on a connection of its own, with no poll during the run.
const marmotDb = new Database(dbPath);
marmotDb.defaultSafeIntegers(true);
const marmotRows = marmotDb.prepare(`SELECT id, written_ns FROM latency WHERE id > ? ORDER BY id`).raw(true);
let marmotLast = 0n;
const marmotWatcher = new DatabaseWatcher(
  {
    dbPath,
    pollingInterval: 3_600_000,
    committedElsewhere: commitWatch(marmotDb),
    onChange: () => {
      const at = nowNs();
      for (const [id, writtenNs] of marmotRows.all(marmotLast) as [bigint, bigint][]) {
        const row = seen.get(id) ?? { writtenNs };
        row.foundByWatcherNs = at;
        seen.set(id, row);
        marmotLast = id;
      }
    },
  },
  silentLogger,
);
marmotWatcher.start();

// The truth: another connection's commit shows in data_version; polled every 0.25 ms on a separate connection.
const probe = new Database(dbPath);
probe.defaultSafeIntegers(true);
const probeRows = probe.prepare(`SELECT id, written_ns FROM latency WHERE id > ? ORDER BY id`).raw(true);
let probeLast = 0n;
const poll = setInterval(() => {
  const v = dataVersion();
  if (v === lastVersion) return;
  lastVersion = v;
  const at = nowNs();
  for (const [id, writtenNs] of probeRows.all(probeLast) as [bigint, bigint][]) {
    const row = seen.get(id) ?? { writtenNs };
    row.visibleNs = at;
    seen.set(id, row);
    probeLast = id;
  }
}, 0.25);

const writer = startApp<{ written: number }>("paced-writer.js", {
  dbPath,
  table: "latency",
  count: rows,
  perSecond: 50,
  startAtNs: String(nowNs() + 1_000_000_000n),
  writer: synchronous,
});
try {
  await writer.result;
  await new Promise((r) => setTimeout(r, 1500));
} finally {
  clearInterval(poll);
  watcher.close();
  marmotWatcher.stop();
  await killAll();
}
// Each row's first file event: the first event at or after its write began.
const eventTimes = pendingEvent.sort((a, b) => (a < b ? -1 : 1));
const ms = (from: bigint, to: bigint | undefined) => (to === undefined ? NaN : Number(to - from) / 1e6);
const firstEvent: number[] = [];
const visible: number[] = [];
const foundByEvent: number[] = [];
const foundByWatcher: number[] = [];
let eventBeforeVisible = 0;
for (const row of seen.values()) {
  const ev = eventTimes.find((t) => t >= row.writtenNs);
  firstEvent.push(ms(row.writtenNs, ev));
  visible.push(ms(row.writtenNs, row.visibleNs));
  foundByEvent.push(ms(row.writtenNs, row.foundByEventNs));
  foundByWatcher.push(ms(row.writtenNs, row.foundByWatcherNs));
  if (ev !== undefined && row.visibleNs !== undefined && ev < row.visibleNs) eventBeforeVisible++;
}
const line = (label: string, l: number[]) => {
  const ok = l.filter(Number.isFinite);
  return `${label.padEnd(50)} p50 ${fixed(percentile(ok, 50), 2)} / p99 ${fixed(percentile(ok, 99), 2)} ms (${ok.length} rows)`;
};
console.log(`${synchronous === "shell" ? "sqlite3 shell" : `synchronous = ${synchronous}`}, ${rows} autocommit inserts at 50/s, WAL`);
console.log(line("write -> first file event", firstEvent));
console.log(line("write -> visible to another connection", visible));
console.log(line("write -> found by a scan on each file event", foundByEvent));
console.log(line("write -> found by DatabaseWatcher (+ looks after)", foundByWatcher));
console.log(`file events: ${events}, of which found nothing new: ${eventsWithNothingNew}`);
console.log(`rows whose first file event came before their commit was visible: ${eventBeforeVisible} of ${seen.size}`);
