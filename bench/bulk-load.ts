// T1's app: inserts the bulk rows into one node's database in a single transaction, as a batch job would.

import Database from "better-sqlite3";
import { bulkInsertSql, bulkRow, nowNs, report } from "./workload.js";

const { dbPath, table, rows, offset = 0 } = JSON.parse(process.argv[2]!) as { dbPath: string; table: string; rows: number; offset?: number };
const db = new Database(dbPath, { timeout: 30_000 });
db.pragma("busy_timeout = 30000");
const insert = db.prepare(bulkInsertSql(table));
const startNs = nowNs();
db.transaction(() => {
  for (let i = offset; i < offset + rows; i++) insert.run(bulkRow(i));
})();
const committedNs = nowNs();
db.close();
const cpu = process.cpuUsage();
report({ startNs, committedNs, cpuSeconds: (cpu.user + cpu.system) / 1e6 });
