// T2's app on one node: autocommit inserts of its own rows and updates of shared rows, as fast as they go.

import Database from "better-sqlite3";
import { nowNs, report, waitUntil } from "./workload.js";

const { dbPath, table, node, durationMs, seedRows, startAtNs } = JSON.parse(process.argv[2]!) as {
  dbPath: string;
  table: string;
  node: number;
  durationMs: number;
  seedRows: number;
  startAtNs: string;
};
const db = new Database(dbPath, { timeout: 30_000 });
db.pragma("busy_timeout = 30000");
// What most WAL apps set: commits do not wait for fsync (a power loss may drop the last ones, never corrupt).
db.pragma("synchronous = NORMAL");
const insert = db.prepare(`INSERT INTO "${table}" (id, v, by_node, at) VALUES (?, ?, ?, ?)`);
const update = db.prepare(`UPDATE "${table}" SET v = ?, by_node = ?, at = ? WHERE id = ?`);
let inserts = 0;
let updates = 0;
let busyErrors = 0;
process.stdout.write("ready\n");
await waitUntil(BigInt(startAtNs));
const startNs = nowNs();
const endAt = startNs + BigInt(durationMs) * 1_000_000n;
let seed = node * 7919;
for (let i = 0; ; i++) {
  const now = nowNs();
  if (now >= endAt) break;
  try {
    if (i % 3 === 2) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      update.run(`n${node}-${i}`, node, now, (seed % seedRows) + 1);
      updates++;
    } else {
      insert.run(node * 1_000_000_000 + i, `row ${i} of node ${node}`, node, now);
      inserts++;
    }
  } catch (err) {
    if ((err as { code?: string }).code !== "SQLITE_BUSY") throw err;
    busyErrors++;
  }
}
const endNs = nowNs();
db.close();
const cpu = process.cpuUsage();
report({ node, inserts, updates, busyErrors, startNs, endNs, cpuSeconds: (cpu.user + cpu.system) / 1e6 });
