// L1's app: single-row autocommit inserts at a steady rate, each stamped with the monotonic clock at its write.

import Database from "better-sqlite3";
import { nowNs, report, sleepSync, waitUntil } from "./workload.js";

const { dbPath, table, count, perSecond, startAtNs, synchronous } = JSON.parse(process.argv[2]!) as {
  dbPath: string;
  table: string;
  count: number;
  perSecond: number;
  startAtNs: string;
  /** "FULL" (SQLite's default, kept as an app that never sets it) or "NORMAL" */
  synchronous: "FULL" | "NORMAL";
};
const db = new Database(dbPath, { timeout: 30_000 });
db.pragma("busy_timeout = 30000");
db.pragma(`synchronous = ${synchronous}`);
const insert = db.prepare(`INSERT INTO "${table}" (id, written_ns, pad) VALUES (?, ?, ?)`);
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
  insert.run(i, nowNs(), "x".repeat(32));
}
db.close();
report({ written: count, late });
