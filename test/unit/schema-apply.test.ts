// Applying a schema message to a database the sqlite3 CLI wrote: exact SQL text, rows kept through a rebuild.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import Database from "better-sqlite3";
import { applySchemaChanges } from "../../src/sqlite/schema-apply.js";
import { diffSchemaState, readSchemaState, recordSchemaState, ensureSchemaTables, storedSchemaState } from "../../src/sqlite/schema-state.js";
import type { TableFilter } from "../../src/sqlite/schema.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const USER_SCHEMA = "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite%' ORDER BY type, name";

function twoFiles(schema: string): [string, string] {
  const dir = tempDir();
  return [createDb(join(dir, "a.db"), schema), createDb(join(dir, "b.db"), schema)];
}

/** What `origin` changed since `before` (its recorded state), applied to `target`. */
function carry(originPath: string, targetPath: string, migrate: string, filter: TableFilter = {}): number {
  const origin = new Database(originPath);
  const target = new Database(targetPath);
  try {
    ensureSchemaTables(origin);
    recordSchemaState(origin, readSchemaState(origin, filter));
    const stored = storedSchemaState(origin);
    origin.close();
    sqlite3(originPath, migrate);
    const reopened = new Database(originPath);
    const changes = diffSchemaState(stored, readSchemaState(reopened, filter));
    reopened.close();
    return target.transaction(() => applySchemaChanges(target, changes, recordingLogger()))();
  } finally {
    if (origin.open) origin.close();
    target.close();
  }
}

const userSchema = (path: string) => sqlite3(path, USER_SCHEMA).replace(/^table\|__marmot__schema.*\n|^table\|__marmot__schema_outbox.*\n/gm, "");

test("DROP COLUMN, RENAME COLUMN and the twelve-step rebuild arrive as the origin's exact text; rows and rowids stay", () => {
  const schema = `CREATE TABLE t (a TEXT, b INTEGER, c BLOB);
    CREATE INDEX t_b ON t (b);
    CREATE TRIGGER t_guard BEFORE INSERT ON t WHEN NEW.a = '' BEGIN SELECT RAISE(ABORT, 'no'); END;
    CREATE VIEW v AS SELECT a FROM t;
    INSERT INTO t (rowid, a, b, c) VALUES (10, 'x', 1, x'00'), (-5, 'y', 9223372036854775807, NULL);`;
  const [a, b] = twoFiles(schema);
  carry(a, b, "ALTER TABLE t DROP COLUMN c; ALTER TABLE t RENAME COLUMN a TO name;");
  assert.equal(userSchema(b), userSchema(a));
  assert.equal(sqlite3(b, "SELECT rowid, b FROM t ORDER BY rowid"), "-5|9223372036854775807\n10|1\n");
  // rows of a renamed column are not copied by name: the origin sends every row of the table again
  assert.equal(sqlite3(b, "SELECT count(*) FROM t WHERE name IS NULL"), "2\n");

  carry(
    a,
    b,
    `BEGIN; DROP VIEW v; CREATE TABLE t2 (name TEXT NOT NULL, b INTEGER CHECK (b > 0)); INSERT INTO t2 SELECT name, b FROM t;
     DROP TABLE t; ALTER TABLE t2 RENAME TO t; CREATE INDEX t_b ON t (b); CREATE VIEW v AS SELECT name FROM t; COMMIT;`,
  );
  assert.equal(userSchema(b), userSchema(a));
});

test("RENAME COLUMN alone keeps the column's values on the other node (no row needs to travel)", () => {
  const [a, b] = twoFiles(
    "CREATE TABLE t (id INTEGER PRIMARY KEY, \"old name\" TEXT, n REAL CHECK (n >= 0)); INSERT INTO t VALUES (1, 'x', 0.5), (2, NULL, 2.25);",
  );
  carry(a, b, 'ALTER TABLE t RENAME COLUMN "old name" TO label; ALTER TABLE t RENAME COLUMN n TO weight;');
  assert.equal(userSchema(b), userSchema(a));
  assert.equal(sqlite3(b, "SELECT id, label, weight FROM t ORDER BY id"), "1|x|0.5\n2||2.25\n");
});

test("ADD COLUMN arrives as ADD COLUMN (no copy of the table), one or several at once", () => {
  const [a, b] = twoFiles("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');");
  sqlite3(b, "CREATE TRIGGER t_stays AFTER DELETE ON t BEGIN SELECT 1; END;");
  const rootpage = sqlite3(b, "SELECT rootpage FROM sqlite_schema WHERE name = 't'");
  carry(a, b, "ALTER TABLE t ADD COLUMN w TEXT DEFAULT 'a, b' NOT NULL;");
  assert.equal(sqlite3(b, "SELECT sql FROM sqlite_schema WHERE name = 't'"), sqlite3(a, "SELECT sql FROM sqlite_schema WHERE name = 't'"));
  assert.equal(sqlite3(b, "SELECT rootpage FROM sqlite_schema WHERE name = 't'"), rootpage, "the table was altered, not made again");
  assert.equal(sqlite3(b, "SELECT id, v, w FROM t"), "1|x|a, b\n");
  carry(a, b, "ALTER TABLE t ADD COLUMN p INTEGER; ALTER TABLE t ADD COLUMN q REAL DEFAULT 1.5;");
  assert.equal(sqlite3(b, "SELECT sql FROM sqlite_schema WHERE name = 't'"), sqlite3(a, "SELECT sql FROM sqlite_schema WHERE name = 't'"));
  assert.equal(sqlite3(b, "SELECT id, v, w, p, q FROM t"), "1|x|a, b||1.5\n");
  assert.equal(sqlite3(b, "SELECT count(*) FROM sqlite_schema WHERE name = 't_stays'"), "1\n");
});

test("an object already defined the same way is left alone; dropped objects go", () => {
  const [a, b] = twoFiles("CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE INDEX t_v ON t (v); CREATE VIEW w AS SELECT 1;");
  sqlite3(b, "CREATE TABLE extra (k TEXT PRIMARY KEY);");
  assert.equal(carry(a, b, "CREATE TABLE extra (k TEXT PRIMARY KEY); DROP INDEX t_v; DROP VIEW w;"), 2);
  assert.equal(userSchema(b), userSchema(a));
});

test("a changed table whose new definition refuses some old rows keeps the others", () => {
  const [a, b] = twoFiles("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 5), (2, -1);");
  sqlite3(b, "INSERT INTO t VALUES (3, 7);");
  carry(
    a,
    b,
    "BEGIN; CREATE TABLE n (id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)); INSERT INTO n SELECT * FROM t WHERE v > 0; DROP TABLE t; ALTER TABLE n RENAME TO t; COMMIT;",
  );
  assert.equal(userSchema(b), userSchema(a));
  assert.equal(sqlite3(b, "SELECT id, v FROM t ORDER BY id"), "1|5\n3|7\n");
});

test("a virtual table's CREATE travels and its module makes its shadow tables; an excluded table's changes stay", () => {
  const [a, b] = twoFiles("CREATE TABLE local_only (id INTEGER PRIMARY KEY, v TEXT);");
  const changed = carry(
    a,
    b,
    "CREATE VIRTUAL TABLE docs USING fts5(title, body); CREATE INDEX local_v ON local_only (v); ALTER TABLE local_only ADD COLUMN w;",
    { exclude: ["local_only"] },
  );
  assert.equal(changed, 1, "only the virtual table (its shadow tables come with it)");
  assert.equal(userSchema(b).replace(/^.*local_only.*\n/gm, ""), userSchema(a).replace(/^.*local_only.*\n/gm, ""));
  assert.equal(sqlite3(b, "SELECT sql FROM sqlite_schema WHERE name = 'local_only'"), "CREATE TABLE local_only (id INTEGER PRIMARY KEY, v TEXT)\n");
  assert.equal(sqlite3(b, "SELECT count(*) FROM sqlite_schema WHERE name = 'local_v'"), "0\n");
});
