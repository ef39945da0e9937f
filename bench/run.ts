// The benchmark: starts a real three-node cluster through bin/marmot, runs T1 T2 L1 O1 M1 C1, prints and saves the figures.
//
//   npm run bench              full run (about 3 minutes)
//   npm run bench -- --quick   smaller workloads (about a minute)
//   options: --reps N (T1 repetitions), --t1-rows N, --t2-seconds N, --l1-seconds N

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { changeLogTable } from "../src/sqlite/names.js";
import { repoRoot, TestCluster } from "../test/helpers/marmot.js";
import { killAll } from "../test/helpers/processes.js";
import { tempDir } from "../test/helpers/sqlite.js";
import { measureJetStream, marmotMessages, type PublishRate } from "./ceilings.js";
import { startApp } from "./child.js";
import { describeMachine } from "./machine.js";
import { MemorySampler, type MemoryFigures } from "./memory.js";
import { measureOverhead, type OverheadRun } from "./overhead.js";
import { fixed, int, median, percentile, table } from "./stats.js";
import { bulkTableSql, latencyTableSql, mixedTableSql, nowNs } from "./workload.js";

interface Settings {
  quick: boolean;
  t1Rows: number;
  t1Reps: number;
  t2Seconds: number;
  t2SeedRows: number;
  l1PerSecond: number;
  l1Seconds: number;
  o1BulkRows: number;
  o1AutocommitRows: number;
  o1Runs: number;
  c1Seconds: number;
  /** marmot's defaults: scan_max_changes, compress, 64 publishes in flight */
  changesPerMessage: number;
  compress: boolean;
  inFlight: number;
}

function parseSettings(argv: string[]): Settings {
  const quick = argv.includes("--quick");
  const option = (name: string, fallback: number): number => {
    const i = argv.indexOf(name);
    if (i < 0) return fallback;
    const value = Number(argv[i + 1]);
    if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} needs a positive number, got ${argv[i + 1]}`);
    return value;
  };
  return {
    quick,
    t1Rows: option("--t1-rows", quick ? 20_000 : 100_000),
    t1Reps: option("--reps", 3),
    t2Seconds: option("--t2-seconds", quick ? 3 : 10),
    t2SeedRows: 1000,
    l1PerSecond: 50,
    l1Seconds: option("--l1-seconds", quick ? 5 : 30),
    o1BulkRows: quick ? 20_000 : 100_000,
    o1AutocommitRows: quick ? 5_000 : 20_000,
    o1Runs: quick ? 2 : 3,
    c1Seconds: quick ? 1.5 : 3,
    changesPerMessage: 512,
    compress: true,
    inFlight: 64,
  };
}

const T2_TABLE = "mixed";
const L1_TABLE = "latency";
const t1Table = (rep: number) => `bulk_${rep}`;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const seconds = (fromNs: bigint, toNs: bigint) => Number(toNs - fromNs) / 1e9;

// ---------------------------------------------------------------- T1

interface BulkRun {
  rows: number;
  rowsPerSec: number;
  /** seconds from the start of the load: the app's commit, the change log empty on node 1, every row on each node */
  committedS: number;
  shippedS: number;
  appliedS: number[];
  identical: boolean;
}

async function runBulkLoad(cluster: TestCluster, table: string, rows: number): Promise<BulkRun> {
  const readers = cluster.nodes.map((n) => new Database(n.spec.dbPath, { fileMustExist: true, timeout: 10_000 }));
  try {
    const counts = readers.map((db) => db.prepare(`SELECT count(*) FROM "${table}"`).pluck(true));
    const pending = readers[0]!.prepare(`SELECT count(*) FROM "${changeLogTable(table)}"`).pluck(true);
    const app = startApp<{ startNs: string; committedNs: string }>("bulk-load.js", { dbPath: cluster.node(1).spec.dbPath, table, rows });
    let failed: unknown;
    app.result.catch((err) => (failed = err));
    const appliedNs: (bigint | undefined)[] = readers.map(() => undefined);
    let shippedNs: bigint | undefined;
    const deadline = Date.now() + 300_000;
    while (appliedNs.some((t) => t === undefined)) {
      if (failed) throw failed;
      if (Date.now() > deadline) throw new Error(`T1: not every node has ${rows} rows after 300 s: ${counts.map((c) => c.get()).join(", ")}`);
      for (let i = 0; i < readers.length; i++) {
        if (appliedNs[i] === undefined && (counts[i]!.get() as number) >= rows) appliedNs[i] = nowNs();
      }
      if (shippedNs === undefined && appliedNs[0] !== undefined && (pending.get() as number) === 0) shippedNs = nowNs();
      await sleep(5);
    }
    while (shippedNs === undefined) {
      if ((pending.get() as number) === 0) shippedNs = nowNs();
      else await sleep(5);
    }
    const load = await app.result;
    const start = BigInt(load.startNs);
    const applied = appliedNs.map((t) => seconds(start, t!));
    const identical = cluster.differences([table]) === "";
    return {
      rows,
      rowsPerSec: rows / Math.max(...applied),
      committedS: seconds(start, BigInt(load.committedNs)),
      shippedS: seconds(start, shippedNs),
      appliedS: applied,
      identical,
    };
  } finally {
    for (const db of readers) db.close();
  }
}

// ---------------------------------------------------------------- T2

interface MixedRun {
  seconds: number;
  inserts: number;
  updates: number;
  busyErrors: number;
  appWritesPerSec: number;
  /** writes / seconds from the writers' start until every node has every inserted row */
  replicatedRowsPerSec: number;
  /** seconds after the writers stopped until every node had every inserted row, and until sqldiff found nothing */
  allRowsAfterStopS: number;
  identicalAfterStopS: number;
}

async function runMixedWriters(cluster: TestCluster, s: Settings): Promise<MixedRun> {
  const startAtNs = nowNs() + 2_000_000_000n;
  const writers = cluster.nodes.map((n) =>
    startApp<{ inserts: number; updates: number; busyErrors: number; startNs: string; endNs: string }>("busy-writer.js", {
      dbPath: n.spec.dbPath,
      table: T2_TABLE,
      node: n.spec.id,
      durationMs: s.t2Seconds * 1000,
      seedRows: s.t2SeedRows,
      startAtNs: String(startAtNs),
    }),
  );
  const results = await Promise.all(writers.map((w) => w.result));
  const inserts = results.reduce((a, r) => a + r.inserts, 0);
  const updates = results.reduce((a, r) => a + r.updates, 0);
  const start = results.map((r) => BigInt(r.startNs)).reduce((a, b) => (a < b ? a : b));
  const end = results.map((r) => BigInt(r.endNs)).reduce((a, b) => (a > b ? a : b));
  const expected = s.t2SeedRows + inserts;
  const readers = cluster.nodes.map((n) => new Database(n.spec.dbPath, { fileMustExist: true, timeout: 10_000 }));
  let allRowsNs: bigint;
  try {
    const counts = readers.map((db) => db.prepare(`SELECT count(*) FROM "${T2_TABLE}"`).pluck(true));
    const deadline = Date.now() + 300_000;
    for (;;) {
      const now = counts.map((c) => c.get() as number);
      if (now.every((c) => c >= expected)) break;
      if (Date.now() > deadline) throw new Error(`T2: nodes have ${now.join(", ")} rows after 300 s, expected ${expected}`);
      await sleep(10);
    }
    allRowsNs = nowNs();
  } finally {
    for (const db of readers) db.close();
  }
  const deadline = Date.now() + 300_000;
  while (cluster.differences([T2_TABLE]) !== "") {
    if (Date.now() > deadline) throw new Error("T2: the nodes still differ (sqldiff) 300 s after the writers stopped");
    await sleep(50);
  }
  const identicalNs = nowNs();
  const writes = inserts + updates;
  return {
    seconds: seconds(start, end),
    inserts,
    updates,
    busyErrors: results.reduce((a, r) => a + r.busyErrors, 0),
    appWritesPerSec: writes / seconds(start, end),
    replicatedRowsPerSec: writes / seconds(start, allRowsNs),
    allRowsAfterStopS: Math.max(0, seconds(end, allRowsNs)),
    identicalAfterStopS: Math.max(0, seconds(end, identicalNs)),
  };
}

// ---------------------------------------------------------------- L1

interface LatencyRun {
  writes: number;
  received: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
  late: number;
}

async function runLatency(cluster: TestCluster, s: Settings): Promise<LatencyRun> {
  const count = s.l1PerSecond * s.l1Seconds;
  const reader = startApp<{ latenciesMs: number[] }>("latency-reader.js", {
    dbPath: cluster.node(2).spec.dbPath,
    table: L1_TABLE,
    count,
    timeoutMs: (s.l1Seconds + 60) * 1000,
  });
  await reader.ready;
  const writer = startApp<{ written: number; late: number }>("paced-writer.js", {
    dbPath: cluster.node(1).spec.dbPath,
    table: L1_TABLE,
    count,
    perSecond: s.l1PerSecond,
    startAtNs: String(nowNs() + 1_500_000_000n),
  });
  const [written, read] = await Promise.all([writer.result, reader.result]);
  const l = read.latenciesMs;
  return {
    writes: written.written,
    received: l.length,
    perSecond: s.l1PerSecond,
    p50Ms: percentile(l, 50),
    p99Ms: percentile(l, 99),
    maxMs: Math.max(...l),
    meanMs: l.reduce((a, b) => a + b, 0) / Math.max(l.length, 1),
    late: written.late,
  };
}

// ---------------------------------------------------------------- the run

function natsUrlOf(output: string): string {
  const match = /marmot is running.*?\bnats=(nats:\/\/\S+?)(?:,|\s|$)/.exec(output);
  if (!match) throw new Error("could not find the NATS client URL in node 1's log");
  return match[1]!;
}

interface Results {
  command: string;
  date: string;
  machine: ReturnType<typeof describeMachine>;
  settings: Settings;
  C1?: { sqliteBulkRowsPerSec: number; jetstreamPipelined: PublishRate; jetstreamOneAwaitedPerRow: PublishRate };
  O1?: { runs: OverheadRun[]; bulkRatio: number; autocommitRatio: number };
  T1?: { runs: BulkRun[]; medianRowsPerSec: number };
  T2?: MixedRun;
  L1?: LatencyRun;
  M1?: { phases: Record<string, Record<string, MemoryFigures>>; highWaterMb: Record<string, number | undefined> };
  errors: string[];
}

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const results: Results = {
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
    date: new Date().toISOString(),
    machine: describeMachine(),
    settings,
    errors: [],
  };
  const m = results.machine;
  console.log(`marmot benchmark (${settings.quick ? "quick" : "full"}): ${m.cores} cores (${m.cpuModel}), ${m.memoryGb} GB, load ${m.loadAverage.join(" ")}`);
  console.log(`Node ${m.node}, ${m.natsServer}, SQLite ${m.sqlite}, better-sqlite3 ${m.betterSqlite3}, kernel ${m.kernel}`);

  const dir = tempDir("marmot-bench-");
  // O1 and the SQLite ceiling first, on a quiet machine.
  console.log("O1/C1: insert rates with and without capture ...");
  const overhead = measureOverhead(dir, settings.o1BulkRows, settings.o1AutocommitRows, settings.o1Runs);
  results.O1 = {
    runs: overhead,
    bulkRatio: median(overhead.map((r) => r.captured.bulkRowsPerSec / r.plain.bulkRowsPerSec)),
    autocommitRatio: median(overhead.map((r) => r.captured.autocommitRowsPerSec / r.plain.autocommitRowsPerSec)),
  };
  const sqliteBulkRowsPerSec = median(overhead.map((r) => r.plain.bulkRowsPerSec));

  let cluster: TestCluster | undefined;
  let sampler: MemorySampler | undefined;
  try {
    const schema = [
      ...Array.from({ length: settings.t1Reps }, (_, i) => bulkTableSql(t1Table(i + 1))),
      mixedTableSql(T2_TABLE, settings.t2SeedRows),
      latencyTableSql(L1_TABLE),
    ].join("\n");
    console.log("starting 3 marmot nodes (embedded NATS cluster, R3 streams) ...");
    cluster = await TestCluster.create({ schema, replicas: 3, shards: 1 });
    await cluster.startAll();
    sampler = new MemorySampler(
      cluster.nodes.flatMap((n) => [
        { label: `marmot-${n.spec.id}`, pid: n.pid },
        ...(n.natsPid !== undefined ? [{ label: `nats-${n.spec.id}`, pid: n.natsPid }] : []),
      ]),
    );
    sampler.start();

    console.log("C1: JetStream ceilings on the same cluster ...");
    const messages = marmotMessages(t1Table(1), settings.t1Rows, settings.changesPerMessage, settings.compress);
    const js = await measureJetStream(natsUrlOf(cluster.node(1).output), messages, {
      replicas: 3,
      durationMs: settings.c1Seconds * 1000,
      inFlight: settings.inFlight,
    });
    results.C1 = { sqliteBulkRowsPerSec, jetstreamPipelined: js.pipelined, jetstreamOneAwaitedPerRow: js.oneAwaitedPerRow };

    const bulkRuns: BulkRun[] = [];
    for (let rep = 1; rep <= settings.t1Reps; rep++) {
      console.log(`T1: ${int(settings.t1Rows)} rows in one transaction on node 1, run ${rep} of ${settings.t1Reps} ...`);
      await sleep(1000);
      sampler.enter(`T1#${rep}`);
      bulkRuns.push(await runBulkLoad(cluster, t1Table(rep), settings.t1Rows));
      sampler.enter("idle");
    }
    results.T1 = { runs: bulkRuns, medianRowsPerSec: median(bulkRuns.map((r) => r.rowsPerSec)) };

    console.log(`T2: three writers for ${settings.t2Seconds} s ...`);
    await sleep(1000);
    sampler.enter("T2");
    results.T2 = await runMixedWriters(cluster, settings);
    sampler.enter("idle");

    console.log(`L1: ${settings.l1PerSecond} writes/s for ${settings.l1Seconds} s on node 1, read on node 2 ...`);
    await sleep(1000);
    sampler.enter("L1");
    results.L1 = await runLatency(cluster, settings);
    sampler.enter("idle");
  } catch (err) {
    results.errors.push((err as Error).stack ?? String(err));
    console.error(`benchmark failed: ${(err as Error).message}`);
  } finally {
    if (sampler) {
      sampler.stop();
      const phases = ["T1#1", "T1#2", "T1#3", "T1#4", "T1#5", "T2", "L1"].slice(0);
      results.M1 = {
        phases: Object.fromEntries(phases.map((p) => [p, sampler!.figures(p)]).filter(([, f]) => Object.keys(f as object).length > 0)),
        highWaterMb: sampler.highWaterMb(),
      };
    }
    if (cluster) await cluster.stopAll().catch((err) => results.errors.push(`stopping the cluster: ${(err as Error).message}`));
    await killAll();
  }

  console.log("");
  console.log(render(results));
  const outDir = join(repoRoot, "bench", "results");
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${results.date.replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + "\n");
  console.log(`\nresults written to ${file}`);
  if (results.errors.length > 0) process.exitCode = 1;
}

function verdict(ok: boolean | undefined): string {
  return ok === undefined ? "" : ok ? "ok" : "MISS";
}

function render(r: Results): string {
  const rows: string[][] = [];
  const jsRate = r.C1?.jetstreamPipelined.rowsPerSec ?? NaN;
  const sqliteRate = r.C1?.sqliteBulkRowsPerSec ?? NaN;
  const awaitedRate = r.C1?.jetstreamOneAwaitedPerRow.rowsPerSec ?? NaN;
  const ofCeilings = (rate: number) => `${fixed(rate / jsRate)} of JS, ${fixed(rate / sqliteRate)} of SQLite, ${fixed(rate / awaitedRate, 1)}x awaited`;
  if (r.C1) {
    const p = r.C1.jetstreamPipelined;
    const a = r.C1.jetstreamOneAwaitedPerRow;
    rows.push(["C1", "raw better-sqlite3 insert, one transaction", `${int(sqliteRate)} rows/s`, "", "", ""]);
    rows.push([
      "C1",
      `raw JetStream R3 publish, ${p.inFlight} in flight`,
      `${int(p.rowsPerSec)} rows/s`,
      "",
      `${int(p.messagesPerSec)} msg/s of ${int(p.meanMessageBytes)} B, ${fixed(p.megabytesPerSec, 1)} MB/s`,
      "",
    ]);
    rows.push(["C1", "one awaited publish per row (R3)", `${int(a.rowsPerSec)} rows/s`, "", `${int(a.meanMessageBytes)} B messages`, ""]);
  }
  if (r.T1) {
    const t = r.T1.medianRowsPerSec;
    const ok = t >= 50_000 && t >= jsRate / 2;
    rows.push(["T1", `${int(r.settings.t1Rows)} rows, 1 tx on node 1, until on all 3 (median of ${r.T1.runs.length})`, `${int(t)} rows/s`, ">= 50,000 and >= 0.5 of JS", ofCeilings(t), verdict(ok)]);
    for (const [i, run] of r.T1.runs.entries()) {
      rows.push([
        "",
        `  run ${i + 1}: commit ${fixed(run.committedS)} s, log empty ${fixed(run.shippedS)} s, on nodes ${run.appliedS.map((x) => fixed(x)).join("/")} s`,
        `${int(run.rowsPerSec)} rows/s`,
        "",
        run.identical ? "sqldiff: identical" : "sqldiff: DIFFERENT",
        "",
      ]);
    }
  }
  if (r.T2) {
    const t = r.T2;
    rows.push(["T2", `3 writers ${fixed(t.seconds, 1)} s: app writes (${int(t.inserts)} ins, ${int(t.updates)} upd)`, `${int(t.appWritesPerSec)} rows/s`, "", t.busyErrors > 0 ? `${t.busyErrors} SQLITE_BUSY` : "", ""]);
    rows.push(["T2", "replicated to all nodes", `${int(t.replicatedRowsPerSec)} rows/s`, "", ofCeilings(t.replicatedRowsPerSec), ""]);
    rows.push(["T2", "after the writers stop: every row on every node / identical by sqldiff", `${fixed(t.allRowsAfterStopS)} s / ${fixed(t.identicalAfterStopS)} s`, "", "", ""]);
  }
  if (r.L1) {
    const l = r.L1;
    const ok = l.p50Ms <= 5 && l.p99Ms <= 25 && l.received === l.writes;
    rows.push([
      "L1",
      `node 1 -> readable on node 2, ${l.perSecond}/s, ${l.received}/${l.writes} rows`,
      `p50 ${fixed(l.p50Ms, 1)} / p99 ${fixed(l.p99Ms, 1)} / max ${fixed(l.maxMs, 1)} ms`,
      "p50 <= 5, p99 <= 25",
      `mean ${fixed(l.meanMs, 1)} ms${l.late > 0 ? `, ${l.late} writes late` : ""}`,
      verdict(ok),
    ]);
  }
  if (r.O1) {
    const o = r.O1;
    const plainBulk = median(o.runs.map((x) => x.plain.bulkRowsPerSec));
    const capBulk = median(o.runs.map((x) => x.captured.bulkRowsPerSec));
    const plainAuto = median(o.runs.map((x) => x.plain.autocommitRowsPerSec));
    const capAuto = median(o.runs.map((x) => x.captured.autocommitRowsPerSec));
    rows.push(["O1", "app insert rate with capture / without, one transaction", fixed(o.bulkRatio), ">= 0.4", `${int(capBulk)} / ${int(plainBulk)} rows/s`, verdict(o.bulkRatio >= 0.4)]);
    rows.push(["O1", "same, autocommit single-row inserts", fixed(o.autocommitRatio), ">= 0.4", `${int(capAuto)} / ${int(plainAuto)} rows/s`, verdict(o.autocommitRatio >= 0.4)]);
  }
  if (r.M1) {
    const phases = Object.keys(r.M1.phases).filter((p) => p.startsWith("T"));
    for (const kind of ["marmot", "nats"]) {
      const labels = [1, 2, 3].map((n) => `${kind}-${n}`);
      const peaks = phases.map((p) => labels.map((l) => r.M1!.phases[p]![l]?.peakMb ?? NaN));
      const overall = Math.max(...peaks.flat().filter(Number.isFinite));
      const t1Peaks = phases.filter((p) => p.startsWith("T1")).map((p) => Math.max(...labels.map((l) => r.M1!.phases[p]![l]?.peakMb ?? 0)));
      const flat = t1Peaks.length < 2 || Math.max(...t1Peaks.slice(1)) <= t1Peaks[0]! * 1.25;
      rows.push([
        "M1",
        `peak RSS ${kind === "marmot" ? "marmot" : "nats-server"} n1/n2/n3 per phase (${phases.join(", ")})`,
        `${int(overall)} MB max`,
        kind === "marmot" ? "<= 150 MB, flat" : "",
        phases.map((p, i) => `${p}: ${peaks[i]!.map((x) => int(x)).join("/")}`).join("; "),
        kind === "marmot" ? verdict(overall <= 150 && flat) : "",
      ]);
    }
  }
  const header = ["", "measure", "value", "target", "detail / ratio to the ceilings", ""];
  let out = table(header, rows);
  out += `\nmachine: ${r.machine.cores} cores ${r.machine.cpuModel}, ${r.machine.memoryGb} GB; Node ${r.machine.node}; ${r.machine.natsServer}; SQLite ${r.machine.sqlite}`;
  out += `\ncommand: ${r.command}`;
  if (r.errors.length > 0) out += `\nERRORS:\n${r.errors.join("\n")}`;
  return out;
}

await main();
