// Figure S1: snapshot save and restore rates (MB/s) of a database of at least 200 MB, with the peak resident memory
// of the process doing each, through the file store and a real nats-server's object store.
//
//   node dist/bench/snapshot.js            a 220 MB database
//   options: --mb N (database size), --stores file,nats
//
// Each save and each restore runs in a process of its own (this file with --phase), so its peak RSS
// (resourceUsage().maxRSS) is that phase's alone; its RSS before the work is printed beside it.

import { execFileSync, spawn } from "node:child_process";
import { statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import Database from "better-sqlite3";
import { defaultConfig } from "../src/config/defaults.js";
import type { Config } from "../src/config/types.js";
import { silentLogger } from "../src/log.js";
import { downloadSnapshot } from "../src/snapshot/download.js";
import { fetchLatestManifest } from "../src/snapshot/manifest.js";
import { openSnapshotStore } from "../src/snapshot/open-store.js";
import { restoreSnapshot } from "../src/snapshot/restore.js";
import { removeDatabaseFiles, saveSnapshot } from "../src/snapshot/save.js";
import { installCapture } from "../src/sqlite/capture.js";
import { openDatabase } from "../src/sqlite/open.js";
import { startNatsServer } from "../test/helpers/nats.js";
import { tempDir } from "../test/helpers/sqlite.js";
import { describeMachine } from "./machine.js";
import { fixed, table } from "./stats.js";

interface PhaseReport {
  phase: "save" | "restore";
  /** the save's whole time, or the restore transaction's */
  seconds: number;
  /** restore only: download and verification before the transaction */
  downloadSeconds?: number;
  bytes: number;
  rows?: number;
  baselineMb: number;
  peakMb: number;
}

function configFor(dbPath: string, store: string, where: string): Config {
  const config = defaultConfig();
  config.dbPath = dbPath;
  config.nodeId = "1";
  if (store === "file") config.snapshot = { ...config.snapshot, store: "file", file: { path: where } };
  else config.nats.urls = [where];
  return config;
}

const rssMb = () => process.memoryUsage().rss / 2 ** 20;
const peakMb = () => process.resourceUsage().maxRSS / 1024;

/** One phase in this process: --phase save|restore DB STORE WHERE */
async function runPhase(phase: "save" | "restore", dbPath: string, storeKind: string, where: string): Promise<PhaseReport> {
  const config = configFor(dbPath, storeKind, where);
  let nc: NatsConnection | undefined;
  if (storeKind === "nats") nc = await connect({ servers: where });
  const db = openDatabase(dbPath, silentLogger);
  const store = openSnapshotStore(config, { nc, logger: silentLogger });
  const baselineMb = rssMb();
  try {
    if (phase === "save") {
      const started = performance.now();
      const manifest = await saveSnapshot(db, { config, store, logger: silentLogger });
      return { phase, seconds: (performance.now() - started) / 1000, bytes: manifest.size, baselineMb, peakMb: peakMb() };
    }
    const started = performance.now();
    const manifest = (await fetchLatestManifest(store))!;
    const file = await downloadSnapshot(store, manifest, config, { dir: join(dbPath, "..") });
    const downloaded = performance.now();
    try {
      const result = restoreSnapshot(db, file, { config, logger: silentLogger });
      return {
        phase,
        seconds: (performance.now() - downloaded) / 1000,
        downloadSeconds: (downloaded - started) / 1000,
        bytes: manifest.size,
        rows: result.rows,
        baselineMb,
        peakMb: peakMb(),
      };
    } finally {
      await removeDatabaseFiles(file);
    }
  } finally {
    db.close();
    await nc?.close();
  }
}

function runChild(args: string[]): Promise<PhaseReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), ...args], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) reject(new Error(`phase ${args.join(" ")} exited ${code}: ${out}`));
      else resolve(JSON.parse(out.trim().split("\n").at(-1)!) as PhaseReport);
    });
  });
}

/** A database of about `mb` MB the way an app fills one: rows of text and numbers, one index, marmot installed. */
function buildDatabase(path: string, mb: number): void {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE items (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL, price REAL, body TEXT, tag BLOB)");
  db.exec("CREATE TABLE notes (a TEXT, b INTEGER)");
  const insert = db.prepare("INSERT INTO items (owner, price, body, tag) VALUES (?, ?, ?, randomblob(16))");
  const rowBytes = 1000;
  const rows = Math.ceil((mb * 2 ** 20) / (rowBytes + 60));
  const fill = db.transaction((from: number, to: number) => {
    for (let i = from; i < to; i++) insert.run(i % 1000, i / 7, `${i}:`.padEnd(rowBytes, String.fromCharCode(97 + (i % 26))));
  });
  for (let i = 0; i < rows; i += 20_000) fill(i, Math.min(rows, i + 20_000));
  db.exec("CREATE INDEX items_owner ON items (owner)");
  db.close();
  const marmot = openDatabase(path, silentLogger);
  installCapture(marmot, silentLogger);
  marmot.close();
}

export interface SnapshotFigure {
  store: string;
  databaseMb: number;
  save: PhaseReport;
  restore: PhaseReport;
}

/** Build a database of about `mb` MB, then save and restore it through each store, each phase in its own process. */
export async function measureSnapshots(options: { mb: number; stores: string[] }): Promise<SnapshotFigure[]> {
  const dir = tempDir("marmot-bench-snapshot-");
  const source = join(dir, "source.db");
  buildDatabase(source, options.mb);
  const databaseMb = statSync(source).size / 2 ** 20;
  const figures: SnapshotFigure[] = [];
  const server = options.stores.includes("nats") ? await startNatsServer({ storeDir: join(dir, "nats") }) : undefined;
  try {
    for (const store of options.stores) {
      const where = store === "file" ? join(dir, "store") : server!.url;
      const target = join(dir, `restored-${store}.db`);
      const save = await runChild(["--phase", "save", source, store, where]);
      const restore = await runChild(["--phase", "restore", target, store, where]);
      figures.push({ store, databaseMb, save, restore });
      await removeDatabaseFiles(target);
    }
  } finally {
    await server?.stop();
  }
  return figures;
}

export function renderSnapshotFigures(figures: SnapshotFigure[]): string {
  const rows: string[][] = [];
  for (const { store, save, restore } of figures) {
    const objectMb = save.bytes / 2 ** 20;
    rows.push(
      [
        store,
        "save",
        fixed(objectMb, 0),
        fixed(save.seconds, 1),
        fixed(objectMb / save.seconds, 1),
        fixed(save.baselineMb, 0),
        fixed(save.peakMb, 0),
      ],
      [
        store,
        `restore (download ${fixed(restore.downloadSeconds ?? NaN, 1)} s)`,
        fixed(objectMb, 0),
        fixed(restore.seconds, 1),
        fixed(objectMb / restore.seconds, 1),
        fixed(restore.baselineMb, 0),
        fixed(restore.peakMb, 0),
      ],
    );
  }
  const db = figures[0] === undefined ? "" : `S1: database of ${fixed(figures[0].databaseMb, 0)} MB (file size, marmot installed)\n`;
  return db + table(["store", "phase", "MB", "seconds", "MB/s", "RSS before MB", "peak RSS MB"], rows);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === "--phase") {
    const report = await runPhase(argv[1] as "save" | "restore", argv[2]!, argv[3]!, argv[4]!);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(0);
  }
  const option = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
  const figures = await measureSnapshots({ mb: Number(option("--mb", "220")), stores: option("--stores", "file,nats").split(",") });
  console.log(renderSnapshotFigures(figures));
  const machine = describeMachine();
  console.log(`machine: ${machine.cores} cores ${machine.cpuModel}; ${execFileSync("uptime", { encoding: "utf8" }).trim()}`);
  process.exit(0);
}

// Run directly (or as a phase child); bench/run.ts imports measureSnapshots instead.
if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
