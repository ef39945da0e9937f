// L1's reader on another node: looks every few hundred microseconds and times each row's arrival. A look is
// PRAGMA data_version (it changes as soon as another connection's commit is visible) and the query runs only then:
// querying at every look cost a tenth of a core that marmot and nats-server need on a small machine.

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
const dataVersion = db.prepare("PRAGMA data_version").pluck(true);
let version: unknown;
while (latenciesMs.length < count && nowNs() < deadline) {
  const now = dataVersion.get();
  if (now === version) {
    sleepSync(pollMs);
    continue;
  }
  version = now;
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
