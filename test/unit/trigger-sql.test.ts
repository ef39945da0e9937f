// The generated change-log DDL and triggers install on awkward schemas and log exactly the row changes made.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { join } from "node:path";
import Database from "better-sqlite3";
import { SchemaError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { changeLogTable, LOG_ID_COLUMN } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { quoteIdent } from "../../src/sqlite/quote.js";
import { readSchema, rowidAlias } from "../../src/sqlite/schema.js";
import type { TableInfo } from "../../src/sqlite/table.js";
import { captureTriggers, changeLogColumns, createChangeLogSql } from "../../src/sqlite/trigger-sql.js";
import { removeTempDirs, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

type Row = Record<string, unknown>;

/** marmot's connection and an app connection on one fresh file holding `schema`. */
function setup(schema: string): { marmot: Database.Database; app: Database.Database; close: () => void } {
  const path = join(tempDir(), "db.sqlite");
  const app = new Database(path);
  app.defaultSafeIntegers(true);
  app.exec(schema);
  const marmot = openDatabase(path, silentLogger);
  return {
    marmot,
    app,
    close: () => {
      app.close();
      marmot.close();
    },
  };
}

function logRows(db: Database.Database, table: string): Row[] {
  const rows = db.prepare(`SELECT * FROM ${quoteIdent(changeLogTable(table))} ORDER BY ${quoteIdent(LOG_ID_COLUMN)}`).all() as Row[];
  for (const row of rows) delete row[LOG_ID_COLUMN];
  return rows;
}

function table(db: Database.Database, name: string): TableInfo {
  const found = readSchema(db).tables.find((t) => t.name === name);
  assert.ok(found, `table ${name} is captured`);
  return found;
}

describe("generated capture SQL", () => {
  it("logs a composite key in primary-key order, and a key change as delete(old) then upsert(new)", () => {
    const { marmot, app, close } = setup("CREATE TABLE orders (region TEXT, num INTEGER, note, PRIMARY KEY (num, region))");
    try {
      installCapture(marmot, silentLogger);
      assert.deepEqual(table(marmot, "orders").keyColumns, ["num", "region"]);
      app.prepare("INSERT INTO orders VALUES (?, ?, ?)").run("eu", 1n, "first");
      app.prepare("UPDATE orders SET note = ? WHERE num = ?").run("edited", 1n);
      app.prepare("UPDATE orders SET region = ? WHERE num = ?").run("us", 1n);
      app.prepare("DELETE FROM orders").run();
      assert.deepEqual(logRows(marmot, "orders"), [
        { __marmot_op: "upsert", v_region: "eu", v_num: 1n, v_note: "first" },
        { __marmot_op: "upsert", v_region: "eu", v_num: 1n, v_note: "edited" },
        { __marmot_op: "delete", v_region: "eu", v_num: 1n, v_note: null },
        { __marmot_op: "upsert", v_region: "us", v_num: 1n, v_note: "edited" },
        { __marmot_op: "delete", v_region: "us", v_num: 1n, v_note: null },
      ]);
    } finally {
      close();
    }
  });

  it("logs a table without a primary key by rowid", () => {
    const { marmot, app, close } = setup("CREATE TABLE notes (body, tag)");
    try {
      installCapture(marmot, silentLogger);
      const info = table(marmot, "notes");
      assert.equal(info.rowidKeyed, true);
      assert.deepEqual(info.keyColumns, ["rowid"]);
      app.prepare("INSERT INTO notes VALUES (?, ?)").run("hello", "a");
      app.prepare("UPDATE notes SET tag = ?").run("b");
      app.prepare("UPDATE notes SET rowid = ?").run(9n);
      app.prepare("DELETE FROM notes").run();
      assert.deepEqual(logRows(marmot, "notes"), [
        { __marmot_op: "upsert", __marmot_rowid: 1n, v_body: "hello", v_tag: "a" },
        { __marmot_op: "upsert", __marmot_rowid: 1n, v_body: "hello", v_tag: "b" },
        { __marmot_op: "delete", __marmot_rowid: 1n, v_body: null, v_tag: null },
        { __marmot_op: "upsert", __marmot_rowid: 9n, v_body: "hello", v_tag: "b" },
        { __marmot_op: "delete", __marmot_rowid: 9n, v_body: null, v_tag: null },
      ]);
    } finally {
      close();
    }
  });

  it("works with quotes, keywords, spaces and unicode in table and column names", () => {
    const name = 'we"ird select ✓';
    const { marmot, app, close } = setup(
      `CREATE TABLE ${quoteIdent(name)} ("select" INTEGER PRIMARY KEY, "we""ird col" TEXT, "with space", "ünï😀", "new")`,
    );
    try {
      installCapture(marmot, silentLogger);
      const insert = app.prepare(`INSERT INTO ${quoteIdent(name)} VALUES (?, ?, ?, ?, ?)`);
      insert.run(1n, "a'b", "c d", "ü", "n");
      app.prepare(`UPDATE ${quoteIdent(name)} SET "select" = 2, "ünï😀" = NULL`).run();
      app.prepare(`DELETE FROM ${quoteIdent(name)}`).run();
      assert.deepEqual(logRows(marmot, name), [
        { __marmot_op: "upsert", v_select: 1n, 'v_we"ird col': "a'b", "v_with space": "c d", "v_ünï😀": "ü", v_new: "n" },
        { __marmot_op: "delete", v_select: 1n, 'v_we"ird col': null, "v_with space": null, "v_ünï😀": null, v_new: null },
        { __marmot_op: "upsert", v_select: 2n, 'v_we"ird col': "a'b", "v_with space": "c d", "v_ünï😀": null, v_new: "n" },
        { __marmot_op: "delete", v_select: 2n, 'v_we"ird col': null, "v_with space": null, "v_ünï😀": null, v_new: null },
      ]);
    } finally {
      close();
    }
  });

  it("reaches the real rowid when columns named rowid or _rowid_ hide it", () => {
    const { marmot, app, close } = setup('CREATE TABLE one ("rowid" TEXT, x); CREATE TABLE two ("ROWID", "_rowid_", x)');
    try {
      installCapture(marmot, silentLogger);
      assert.equal(rowidAlias(table(marmot, "one")), "_rowid_");
      assert.equal(rowidAlias(table(marmot, "two")), "oid");
      app.prepare("INSERT INTO one (rowid, x) VALUES (?, ?)").run("not the rowid", 1n);
      app.prepare("INSERT INTO two (oid, rowid, _rowid_, x) VALUES (?, ?, ?, ?)").run(42n, "r", "rr", 2n);
      assert.deepEqual(logRows(marmot, "one"), [{ __marmot_op: "upsert", __marmot_rowid: 1n, v_rowid: "not the rowid", v_x: 1n }]);
      assert.deepEqual(logRows(marmot, "two"), [
        { __marmot_op: "upsert", __marmot_rowid: 42n, v_ROWID: "r", v__rowid_: "rr", v_x: 2n },
      ]);
    } finally {
      close();
    }
  });

  it("refuses, naming the table, a table without primary key whose columns hide every name of the rowid", () => {
    const { marmot, close } = setup('CREATE TABLE hidden ("rowid", "_rowid_", "oid")');
    try {
      assert.throws(() => installCapture(marmot, silentLogger), (err: unknown) => {
        assert.ok(err instanceof SchemaError);
        assert.match(err.message, /"hidden"/);
        return true;
      });
    } finally {
      close();
    }
  });

  it("puts no value in the SQL text besides the op literals, and SQLite keeps the trigger text unchanged", () => {
    const { marmot, close } = setup("CREATE TABLE t (id INTEGER PRIMARY KEY, a DEFAULT 'x', b REAL DEFAULT 1.5)");
    try {
      installCapture(marmot, silentLogger);
      const info = table(marmot, "t");
      assert.deepEqual(changeLogColumns(info), ["__marmot_id", "__marmot_op", "v_id", "v_a", "v_b"]);
      assert.doesNotMatch(createChangeLogSql(info), /'/);
      for (const trigger of captureTriggers(info)) {
        const literals = trigger.sql.match(/'[^']*'/g) ?? [];
        assert.ok(literals.every((literal) => literal === "'upsert'" || literal === "'delete'"), trigger.sql);
        const stored = marmot.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?").get(trigger.name) as
          | { sql: string }
          | undefined;
        assert.equal(stored?.sql, trigger.sql);
      }
    } finally {
      close();
    }
  });

  it("re-logs the current state of rows with pending changes when a table gains a column", () => {
    const { marmot, app, close } = setup(
      'CREATE TABLE notes ("rowid" TEXT, body); CREATE TABLE pairs (a TEXT, b INTEGER, x, PRIMARY KEY (b, a));',
    );
    try {
      installCapture(marmot, silentLogger);
      app.exec(
        "INSERT INTO notes (_rowid_, rowid, body) VALUES (5, 'r5', 'kept'), (6, 'r6', 'gone'); DELETE FROM notes WHERE _rowid_ = 6;" +
          "INSERT INTO pairs VALUES ('k', 1, 'x1'), ('k', 2, 'x2'); UPDATE pairs SET x = 'x1b' WHERE b = 1;" +
          "ALTER TABLE notes ADD COLUMN tag DEFAULT 'new'; ALTER TABLE pairs ADD COLUMN y DEFAULT 0;",
      );
      installCapture(marmot, silentLogger);
      assert.deepEqual(logRows(marmot, "notes").slice(3), [
        { __marmot_op: "upsert", __marmot_rowid: 5n, v_rowid: "r5", v_body: "kept", v_tag: "new" },
      ]);
      assert.deepEqual(logRows(marmot, "pairs").slice(3), [
        { __marmot_op: "upsert", v_a: "k", v_b: 1n, v_x: "x1b", v_y: 0n },
        { __marmot_op: "upsert", v_a: "k", v_b: 2n, v_x: "x2", v_y: 0n },
      ]);
    } finally {
      close();
    }
  });

  it("captures a table with generated columns without them (they cannot be written)", () => {
    const { marmot, app, close } = setup("CREATE TABLE g (id INTEGER PRIMARY KEY, a INTEGER, doubled INTEGER AS (a * 2))");
    try {
      installCapture(marmot, silentLogger);
      assert.deepEqual(
        table(marmot, "g").columns.map((c) => c.name),
        ["id", "a"],
      );
      app.prepare("INSERT INTO g (id, a) VALUES (?, ?)").run(1n, 21n);
      assert.deepEqual(logRows(marmot, "g"), [{ __marmot_op: "upsert", v_id: 1n, v_a: 21n }]);
    } finally {
      close();
    }
  });
});
