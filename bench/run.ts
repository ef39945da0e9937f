// The benchmark: starts a real three-node cluster through bin/marmot, runs T1 T2 L1 L1N L1S E1 O1 M1 C1 S1, prints and saves the figures.
//
//   npm run bench              full run (about 4 minutes)
//   npm run bench -- --quick   smaller workloads (about 1.5 minutes)
//   options: --reps N (T1 repetitions), --t1-rows N, --t2-seconds N, --l1-seconds N, --shards N (default 1),
//            --only C1,O1,T1,T2,L1,L1N,L1S,E1,S1

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { changeLogTable } from "../src/sqlite/names.js";
import { repoRoot, TestCluster } from "../test/helpers/marmot.js";
import { freePorts } from "../test/helpers/ports.js";
import { killAll } from "../test/helpers/processes.js";
import { tempDir } from "../test/helpers/sqlite.js";
import { measureJetStream, marmotMessages, type PublishRate } from "./ceilings.js";
import { startApp } from "./child.js";
import { describeMachine } from "./machine.js";
import { measureSnapshots, renderSnapshotFigures, type SnapshotFigure } from "./snapshot.js";
import { measureOverhead, type OverheadRun } from "./overhead.js";
import { ProcessSampler, type CpuFigures, type MemoryFigures, type WatchedProcess } from "./sampler.js";
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
  /** marmot's defaults: scan_max_changes, compress, publishes in flight; and the most in flight the ceiling tries */
  changesPerMessage: number;
  compress: boolean;
  inFlight: number;
  ceilingInFlight: number;
  /** [replication_log] shards of the cluster */
  shards: number;
  /** workloads to run (--only T1,L1); all by default */
  only: Set<string>;
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
    inFlight: 16,
    ceilingInFlight: 64,
    shards: option("--shards", 1),
    only: new Set((argv.includes("--only") ? (argv[argv.indexOf("--only") + 1] ?? "") : "C1,O1,T1,T2,L1,L1N,L1S,E1,S1").toUpperCase().split(",")),
  };
}

const T2_TABLE = "mixed";
/** one table per latency run, so each starts empty */
const latencyTables = { L1: "latency_full", L1N: "latency_normal", L1S: "latency_shell", E1: "latency_locked" } as const;
type LatencyWorkload = keyof typeof latencyTables;
const latencyWriter = { L1: "FULL", L1N: "NORMAL", L1S: "shell", E1: "FULL" } as const;
const t1Table = (rep: number) => `bulk_${rep}`;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const seconds = (fromNs: bigint, toNs: bigint) => Number(toNs - fromNs) / 1e9;
const cpuOf = (usage: NodeJS.CpuUsage) => (usage.user + usage.system) / 1e6;

// ---------------------------------------------------------------- T1

interface BulkRun {
  rows: number;
  rowsPerSec: number;
  /** seconds from the start of the load: the app's commit, the change log empty on node 1, every row on each node */
  committedS: number;
  shippedS: number;
  appliedS: number[];
  identical: boolean;
  /** CPU seconds of the app that loaded the rows and of the benchmark's own polling */
  appCpuS: number;
  pollCpuS: number;
}

async function runBulkLoad(cluster: TestCluster, table: string, rows: number): Promise<BulkRun> {
  const readers = cluster.nodes.map((n) => new Database(n.spec.dbPath, { fileMustExist: true, timeout: 10_000 }));
  const ownCpu = process.cpuUsage();
  try {
    // Cheap probes while rows arrive (a full count of 100,000 rows costs about a millisecond of CPU that marmot
    // needs too): the highest id first, the count only once the highest id is there.
    const counts = readers.map((db) => {
      const highest = db.prepare(`SELECT max(id) FROM "${table}"`).pluck(true);
      const count = db.prepare(`SELECT count(*) FROM "${table}"`).pluck(true);
      return { get: () => ((highest.get() as number | null) === rows ? (count.get() as number) : 0) };
    });
    const pendingRow = readers[0]!.prepare(`SELECT 1 FROM "${changeLogTable(table)}" WHERE __marmot_op <> 'marker' LIMIT 1`).pluck(true);
    const pending = { get: () => (pendingRow.get() === undefined ? 0 : 1) };
    const app = startApp<{ startNs: string; committedNs: string; cpuSeconds: number }>("bulk-load.js", {
      dbPath: cluster.node(1).spec.dbPath,
      table,
      rows,
    });
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
      await sleep(10);
    }
    while (shippedNs === undefined) {
      if ((pending.get() as number) === 0) shippedNs = nowNs();
      else await sleep(10);
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
      appCpuS: load.cpuSeconds,
      pollCpuS: cpuOf(process.cpuUsage(ownCpu)),
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
  appCpuS: number;
}

async function runMixedWriters(cluster: TestCluster, s: Settings): Promise<MixedRun> {
  const startAtNs = nowNs() + 2_000_000_000n;
  const writers = cluster.nodes.map((n) =>
    startApp<{ inserts: number; updates: number; busyErrors: number; startNs: string; endNs: string; cpuSeconds: number }>("busy-writer.js", {
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
    appCpuS: results.reduce((a, r) => a + r.cpuSeconds, 0),
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

/** E1: how each marmot's /metrics endpoint answered while an app held node 2's write lock 2 s of every 3 s. */
interface LoopRun {
  holds: number;
  /** per node: response times of GET /metrics every 100 ms, and the highest event_loop_lag_seconds p99 it exported */
  nodes: { node: number; requests: number; p50Ms: number; p99Ms: number; maxMs: number; exportedLagP99Ms: number }[];
}

async function probeMetrics(port: number, until: () => boolean): Promise<{ timesMs: number[]; exportedLagP99Ms: number }> {
  const timesMs: number[] = [];
  // NaN until a marmot exports the figure (a build from before it did not)
  let exportedLagP99Ms = NaN;
  while (!until()) {
    const started = nowNs();
    const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
    timesMs.push(Number(nowNs() - started) / 1e6);
    const lag = /event_loop_lag_seconds\{quantile="0\.99"\} (\S+)/.exec(text);
    if (lag) exportedLagP99Ms = Math.max(Number.isNaN(exportedLagP99Ms) ? 0 : exportedLagP99Ms, Number(lag[1]) * 1000);
    await sleep(100);
  }
  return { timesMs, exportedLagP99Ms };
}

async function runLatency(
  cluster: TestCluster,
  s: Settings,
  workload: LatencyWorkload,
  metricsPorts: number[],
): Promise<LatencyRun & { loop?: LoopRun }> {
  const count = s.l1PerSecond * s.l1Seconds;
  const table = latencyTables[workload];
  const reader = startApp<{ latenciesMs: number[] }>("latency-reader.js", {
    dbPath: cluster.node(2).spec.dbPath,
    table,
    count,
    timeoutMs: (s.l1Seconds + 60) * 1000,
  });
  await reader.ready;
  const startAtNs = nowNs() + 1_500_000_000n;
  const writer = startApp<{ written: number; late: number }>("paced-writer.js", {
    dbPath: cluster.node(1).spec.dbPath,
    table,
    count,
    perSecond: s.l1PerSecond,
    startAtNs: String(startAtNs),
    writer: latencyWriter[workload],
  });
  let loop: Promise<LoopRun> | undefined;
  if (workload === "E1") {
    const holder = startApp<{ holds: number }>("lock-holder.js", {
      dbPath: cluster.node(2).spec.dbPath,
      holdMs: 2000,
      restMs: 1000,
      durationMs: s.l1Seconds * 1000,
      startAtNs: String(startAtNs),
    });
    let done = false;
    void holder.result.finally(() => (done = true));
    loop = (async () => {
      const probes = await Promise.all(metricsPorts.map((port) => probeMetrics(port, () => done)));
      return {
        holds: (await holder.result).holds,
        nodes: probes.map((p, i) => ({
          node: i + 1,
          requests: p.timesMs.length,
          p50Ms: percentile(p.timesMs, 50),
          p99Ms: percentile(p.timesMs, 99),
          maxMs: Math.max(...p.timesMs),
          exportedLagP99Ms: p.exportedLagP99Ms,
        })),
      };
    })();
  }
  const [written, read, loopRun] = await Promise.all([writer.result, reader.result, loop]);
  const l = read.latenciesMs;
  return {
    loop: loopRun,
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
  C1?: {
    sqliteBulkRowsPerSec: number;
    jetstreamPipelined: PublishRate;
    jetstreamAtMarmotInFlight: PublishRate;
    jetstreamOneAwaitedPerRow: PublishRate;
  };
  O1?: { runs: OverheadRun[]; bulkRatio: number; autocommitRatio: number };
  T1?: { runs: BulkRun[]; medianRowsPerSec: number };
  T2?: MixedRun;
  L1?: LatencyRun;
  S1?: SnapshotFigure[];
  L1N?: LatencyRun;
  L1S?: LatencyRun;
  E1?: LatencyRun & { loop?: LoopRun };
  M1?: { phases: Record<string, Record<string, MemoryFigures>>; highWaterMb: Record<string, number | undefined>; processes: WatchedProcess[] };
  /** CPU seconds of each marmot and nats-server process per phase, and the phase's wall time */
  cpu?: Record<string, { wallS: number; processes: Record<string, CpuFigures> }>;
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
  console.log(
    `marmot benchmark (${settings.quick ? "quick" : "full"}): ${m.cores} cores (${m.cpuModel}), ${m.memoryGb} GB, load ${m.loadAverage.join(" ")}`,
  );
  console.log(`Node ${m.node}, ${m.natsServer}, SQLite ${m.sqlite}, better-sqlite3 ${m.betterSqlite3}, kernel ${m.kernel}`);

  const dir = tempDir("marmot-bench-");
  // O1 and the SQLite ceiling first, on a quiet machine.
  const run = (workload: string) => settings.only.has(workload);
  let sqliteBulkRowsPerSec = NaN;
  if (run("O1") || run("C1")) {
    console.log("O1/C1: insert rates with and without capture ...");
    const overhead = measureOverhead(dir, settings.o1BulkRows, settings.o1AutocommitRows, settings.o1Runs);
    results.O1 = {
      runs: overhead,
      bulkRatio: median(overhead.map((r) => r.captured.bulkRowsPerSec / r.plain.bulkRowsPerSec)),
      autocommitRatio: median(overhead.map((r) => r.captured.autocommitRowsPerSec / r.plain.autocommitRowsPerSec)),
    };
    sqliteBulkRowsPerSec = median(overhead.map((r) => r.plain.bulkRowsPerSec));
  }

  let cluster: TestCluster | undefined;
  let sampler: ProcessSampler | undefined;
  const phaseWall: Record<string, number> = {};
  const phase = async <T>(name: string, work: () => Promise<T>): Promise<T> => {
    sampler!.enter(name);
    const start = nowNs();
    try {
      return await work();
    } finally {
      phaseWall[name] = seconds(start, nowNs());
      sampler!.enter("idle");
    }
  };
  try {
    const schema = [
      ...Array.from({ length: settings.t1Reps }, (_, i) => bulkTableSql(t1Table(i + 1))),
      mixedTableSql(T2_TABLE, settings.t2SeedRows),
      ...Object.values(latencyTables).map(latencyTableSql),
    ].join("\n");
    console.log(`starting 3 marmot nodes (embedded NATS cluster, R3 streams, ${settings.shards} shard${settings.shards === 1 ? "" : "s"}) ...`);
    const metricsPorts = await freePorts(3);
    cluster = await TestCluster.create({
      schema,
      replicas: 3,
      shards: settings.shards,
      nodeToml: (id) => `[prometheus]\nenable = true\nbind = "127.0.0.1:${metricsPorts[id - 1]}"`,
    });
    await cluster.startAll();
    sampler = new ProcessSampler(
      cluster.nodes.flatMap((n) => [
        { label: `marmot-${n.spec.id}`, pid: n.pid },
        ...(n.natsPid !== undefined ? [{ label: `nats-${n.spec.id}`, pid: n.natsPid }] : []),
      ]),
    );
    sampler.start();

    if (run("C1")) {
      console.log("C1: JetStream ceilings on the same cluster ...");
      const messages = marmotMessages(t1Table(1), settings.t1Rows, settings.changesPerMessage, settings.compress);
      const js = await measureJetStream(natsUrlOf(cluster.node(1).output), messages, {
        replicas: 3,
        durationMs: settings.c1Seconds * 1000,
        inFlight: [settings.ceilingInFlight, settings.inFlight],
      });
      results.C1 = {
        sqliteBulkRowsPerSec,
        jetstreamPipelined: js.pipelined[0]!,
        jetstreamAtMarmotInFlight: js.pipelined[1]!,
        jetstreamOneAwaitedPerRow: js.oneAwaitedPerRow,
      };
    }

    if (run("T1")) {
      const bulkRuns: BulkRun[] = [];
      for (let rep = 1; rep <= settings.t1Reps; rep++) {
        console.log(`T1: ${int(settings.t1Rows)} rows in one transaction on node 1, run ${rep} of ${settings.t1Reps} ...`);
        await sleep(1000);
        bulkRuns.push(await phase(`T1#${rep}`, () => runBulkLoad(cluster!, t1Table(rep), settings.t1Rows)));
      }
      results.T1 = { runs: bulkRuns, medianRowsPerSec: median(bulkRuns.map((r) => r.rowsPerSec)) };
    }

    if (run("T2")) {
      console.log(`T2: three writers for ${settings.t2Seconds} s ...`);
      await sleep(1000);
      results.T2 = await phase("T2", () => runMixedWriters(cluster!, settings));
    }

    for (const workload of Object.keys(latencyTables) as LatencyWorkload[]) {
      if (!run(workload)) continue;
      console.log(
        `${workload}: ${settings.l1PerSecond} writes/s (${latencyWriter[workload]}) for ${settings.l1Seconds} s on node 1, read on node 2${workload === "E1" ? ", an app holding node 2's write lock 2 s of every 3 s" : ""} ...`,
      );
      await sleep(1000);
      results[workload] = await phase(workload, () => runLatency(cluster!, settings, workload, metricsPorts));
    }
  } catch (err) {
    results.errors.push((err as Error).stack ?? String(err));
    console.error(`benchmark failed: ${(err as Error).message}`);
  } finally {
    if (sampler) {
      sampler.stop();
      const phases = [...Array.from({ length: settings.t1Reps }, (_, i) => `T1#${i + 1}`), "T2", ...Object.keys(latencyTables)];
      results.M1 = {
        phases: Object.fromEntries(phases.map((p) => [p, sampler!.memory(p)]).filter(([, f]) => Object.keys(f as object).length > 0)),
        highWaterMb: sampler.highWaterMb(),
        processes: sampler.processes,
      };
      results.cpu = {};
      for (const p of phases) {
        const used = sampler.cpuIn(p);
        if (used && phaseWall[p] !== undefined) results.cpu[p] = { wallS: phaseWall[p]!, processes: used };
      }
    }
    if (cluster) await cluster.stopAll().catch((err) => results.errors.push(`stopping the cluster: ${(err as Error).message}`));
    await killAll();
  }
  // After the cluster stopped: the snapshot figures want the machine to themselves.
  if (run("S1")) {
    const mb = settings.quick ? 50 : 220;
    console.log(`S1: snapshot save and restore of a ${mb} MB database through the file and nats stores ...`);
    results.S1 = await measureSnapshots({ mb, stores: ["file", "nats"] }).catch((err: Error) => {
      results.errors.push(err.stack ?? String(err));
      return undefined;
    });
  }

  console.log("");
  console.log(render(results));
  if (results.S1) console.log(`\n${renderSnapshotFigures(results.S1)}`);
  const outDir = join(repoRoot, "bench", "results");
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${results.date.replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, JSON.stringify({ ...results, settings: { ...settings, only: [...settings.only] } }, null, 2) + "\n");
  console.log(`\nresults written to ${file}`);
  if (results.errors.length > 0) process.exitCode = 1;
}

/** "marmot 2.9/1.8/1.8, nats 0.5/0.4/0.4, app 0.8 of 8.6 (4.3 s x 2 cores)" */
function cpuLine(cpu: { wallS: number; processes: Record<string, CpuFigures> }, cores: number, extra: Record<string, number>): string {
  const of = (kind: string) => [1, 2, 3].map((n) => fixed(cpu.processes[`${kind}-${n}`]?.cpuS ?? NaN, 1)).join("/");
  const total = Object.values(cpu.processes).reduce((a, b) => a + b.cpuS, 0) + Object.values(extra).reduce((a, b) => a + b, 0);
  const others = Object.entries(extra)
    .map(([k, v]) => `${k} ${fixed(v, 1)}`)
    .join(", ");
  return `marmot ${of("marmot")}, nats-server ${of("nats")}, ${others}: ${fixed(total, 1)} of ${fixed(cpu.wallS * cores, 1)} (${fixed(cpu.wallS, 1)} s x ${cores} cores)`;
}

/** Each marmot's main thread: running, waiting for a CPU, and the rest (waiting for the network, a lock or the disk). */
function mainThreadLine(cpu: { wallS: number; processes: Record<string, CpuFigures> }): string {
  return [1, 2, 3]
    .map((n) => {
      const f = cpu.processes[`marmot-${n}`];
      if (!f) return `marmot-${n} n/a`;
      return `marmot-${n} run ${fixed(f.mainCpuS, 1)} / wait-cpu ${fixed(f.mainWaitS, 1)} / other ${fixed(Math.max(0, cpu.wallS - f.mainCpuS - f.mainWaitS), 1)} s`;
    })
    .join(", ");
}

function verdict(ok: boolean | undefined): string {
  return ok === undefined ? "" : ok ? "ok" : "MISS";
}

function render(r: Results): string {
  const rows: string[][] = [];
  const notes: string[] = [];
  const jsRate = r.C1 ? Math.max(r.C1.jetstreamPipelined.rowsPerSec, r.C1.jetstreamAtMarmotInFlight.rowsPerSec) : NaN;
  const sqliteRate = r.C1?.sqliteBulkRowsPerSec ?? NaN;
  const awaitedRate = r.C1?.jetstreamOneAwaitedPerRow.rowsPerSec ?? NaN;
  const ofCeilings = (rate: number) =>
    `${fixed(rate / jsRate)} of JS, ${fixed(rate / sqliteRate)} of SQLite, ${fixed(rate / awaitedRate, 1)}x awaited`;
  if (r.C1) {
    const a = r.C1.jetstreamOneAwaitedPerRow;
    rows.push(["C1", "raw better-sqlite3 insert, one transaction", `${int(sqliteRate)} rows/s`, "", "", ""]);
    for (const p of [r.C1.jetstreamPipelined, r.C1.jetstreamAtMarmotInFlight]) {
      rows.push([
        "C1",
        `raw JetStream R3 publish, ${p.inFlight} in flight${p.inFlight === r.settings.inFlight ? " (as marmot)" : ""}`,
        `${int(p.rowsPerSec)} rows/s`,
        "",
        `${int(p.messagesPerSec)} msg/s of ${int(p.meanMessageBytes)} B (${r.settings.changesPerMessage} rows), ${fixed(p.megabytesPerSec, 1)} MB/s`,
        "",
      ]);
    }
    rows.push(["C1", "one awaited publish per row (R3)", `${int(a.rowsPerSec)} rows/s`, "", `${int(a.meanMessageBytes)} B messages`, ""]);
  }
  if (r.T1) {
    const t = r.T1.medianRowsPerSec;
    const ok = t >= 50_000 && t >= jsRate / 2;
    rows.push([
      "T1",
      `${int(r.settings.t1Rows)} rows, 1 tx on node 1, until on all 3 (median of ${r.T1.runs.length})`,
      `${int(t)} rows/s`,
      ">= 50,000 and >= 0.5 of JS",
      ofCeilings(t),
      verdict(ok),
    ]);
    for (const [i, run] of r.T1.runs.entries()) {
      rows.push([
        "",
        `  run ${i + 1}: commit ${fixed(run.committedS)} s, log empty ${fixed(run.shippedS)} s, on nodes ${run.appliedS.map((x) => fixed(x)).join("/")} s`,
        `${int(run.rowsPerSec)} rows/s`,
        "",
        run.identical ? "sqldiff: identical" : "sqldiff: DIFFERENT",
        "",
      ]);
      const cpu = r.cpu?.[`T1#${i + 1}`];
      if (cpu) {
        notes.push(`T1 run ${i + 1} CPU seconds: ${cpuLine(cpu, r.machine.cores, { app: run.appCpuS, bench: run.pollCpuS })}`);
        notes.push(`T1 run ${i + 1} main threads: ${mainThreadLine(cpu)}`);
      }
    }
  }
  if (r.T2) {
    const t = r.T2;
    rows.push([
      "T2",
      `3 writers ${fixed(t.seconds, 1)} s: app writes (${int(t.inserts)} ins, ${int(t.updates)} upd)`,
      `${int(t.appWritesPerSec)} rows/s`,
      "",
      t.busyErrors > 0 ? `${t.busyErrors} SQLITE_BUSY` : "",
      "",
    ]);
    rows.push(["T2", "replicated to all nodes", `${int(t.replicatedRowsPerSec)} rows/s`, "", ofCeilings(t.replicatedRowsPerSec), ""]);
    rows.push([
      "T2",
      "after the writers stop: every row on every node / identical by sqldiff",
      `${fixed(t.allRowsAfterStopS)} s / ${fixed(t.identicalAfterStopS)} s`,
      "",
      "",
      "",
    ]);
    const cpu = r.cpu?.["T2"];
    if (cpu) notes.push(`T2 CPU seconds: ${cpuLine(cpu, r.machine.cores, { apps: t.appCpuS })}`);
  }
  const writerName = { L1: "synchronous FULL (default)", L1N: "synchronous NORMAL", L1S: "sqlite3 shell", E1: "FULL, node 2 locked 2 s/3 s" };
  for (const workload of Object.keys(latencyTables) as LatencyWorkload[]) {
    const l = r[workload];
    if (!l) continue;
    const locked = workload === "E1";
    const ok = l.p50Ms <= 5 && l.p99Ms <= 25 && l.received === l.writes;
    rows.push([
      workload,
      `node 1 -> readable on node 2, ${l.perSecond}/s, ${writerName[workload]}, ${l.received}/${l.writes} rows`,
      `p50 ${fixed(l.p50Ms, 1)} / p99 ${fixed(l.p99Ms, 1)} / max ${fixed(l.maxMs, 1)} ms`,
      locked ? "" : "p50 <= 5, p99 <= 25",
      `mean ${fixed(l.meanMs, 1)} ms${l.late > 0 ? `, ${l.late} writes late` : ""}`,
      locked ? "" : verdict(ok),
    ]);
    const loop = r.E1?.loop;
    if (locked && loop) {
      const worst = Math.max(...loop.nodes.map((n) => n.exportedLagP99Ms));
      rows.push([
        "E1",
        `event-loop lag p99 exported by marmot n1/n2/n3 (${loop.holds} holds of the lock)`,
        `${fixed(worst, 1)} ms max`,
        "<= 50 ms",
        loop.nodes.map((n) => `n${n.node} ${fixed(n.exportedLagP99Ms, 1)}`).join(", "),
        verdict(Number.isNaN(worst) ? undefined : worst <= 50),
      ]);
      rows.push([
        "E1",
        "GET /metrics every 100 ms, response time p50/p99/max, n1; n2; n3",
        "",
        "",
        loop.nodes.map((n) => `${fixed(n.p50Ms, 1)}/${fixed(n.p99Ms, 1)}/${fixed(n.maxMs, 1)} ms`).join("; "),
        "",
      ]);
    }
  }
  if (r.O1) {
    const o = r.O1;
    const plainBulk = median(o.runs.map((x) => x.plain.bulkRowsPerSec));
    const capBulk = median(o.runs.map((x) => x.captured.bulkRowsPerSec));
    const plainAuto = median(o.runs.map((x) => x.plain.autocommitRowsPerSec));
    const capAuto = median(o.runs.map((x) => x.captured.autocommitRowsPerSec));
    rows.push([
      "O1",
      "app insert rate with capture / without, one transaction",
      fixed(o.bulkRatio),
      ">= 0.4",
      `${int(capBulk)} / ${int(plainBulk)} rows/s`,
      verdict(o.bulkRatio >= 0.4),
    ]);
    rows.push([
      "O1",
      "same, autocommit single-row inserts",
      fixed(o.autocommitRatio),
      ">= 0.4",
      `${int(capAuto)} / ${int(plainAuto)} rows/s`,
      verdict(o.autocommitRatio >= 0.4),
    ]);
  }
  if (r.M1) {
    const phases = Object.keys(r.M1.phases).filter((p) => p.startsWith("T"));
    for (const kind of ["marmot", "nats"]) {
      const labels = [1, 2, 3].map((n) => `${kind}-${n}`);
      const peaks = phases.map((p) => labels.map((l) => r.M1!.phases[p]![l]?.peakMb ?? NaN));
      const overall = Math.max(...peaks.flat().filter(Number.isFinite));
      const t1Peaks = phases.filter((p) => p.startsWith("T1")).map((p) => Math.max(...labels.map((l) => r.M1!.phases[p]![l]?.peakMb ?? 0)));
      // Flat: the last T1 run peaks no more than 20% above the second (the first also warms a fresh process up).
      const reference = t1Peaks.length >= 3 ? t1Peaks[1]! : t1Peaks[0]!;
      const flat = t1Peaks.length < 2 || t1Peaks[t1Peaks.length - 1]! <= reference * 1.2;
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
  if (notes.length > 0) out += `\n\n${notes.join("\n")}`;
  out += `\nmachine: ${r.machine.cores} cores ${r.machine.cpuModel}, ${r.machine.memoryGb} GB; Node ${r.machine.node}; ${r.machine.natsServer}; SQLite ${r.machine.sqlite}`;
  out += `\ncommand: ${r.command}`;
  if (r.errors.length > 0) out += `\nERRORS:\n${r.errors.join("\n")}`;
  return out;
}

await main();
