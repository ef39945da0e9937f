// L1's app: single-row autocommit inserts at a steady rate, each stamped with the monotonic clock at its write,
// through better-sqlite3 (synchronous FULL, SQLite's default, or NORMAL) or through a sqlite3 shell, as the quick
// start writes.

import { spawn } from "node:child_process";
import Database from "better-sqlite3";
import { nowNs, report, sleepSync, waitUntil } from "./workload.js";

const { dbPath, table, count, perSecond, startAtNs, writer } = JSON.parse(process.argv[2]!) as {
  dbPath: string;
  table: string;
  count: number;
  perSecond: number;
  startAtNs: string;
  /** "FULL": better-sqlite3 left at SQLite's default; "NORMAL": synchronous = NORMAL; "shell": the sqlite3 shell */
  writer: "FULL" | "NORMAL" | "shell";
};

const pad = "x".repeat(32);
let write: (id: number, ns: bigint) => void;
let finish: () => Promise<void>;
if (writer === "shell") {
  // One shell for the whole run, fed a statement a line (the shell's process start is not marmot's latency); it
  // leaves synchronous at its default, as `sqlite3 db "INSERT ..."` does.
  const shell = spawn("sqlite3", ["-batch", "-bail", "-cmd", ".timeout 30000", dbPath], { stdio: ["pipe", "ignore", "inherit"] });
  const exited = new Promise<number | null>((resolve) => shell.once("exit", resolve));
  write = (id, ns) => shell.stdin.write(`INSERT INTO "${table}" (id, written_ns, pad) VALUES (${id}, ${ns}, '${pad}');\n`);
  finish = async () => {
    shell.stdin.end(".quit\n");
    const code = await exited;
    if (code !== 0) throw new Error(`the sqlite3 shell exited with code ${code}`);
  };
} else {
  const db = new Database(dbPath, { timeout: 30_000 });
  db.pragma("busy_timeout = 30000");
  db.pragma(`synchronous = ${writer}`);
  const insert = db.prepare(`INSERT INTO "${table}" (id, written_ns, pad) VALUES (?, ?, ?)`);
  write = (id, ns) => insert.run(id, ns, pad);
  finish = async () => void db.close();
}
const periodNs = BigInt(Math.round(1e9 / perSecond));
const start = BigInt(startAtNs);
process.stdout.write("ready\n");
await waitUntil(start);
let late = 0;
for (let i = 1; i <= count; i++) {
  const due = start + BigInt(i - 1) * periodNs;
  const wait = Number(due - nowNs()) / 1e6;
  if (wait > 3) await new Promise((r) => setTimeout(r, wait - 2));
  const left = Number(due - nowNs()) / 1e6;
  if (left > 0) sleepSync(left);
  else if (left < -5) late++;
  write(i, nowNs());
}
await finish();
report({ written: count, late });
