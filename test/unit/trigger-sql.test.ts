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
        { __marmot_op: "upsert", v_num: 1n, v_region: "eu" },
        { __marmot_op: "upsert", v_num: 1n, v_region: "eu" },
        { __marmot_op: "delete", v_num: 1n, v_region: "eu" },
        { __marmot_op: "upsert", v_num: 1n, v_region: "us" },
        { __marmot_op: "delete", v_num: 1n, v_region: "us" },
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
        { __marmot_op: "upsert", __marmot_rowid: 1n },
        { __marmot_op: "upsert", __marmot_rowid: 1n },
        { __marmot_op: "delete", __marmot_rowid: 1n },
        { __marmot_op: "upsert", __marmot_rowid: 9n },
        { __marmot_op: "delete", __marmot_rowid: 9n },
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
        { __marmot_op: "upsert", v_select: 1n },
        { __marmot_op: "delete", v_select: 1n },
        { __marmot_op: "upsert", v_select: 2n },
        { __marmot_op: "delete", v_select: 2n },
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
      assert.deepEqual(logRows(marmot, "one"), [{ __marmot_op: "upsert", __marmot_rowid: 1n }]);
      assert.deepEqual(logRows(marmot, "two"), [{ __marmot_op: "upsert", __marmot_rowid: 42n }]);
    } finally {
      close();
    }
  });

  it("refuses, naming the table, a table without primary key whose columns hide every name of the rowid", () => {
    const { marmot, close } = setup('CREATE TABLE hidden ("rowid", "_rowid_", "oid")');
    try {
      assert.throws(
        () => installCapture(marmot, silentLogger),
        (err: unknown) => {
          assert.ok(err instanceof SchemaError);
          assert.match(err.message, /"hidden"/);
          return true;
        },
      );
    } finally {
      close();
    }
  });

  it("puts no value in the SQL text besides the op literals, and SQLite keeps the trigger text unchanged", () => {
    const { marmot, close } = setup("CREATE TABLE t (id INTEGER PRIMARY KEY, a DEFAULT 'x', b REAL DEFAULT 1.5)");
    try {
      installCapture(marmot, silentLogger);
      const info = table(marmot, "t");
      assert.deepEqual(changeLogColumns(info), ["__marmot_id", "__marmot_op", "v_id"]);
      assert.doesNotMatch(createChangeLogSql(info), /'/);
      for (const trigger of captureTriggers(info)) {
        const literals = trigger.sql.match(/'[^']*'/g) ?? [];
        assert.ok(
          literals.every((literal) => literal === "'upsert'" || literal === "'delete'"),
          trigger.sql,
        );
        const stored = marmot.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?").get(trigger.name) as
          | { sql: string }
          | undefined;
        assert.equal(stored?.sql, trigger.sql);
      }
    } finally {
      close();
    }
  });

  it("names no column but the key in a trigger: the app's DROP COLUMN, RENAME COLUMN and ADD COLUMN work and capture goes on", () => {
    const { marmot, app, close } = setup("CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT, legacy TEXT, n INTEGER)");
    try {
      installCapture(marmot, silentLogger);
      app.exec(
        "INSERT INTO books VALUES (1, 't1', 'old', 1);" +
          "ALTER TABLE books DROP COLUMN legacy; INSERT INTO books VALUES (2, 't2', 2);" +
          "ALTER TABLE books RENAME COLUMN n TO pages; UPDATE books SET pages = 20 WHERE id = 2;" +
          "ALTER TABLE books ADD COLUMN isbn TEXT; INSERT INTO books VALUES (3, 't3', 3, 'x-3');" +
          "ALTER TABLE books RENAME COLUMN id TO book_id; INSERT INTO books VALUES (4, 't4', 4, 'x-4'); DELETE FROM books WHERE book_id = 1;",
      );
      assert.deepEqual(logRows(marmot, "books"), [
        { __marmot_op: "upsert", v_id: 1n },
        { __marmot_op: "upsert", v_id: 2n },
        { __marmot_op: "upsert", v_id: 2n },
        { __marmot_op: "upsert", v_id: 3n },
        { __marmot_op: "upsert", v_id: 4n },
        { __marmot_op: "delete", v_id: 1n },
      ]);
      // The next look renames the log's key column after the table's and keeps the pending changes.
      installCapture(marmot, silentLogger);
      app.exec("UPDATE books SET title = 'T4' WHERE book_id = 4");
      assert.deepEqual(
        logRows(marmot, "books").map((row) => row.v_book_id),
        [1n, 2n, 2n, 3n, 4n, 1n, 4n],
      );
    } finally {
      close();
    }
  });

  it("converts a change log an earlier marmot made with every value: pending changes keep their key", () => {
    const { marmot, app, close } = setup("CREATE TABLE pairs (a TEXT, b INTEGER, x, PRIMARY KEY (b, a)); CREATE TABLE notes (body)");
    try {
      installCapture(marmot, silentLogger);
      // The change log and triggers as a marmot before key-only capture made them, with pending changes in them.
      const pairsLog = quoteIdent(changeLogTable("pairs"));
      const notesLog = quoteIdent(changeLogTable("notes"));
      app.exec(
        `ALTER TABLE ${pairsLog} ADD COLUMN v_x; ALTER TABLE ${notesLog} ADD COLUMN v_body;` +
          `DROP TRIGGER "__marmot__pairs_insert";` +
          `CREATE TRIGGER "__marmot__pairs_insert" AFTER INSERT ON pairs FOR EACH ROW WHEN NOT EXISTS (SELECT 1 FROM "__marmot__applying") ` +
          `BEGIN INSERT INTO ${pairsLog} ("__marmot_op", v_a, v_b, v_x) VALUES ('upsert', NEW.a, NEW.b, NEW.x); END;` +
          `INSERT INTO pairs VALUES ('k', 1, 'x1'); DELETE FROM pairs WHERE b = 1; INSERT INTO pairs VALUES ('k', 2, 'x2');` +
          `INSERT INTO ${notesLog} ("__marmot_op", "__marmot_rowid", v_body) VALUES ('upsert', 7, 'seven');`,
      );
      assert.equal(logRows(marmot, "pairs").length, 3);
      installCapture(marmot, silentLogger);
      assert.deepEqual(logRows(marmot, "pairs"), [
        { __marmot_op: "upsert", v_b: 1n, v_a: "k" },
        { __marmot_op: "delete", v_b: 1n, v_a: "k" },
        { __marmot_op: "upsert", v_b: 2n, v_a: "k" },
      ]);
      assert.deepEqual(logRows(marmot, "notes"), [{ __marmot_op: "upsert", __marmot_rowid: 7n }]);
      for (const trigger of captureTriggers(table(marmot, "pairs"))) {
        assert.equal(marmot.prepare("SELECT sql FROM sqlite_master WHERE name = ?").pluck(true).get(trigger.name), trigger.sql);
      }
      app.exec("INSERT INTO pairs VALUES ('k', 3, 'x3')");
      assert.deepEqual(logRows(marmot, "pairs").at(-1), { __marmot_op: "upsert", v_b: 3n, v_a: "k" });
    } finally {
      close();
    }
  });

  it("logs the key of a row a UNIQUE clash removes, before the write; the app can still rename the unique column and drop others", () => {
    const { marmot, app, close } = setup("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, nick TEXT, note TEXT, UNIQUE (nick, note))");
    try {
      installCapture(marmot, silentLogger);
      app.exec(
        "INSERT INTO users VALUES (1, 'a', 'n1', 'x'), (2, 'b', 'n2', 'x');" +
          "INSERT OR REPLACE INTO users VALUES (3, 'a', 'n3', 'x');" +
          "UPDATE OR REPLACE users SET nick = 'n2' WHERE id = 3;" +
          "UPDATE users SET note = 'y' WHERE id = 3; INSERT OR IGNORE INTO users VALUES (4, 'a', 'n4', 'z');",
      );
      assert.deepEqual(
        logRows(marmot, "users").map((row) => `${row.__marmot_op} ${row.v_id}`),
        ["upsert 1", "upsert 2", "upsert 1", "upsert 3", "upsert 2", "upsert 3", "upsert 3", "upsert 3"],
      );
      assert.equal(app.prepare("SELECT group_concat(id) FROM users").pluck(true).get(), "3");
      app.exec(
        "ALTER TABLE users RENAME COLUMN email TO mail; ALTER TABLE users ADD COLUMN extra; INSERT OR REPLACE INTO users (id, mail, nick, note) VALUES (5, 'a', 'n5', 'q');",
      );
      assert.deepEqual(
        logRows(marmot, "users")
          .slice(-2)
          .map((row) => `${row.__marmot_op} ${row.v_id}`),
        ["upsert 3", "upsert 5"],
      );
      app.exec("ALTER TABLE users DROP COLUMN extra");
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
      assert.deepEqual(logRows(marmot, "g"), [{ __marmot_op: "upsert", v_id: 1n }]);
    } finally {
      close();
    }
  });
});
