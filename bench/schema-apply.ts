// What applying another node's table change costs here: ADD COLUMN (no copy) against a rebuild (one copy of the
// table inside the apply transaction, during which the app's writes wait).
//
// node dist/bench/schema-apply.js [--rows 1000000]

import { execFileSync } from "node:child_process";
import { join } from "node:path";
import Database from "better-sqlite3";
import { silentLogger } from "../src/log.js";
import { applySchemaChanges } from "../src/sqlite/schema-apply.js";
import type { SchemaChange } from "../src/wire/schema-message.js";
import { removeTempDirs, tempDir } from "../test/helpers/sqlite.js";
import { positiveIntegerOption as option } from "./options.js";

const TABLE = "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB)";

/** A file the sqlite3 CLI filled with `rows` rows and an index, as an app would have. */
function filledFile(rows: number): string {
  const path = join(tempDir("marmot-bench-"), "schema.db");
  execFileSync("sqlite3", [
    path,
    `${TABLE}; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${rows}) ` +
      "INSERT INTO t SELECT i, 'text ' || i, i * 0.5, randomblob(32) FROM n; CREATE INDEX t_a ON t (a);",
  ]);
  return path;
}

function timed(path: string, change: SchemaChange): number {
  const db = new Database(path);
  try {
    const started = performance.now();
    db.transaction(() => applySchemaChanges(db, [change], silentLogger))();
    return (performance.now() - started) / 1000;
  } finally {
    db.close();
  }
}

const rows = option("--rows", 1_000_000);
try {
  const path = filledFile(rows);
  const added = timed(path, { type: "table", name: "t", tblName: "t", sql: TABLE.replace(")", ", d INTEGER DEFAULT 0)") });
  const rebuilt = timed(path, {
    type: "table",
    name: "t",
    tblName: "t",
    sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b REAL, c BLOB, d INTEGER DEFAULT 0)",
  });
  console.log(`schema apply on a ${rows}-row table (4 columns, one index): ADD COLUMN ${added.toFixed(3)} s, rebuild ${rebuilt.toFixed(2)} s`);
} finally {
  removeTempDirs();
}
