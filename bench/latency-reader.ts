// L1's reader on another node: polls a read connection every few hundred microseconds and times each row's arrival.

import Database from "better-sqlite3";
import { nowNs, report, sleepSync } from "./workload.js";

const {
  dbPath,
  table,
  count,
  timeoutMs,
  pollMs = 0.25,
} = JSON.parse(process.argv[2]!) as {
  dbPath: string;
  table: string;
  count: number;
  timeoutMs: number;
  pollMs?: number;
};
const db = new Database(dbPath, { timeout: 30_000 });
db.defaultSafeIntegers(true);
const select = db.prepare(`SELECT id, written_ns FROM "${table}" WHERE id > ? ORDER BY id`).raw(true);
const latenciesMs: number[] = [];
let last = 0n;
let polls = 0;
process.stdout.write("ready\n");
const deadline = nowNs() + BigInt(timeoutMs) * 1_000_000n;
while (latenciesMs.length < count && nowNs() < deadline) {
  const rows = select.all(last) as [bigint, bigint][];
  const seen = nowNs();
  polls++;
  for (const [id, writtenNs] of rows) {
    latenciesMs.push(Number(seen - writtenNs) / 1e6);
    last = id;
  }
  // Sleep rather than spin: a spinning reader would take a core from marmot on a small machine.
  sleepSync(pollMs);
}
db.close();
report({ latenciesMs, polls });
