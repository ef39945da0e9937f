// O1 and the SQLite ceiling: the app's insert rate on a table with marmot's capture triggers against one without.

import { join } from "node:path";
import Database from "better-sqlite3";
import { silentLogger } from "../src/log.js";
import { installCapture } from "../src/sqlite/capture.js";
import { bulkInsertSql, bulkRow, bulkTableSql, nowNs } from "./workload.js";

export interface InsertRates {
  /** rows/s of one transaction of `rows` inserts */
  bulkRowsPerSec: number;
  /** rows/s of single-row autocommit inserts (synchronous = NORMAL) */
  autocommitRowsPerSec: number;
}

export interface OverheadRun {
  plain: InsertRates;
  captured: InsertRates;
}

function createDatabase(path: string, capture: boolean): void {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.exec(bulkTableSql("bulk") + bulkTableSql("auto"));
  if (capture) installCapture(db, silentLogger);
  db.close();
}

function measureRates(path: string, rows: number, autocommitRows: number): InsertRates {
  // The app's own connection, as it would open it: no marmot settings.
  const db = new Database(path);
  db.pragma("synchronous = NORMAL");
  const bulk = db.prepare(bulkInsertSql("bulk"));
  let start = nowNs();
  db.transaction(() => {
    for (let i = 0; i < rows; i++) bulk.run(bulkRow(i));
  })();
  const bulkSeconds = Number(nowNs() - start) / 1e9;
  const auto = db.prepare(bulkInsertSql("auto"));
  start = nowNs();
  for (let i = 0; i < autocommitRows; i++) auto.run(bulkRow(i));
  const autoSeconds = Number(nowNs() - start) / 1e9;
  db.close();
  return { bulkRowsPerSec: rows / bulkSeconds, autocommitRowsPerSec: autocommitRows / autoSeconds };
}

/** Alternates plain and captured databases `runs` times, each on fresh files in `dir`. */
export function measureOverhead(dir: string, rows: number, autocommitRows: number, runs: number): OverheadRun[] {
  const out: OverheadRun[] = [];
  for (let run = 0; run < runs; run++) {
    const plainPath = join(dir, `overhead-plain-${run}.db`);
    const capturedPath = join(dir, `overhead-captured-${run}.db`);
    createDatabase(plainPath, false);
    createDatabase(capturedPath, true);
    const plain = measureRates(plainPath, rows, autocommitRows);
    const captured = measureRates(capturedPath, rows, autocommitRows);
    out.push({ plain, captured });
  }
  return out;
}
