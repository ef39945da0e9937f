// E1's app: holds the database's write lock in a transaction for `holdMs`, lets go for `restMs`, again and again.

import Database from "better-sqlite3";
import { nowNs, report, sleepSync, waitUntil } from "./workload.js";

const { dbPath, holdMs, restMs, durationMs, startAtNs } = JSON.parse(process.argv[2]!) as {
  dbPath: string;
  holdMs: number;
  restMs: number;
  durationMs: number;
  startAtNs: string;
};
const db = new Database(dbPath, { timeout: 30_000 });
db.pragma("busy_timeout = 30000");
process.stdout.write("ready\n");
await waitUntil(BigInt(startAtNs));
const end = nowNs() + BigInt(durationMs) * 1_000_000n;
let holds = 0;
while (nowNs() < end) {
  db.exec("BEGIN IMMEDIATE");
  // A long transaction of the app: its thread is busy (here: asleep) while it keeps the lock.
  sleepSync(holdMs);
  db.exec("COMMIT");
  holds++;
  await new Promise((r) => setTimeout(r, restMs));
}
db.close();
report({ holds });
