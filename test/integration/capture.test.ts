// Capture on real files written by another process (the sqlite3 CLI, as an app would), and cleanup back to the original.

import assert from "node:assert/strict";
import { copyFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type Database from "better-sqlite3";
import { SchemaError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import { installCapture, schemaVersion } from "../../src/sqlite/capture.js";
import { ChangeLogReader } from "../../src/sqlite/change-log.js";
import { removeCapture } from "../../src/sqlite/cleanup.js";
import { APPLYING_TABLE, changeLogTable, LOG_ID_COLUMN } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { quoteIdent, quoteLiteral } from "../../src/sqlite/quote.js";
import { NOT_MARKER } from "../../src/sqlite/trigger-sql.js";
import { copyFixture, createDb, recordingLogger, removeTempDirs, sqldiff, sqlite3, sqlite3Async, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

type Row = Record<string, unknown>;

/** A database file created by the CLI with `schema`, and marmot's connection to it with capture installed. */
function captured(schema: string): { path: string; db: Database.Database } {
  const path = createDb(join(tempDir(), "app.sqlite"), schema);
  const db = openDatabase(path, silentLogger);
  installCapture(db, silentLogger);
  return { path, db };
}

/** The change log of `table`, oldest first, without the id column. */
function logOf(db: Database.Database, table: string): Row[] {
  const rows = db
    .prepare(`SELECT * FROM ${quoteIdent(changeLogTable(table))} WHERE ${NOT_MARKER} ORDER BY ${quoteIdent(LOG_ID_COLUMN)}`)
    .all() as Row[];
  for (const row of rows) delete row[LOG_ID_COLUMN];
  return rows;
}

/** The changes of `table` as the shipper would send them now: op and the row's values read from the table. */
function shippedOf(db: Database.Database, table: string): { op: string; values: unknown[] }[] {
  const reader = new ChangeLogReader(db);
  reader.setTables(installCapture(db, silentLogger).tables.filter((t) => t.name === table));
  return reader.read(10_000, 1 << 30).map((c) => ({ op: c.op, values: c.values }));
}

function objectsWithPrefix(path: string): string {
  return sqlite3(path, "SELECT type || ' ' || name FROM sqlite_master WHERE name LIKE '\\_\\_marmot%' ESCAPE '\\'").trim();
}

function triggerSql(db: Database.Database): Row[] {
  return db.prepare("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name").all() as Row[];
}

describe("capture of app writes", () => {
  it("ships every storage class exactly: 64-bit integers, REAL (also 1.0 and -0.0), any text, BLOBs, NULL", () => {
    const text = 'it\'s "quoted"\nsecond line\ttab 😀 ünïcødé 中文 e\u0301';
    const values: { literal: string; expected: unknown; storage: string }[] = [
      { literal: "9223372036854775807", expected: 9223372036854775807n, storage: "integer" },
      { literal: "-9223372036854775808", expected: -9223372036854775808n, storage: "integer" },
      { literal: "9007199254740993", expected: 9007199254740993n, storage: "integer" },
      { literal: "0", expected: 0n, storage: "integer" },
      { literal: "0.1", expected: 0.1, storage: "real" },
      { literal: "1.0", expected: 1, storage: "real" },
      { literal: "-0.0", expected: -0, storage: "real" },
      { literal: "1e308", expected: 1e308, storage: "real" },
      { literal: "4.9406564584124654e-324", expected: 5e-324, storage: "real" },
      { literal: quoteLiteral(text), expected: text, storage: "text" },
      { literal: "''", expected: "", storage: "text" },
      { literal: "X'00FF0000'", expected: Buffer.from([0, 255, 0, 0]), storage: "blob" },
      { literal: "X''", expected: Buffer.alloc(0), storage: "blob" },
      { literal: "NULL", expected: null, storage: "null" },
    ];
    const { path, db } = captured("CREATE TABLE vals (id INTEGER PRIMARY KEY, v)");
    try {
      sqlite3(path, values.map((value, i) => `INSERT INTO vals VALUES (${i + 1}, ${value.literal});`).join("\n"));
      const shipped = shippedOf(db, "vals");
      assert.equal(shipped.length, values.length);
      values.forEach((value, i) => {
        const [id, v] = shipped[i]!.values;
        assert.equal(id, BigInt(i + 1));
        assert.deepEqual(v, value.expected, `value ${value.literal}`);
        const storage = db
          .prepare("SELECT typeof(v) FROM vals WHERE id = ?")
          .pluck(true)
          .get(BigInt(i + 1)) as string;
        assert.equal(storage, value.storage, `storage class of ${value.literal}`);
        const kind =
          v === null ? "null" : typeof v === "bigint" ? "integer" : typeof v === "number" ? "real" : typeof v === "string" ? "text" : "blob";
        assert.equal(kind, storage, `what ships keeps the storage class of ${value.literal}`);
      });
    } finally {
      db.close();
    }
  });

  it("ships what a typed column stored: REAL affinity keeps 1 as REAL 1.0, INTEGER affinity turns 2.0 into 2", () => {
    const { path, db } = captured("CREATE TABLE typed (id INTEGER PRIMARY KEY, r REAL, i INTEGER, t TEXT)");
    try {
      sqlite3(path, "INSERT INTO typed VALUES (1, 1, 2.0, 42)");
      // A number is a REAL, a bigint an INTEGER: the wire keeps the two apart.
      assert.deepEqual(shippedOf(db, "typed"), [{ op: "upsert", values: [1n, 1, 2n, "42"] }]);
    } finally {
      db.close();
    }
  });

  it("logs each change by its key, a key change as delete(old) + upsert(new), and ships each row as it is now", () => {
    const { path, db } = captured("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)");
    try {
      sqlite3(path, "INSERT INTO items VALUES (1, 'pen', 3), (2, 'ink', 9007199254740993);");
      sqlite3(path, "UPDATE items SET qty = qty + 1 WHERE id = 1;");
      sqlite3(path, "UPDATE items SET id = 100 WHERE id = 2;");
      sqlite3(path, "DELETE FROM items WHERE id = 1;");
      assert.deepEqual(logOf(db, "items"), [
        { __marmot_op: "upsert", v_id: 1n },
        { __marmot_op: "upsert", v_id: 2n },
        { __marmot_op: "upsert", v_id: 1n },
        { __marmot_op: "delete", v_id: 2n },
        { __marmot_op: "upsert", v_id: 100n },
        { __marmot_op: "delete", v_id: 1n },
      ]);
      assert.deepEqual(
        shippedOf(db, "items").map((c) => [c.op, ...c.values]),
        [
          ["delete", 1n],
          ["delete", 2n],
          ["delete", 1n],
          ["delete", 2n],
          ["upsert", 100n, "ink", 9007199254740993n],
          ["delete", 1n],
        ],
      );
    } finally {
      db.close();
    }
  });

  it("captures a composite primary key in key order", () => {
    const { path, db } = captured("CREATE TABLE pt (a TEXT, b INTEGER, x, PRIMARY KEY (b, a))");
    try {
      const info = installCapture(db, silentLogger).tables.find((t) => t.name === "pt");
      assert.deepEqual(info?.keyColumns, ["b", "a"]);
      sqlite3(path, "INSERT INTO pt VALUES ('k', 1, 'x1'); UPDATE pt SET x = 'x2'; UPDATE pt SET a = 'j'; DELETE FROM pt;");
      assert.deepEqual(logOf(db, "pt"), [
        { __marmot_op: "upsert", v_a: "k", v_b: 1n },
        { __marmot_op: "upsert", v_a: "k", v_b: 1n },
        { __marmot_op: "delete", v_a: "k", v_b: 1n },
        { __marmot_op: "upsert", v_a: "j", v_b: 1n },
        { __marmot_op: "delete", v_a: "j", v_b: 1n },
      ]);
    } finally {
      db.close();
    }
  });

  it("captures a table without primary key by rowid, including a rowid change", () => {
    const { path, db } = captured("CREATE TABLE plain (x, y)");
    try {
      sqlite3(path, "INSERT INTO plain VALUES ('a', 1); UPDATE plain SET rowid = 7; DELETE FROM plain;");
      assert.deepEqual(logOf(db, "plain"), [
        { __marmot_op: "upsert", __marmot_rowid: 1n },
        { __marmot_op: "delete", __marmot_rowid: 1n },
        { __marmot_op: "upsert", __marmot_rowid: 7n },
        { __marmot_op: "delete", __marmot_rowid: 7n },
      ]);
    } finally {
      db.close();
    }
  });

  it("captures a WITHOUT ROWID table", () => {
    const { path, db } = captured("CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID");
    try {
      const info = installCapture(db, silentLogger).tables.find((t) => t.name === "kv");
      assert.equal(info?.withoutRowid, true);
      assert.equal(info?.rowidKeyed, false);
      sqlite3(path, "INSERT INTO kv VALUES ('a', 1); UPDATE kv SET v = 2; DELETE FROM kv;");
      assert.deepEqual(logOf(db, "kv"), [
        { __marmot_op: "upsert", v_k: "a" },
        { __marmot_op: "upsert", v_k: "a" },
        { __marmot_op: "delete", v_k: "a" },
      ]);
    } finally {
      db.close();
    }
  });

  it("logs the child rows an ON DELETE CASCADE removes", () => {
    const { path, db } = captured(
      "CREATE TABLE parent (id INTEGER PRIMARY KEY); " +
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent (id) ON DELETE CASCADE);",
    );
    try {
      sqlite3(path, "INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (11, 1), (12, 2);");
      sqlite3(path, "PRAGMA foreign_keys = ON; DELETE FROM parent WHERE id = 1;");
      assert.deepEqual(
        logOf(db, "parent").filter((row) => row.__marmot_op === "delete"),
        [{ __marmot_op: "delete", v_id: 1n }],
      );
      assert.deepEqual(
        logOf(db, "child").filter((row) => row.__marmot_op === "delete"),
        [
          { __marmot_op: "delete", v_id: 10n },
          { __marmot_op: "delete", v_id: 11n },
        ],
      );
    } finally {
      db.close();
    }
  });

  for (const trusted of [0, 1]) {
    it(`lets the app write with PRAGMA trusted_schema=${trusted} and logs those writes`, () => {
      const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, v)");
      try {
        sqlite3(path, `PRAGMA trusted_schema = ${trusted}; INSERT INTO t VALUES (1, 'a'); UPDATE t SET v = 'b'; DELETE FROM t;`);
        assert.deepEqual(logOf(db, "t"), [
          { __marmot_op: "upsert", v_id: 1n },
          { __marmot_op: "upsert", v_id: 1n },
          { __marmot_op: "delete", v_id: 1n },
        ]);
      } finally {
        db.close();
      }
    });
  }

  it("does not log marmot's own writes made under the applying marker, but logs the app's writes around them", async () => {
    const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, v)");
    try {
      db.exec("BEGIN IMMEDIATE");
      db.prepare(`INSERT INTO ${quoteIdent(APPLYING_TABLE)} VALUES (1)`).run();
      db.prepare("INSERT INTO t VALUES (?, ?)").run(1n, "replicated");
      db.prepare("UPDATE t SET v = ? WHERE id = ?").run("replicated again", 1n);
      // Another connection never sees the marker: it reads the last committed state.
      assert.equal(sqlite3(path, `SELECT count(*) FROM ${quoteIdent(APPLYING_TABLE)};`).trim(), "0");
      // The app's write waits for marmot's transaction, then runs without the marker.
      const appWrite = sqlite3Async(path, "INSERT INTO t VALUES (2, 'from the app');");
      await new Promise((resolve) => setTimeout(resolve, 200));
      db.prepare(`DELETE FROM ${quoteIdent(APPLYING_TABLE)}`).run();
      db.exec("COMMIT");
      await appWrite;
      assert.deepEqual(logOf(db, "t"), [{ __marmot_op: "upsert", v_id: 2n }]);
      assert.equal(sqlite3(path, "SELECT group_concat(v, '|') FROM t;").trim(), "replicated again|from the app");
    } finally {
      if (db.inTransaction) db.exec("ROLLBACK");
      db.close();
    }
  });
});

describe("what capture covers", () => {
  it("skips an FTS5 table with its reason, captures the tables beside it, and the FTS table still works", () => {
    const path = createDb(
      join(tempDir(), "app.sqlite"),
      "CREATE VIRTUAL TABLE docs USING fts5(body); CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);",
    );
    const logger = recordingLogger();
    const db = openDatabase(path, logger);
    try {
      const result = installCapture(db, logger);
      assert.deepEqual(
        result.tables.map((t) => t.name),
        ["notes"],
      );
      assert.deepEqual(
        result.skipped.find((s) => s.name === "docs"),
        { name: "docs", reason: "virtual table (fts5)" },
      );
      assert.ok(result.skipped.some((s) => s.name === "docs_data" && /shadow/.test(s.reason)));
      assert.ok(logger.lines.some((l) => l.level === "info" && l.message === 'not capturing table "docs": virtual table (fts5)'));

      sqlite3(path, "INSERT INTO docs VALUES ('marmots whistle'); INSERT INTO notes VALUES (1, 'hello');");
      assert.equal(sqlite3(path, "SELECT body FROM docs WHERE docs MATCH 'whistle';").trim(), "marmots whistle");
      assert.deepEqual(logOf(db, "notes"), [{ __marmot_op: "upsert", v_id: 1n }]);
      assert.equal(objectsWithPrefix(path).includes("docs"), false, "nothing marmot-made on the FTS tables");
    } finally {
      db.close();
    }
  });

  it("refuses a user table that uses the reserved prefix, naming it, and changes nothing", () => {
    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE __marmot_x (a); CREATE TABLE ok (a);");
    const db = openDatabase(path, silentLogger);
    try {
      assert.throws(
        () => installCapture(db, silentLogger),
        (err: unknown) => err instanceof SchemaError && err.message.includes('"__marmot_x"') && /rename it/.test(err.message),
      );
      assert.equal(objectsWithPrefix(path), "table __marmot_x");
    } finally {
      db.close();
    }
  });

  it("leaves excluded tables alone", () => {
    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE public (a); CREATE TABLE secret (a);");
    const db = openDatabase(path, silentLogger);
    try {
      const result = installCapture(db, silentLogger, { exclude: ["SECRET"] });
      assert.deepEqual(
        result.tables.map((t) => t.name),
        ["public"],
      );
      assert.deepEqual(result.skipped, [{ name: "secret", reason: "in the exclude list" }]);
      sqlite3(path, "INSERT INTO secret VALUES (1); INSERT INTO public VALUES (2);");
      assert.equal(logOf(db, "public").length, 1);
      assert.equal(objectsWithPrefix(path).includes("secret"), false);
    } finally {
      db.close();
    }
  });
});

describe("opening the database", () => {
  it("switches a rollback-journal database to WAL and says so", () => {
    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE t (a);");
    assert.equal(sqlite3(path, "PRAGMA journal_mode;").trim(), "delete");
    const logger = recordingLogger();
    const db = openDatabase(path, logger);
    db.close();
    assert.equal(sqlite3(path, "PRAGMA journal_mode;").trim(), "wal");
    assert.ok(logger.lines.some((l) => l.message === `switched ${path} to WAL journal mode (was delete)`));
  });

  it("refuses a file that is not a database", () => {
    const path = join(tempDir(), "notes.txt");
    writeFileSync(path, "this is not a database, just some text that is long enough to have a header".repeat(20));
    assert.throws(
      () => openDatabase(path, silentLogger),
      (err: unknown) => err instanceof SchemaError && err.message.includes(path),
    );
  });

  it("reads integers as bigint and leaves foreign key enforcement to the origin", () => {
    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE t (a INTEGER);");
    const db = openDatabase(path, silentLogger);
    try {
      assert.deepEqual(db.prepare("SELECT 9007199254740993 AS v").get(), { v: 9007199254740993n });
      assert.equal(db.pragma("foreign_keys", { simple: true }), 0n);
    } finally {
      db.close();
    }
  });
});

describe("keeping capture current", () => {
  it("is a no-op when nothing changed: same triggers, same schema version", () => {
    const { db } = captured("CREATE TABLE a (id INTEGER PRIMARY KEY, v); CREATE TABLE b (x, y);");
    try {
      const before = { triggers: triggerSql(db), version: schemaVersion(db), epoch: installCapture(db, silentLogger).epoch };
      const again = installCapture(db, silentLogger);
      assert.deepEqual(triggerSql(db), before.triggers);
      assert.equal(schemaVersion(db), before.version);
      assert.equal(again.epoch, before.epoch);
      assert.match(again.epoch, /^[0-9a-f]{16}$/);
      assert.equal(before.triggers.length, 8, "three capture triggers and the keep-last trigger of the log, per table");
    } finally {
      db.close();
    }
  });

  it("ships a column added later with the changes logged before it, and its value written before marmot's next look", () => {
    const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, v)");
    try {
      sqlite3(path, "INSERT INTO t VALUES (1, 'before');");
      sqlite3(path, "ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'd';");
      sqlite3(path, "INSERT INTO t (id, v, extra) VALUES (2, 'between', 'kept');");
      installCapture(db, silentLogger);
      sqlite3(path, "INSERT INTO t VALUES (3, 'after', 'e3');");
      assert.deepEqual(logOf(db, "t"), [
        { __marmot_op: "upsert", v_id: 1n },
        // Written before marmot noticed the new column: the triggers log only the key, so nothing is missed.
        { __marmot_op: "upsert", v_id: 2n },
        { __marmot_op: "upsert", v_id: 3n },
      ]);
      assert.deepEqual(
        shippedOf(db, "t").map((c) => c.values),
        [
          [1n, "before", "d"],
          [2n, "between", "kept"],
          [3n, "after", "e3"],
        ],
      );
    } finally {
      db.close();
    }
  });

  it("never hands out a change id twice: not after the log is rebuilt for a new column, nor after the table is dropped and created again", () => {
    const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, v)");
    const reader = new ChangeLogReader(db);
    const ship = (): number[] => {
      const changes = reader.read(100, 1 << 20);
      if (changes.length > 0) reader.removeUpTo(new Map([["t", Math.max(...changes.map((c) => c.changeId))]]));
      return changes.map((c) => c.changeId);
    };
    try {
      reader.setTables(installCapture(db, silentLogger).tables);
      sqlite3(path, "INSERT INTO t VALUES (1, 'a'), (2, 'b');");
      assert.deepEqual(ship(), [1, 2]);
      // The log is empty now, so marmot rebuilds it with the new column.
      sqlite3(path, "ALTER TABLE t ADD COLUMN extra;");
      reader.setTables(installCapture(db, silentLogger).tables);
      sqlite3(path, "INSERT INTO t VALUES (3, 'c', 'x');");
      assert.deepEqual(ship(), [3], "the change after the rebuild is read, under a new id");
      sqlite3(path, "DROP TABLE t;");
      reader.setTables(installCapture(db, silentLogger).tables);
      sqlite3(path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'again');");
      reader.setTables(installCapture(db, silentLogger).tables);
      sqlite3(path, "INSERT INTO t VALUES (2, 'and again');");
      assert.deepEqual(ship(), [4], "the table created again goes on from the ids of its earlier log");
    } finally {
      db.close();
    }
  });

  it("keeps change ids growing without AUTOINCREMENT, whichever way the newest change leaves the log", () => {
    const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, v)");
    const reader = new ChangeLogReader(db);
    const newest = () => Number(sqlite3(path, `SELECT max(${LOG_ID_COLUMN}) FROM ${changeLogTable("t")} WHERE ${NOT_MARKER};`));
    try {
      reader.setTables(installCapture(db, silentLogger).tables);
      const logSql = String(db.prepare("SELECT sql FROM sqlite_master WHERE name = ?").pluck().get(changeLogTable("t")));
      assert.doesNotMatch(logSql, /AUTOINCREMENT/);
      sqlite3(path, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');");
      reader.removeUpTo(new Map([["t", 3]]));
      assert.equal(reader.pendingCount(), 0, "the marker that keeps id 3 is not a pending change");
      sqlite3(path, "UPDATE t SET v = 'd' WHERE id = 1;");
      assert.equal(newest(), 4, "after the log emptied");
      // Another way out: the newest change taken out alone (as when it comes back from the stream), lower ones staying.
      sqlite3(path, "UPDATE t SET v = 'e' WHERE id = 2;");
      sqlite3(path, `DELETE FROM ${changeLogTable("t")} WHERE ${LOG_ID_COLUMN} = 5;`);
      sqlite3(path, "UPDATE t SET v = 'f' WHERE id = 3;");
      assert.equal(newest(), 6, "after the newest change left, with an older one still pending");
      assert.deepEqual(
        reader.read(100, 1 << 20).map((c) => [c.changeId, c.values[1]]),
        [
          [4, "d"],
          [6, "f"],
        ],
      );
    } finally {
      db.close();
    }
  });

  it("rebuilds a change log an earlier version made with AUTOINCREMENT once it is empty, its ids going on", () => {
    const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE u (id INTEGER PRIMARY KEY, v);");
    const logOfT = changeLogTable("t");
    const logOfU = changeLogTable("u");
    try {
      // The logs as the earlier version made them: ids from AUTOINCREMENT, 7 and 3 handed out; u has a change waiting.
      for (const log of [logOfT, logOfU]) {
        db.exec(
          `DROP TABLE ${quoteIdent(log)}; CREATE TABLE ${quoteIdent(log)} (__marmot_id INTEGER PRIMARY KEY AUTOINCREMENT, __marmot_op TEXT NOT NULL, v_id, v_v);`,
        );
      }
      sqlite3(path, "INSERT INTO t VALUES (1, 'a'); INSERT INTO u VALUES (1, 'waits');");
      sqlite3(path, `UPDATE sqlite_sequence SET seq = 7 WHERE name = '${logOfT}'; UPDATE sqlite_sequence SET seq = 3 WHERE name = '${logOfU}';`);
      sqlite3(path, `DELETE FROM ${quoteIdent(logOfT)};`);
      const logger = recordingLogger();
      installCapture(db, logger);
      assert.doesNotMatch(String(db.prepare("SELECT sql FROM sqlite_master WHERE name = ?").pluck().get(logOfT)), /AUTOINCREMENT/);
      assert.match(
        String(db.prepare("SELECT sql FROM sqlite_master WHERE name = ?").pluck().get(logOfU)),
        /AUTOINCREMENT/,
        "not while a change waits",
      );
      assert.ok(logger.lines.some((l) => l.message === 'rebuilt the change log of table "t" without AUTOINCREMENT'));
      sqlite3(path, "INSERT INTO t VALUES (2, 'b');");
      assert.equal(sqlite3(path, `SELECT max(__marmot_id) FROM ${quoteIdent(logOfT)};`).trim(), "8");
      assert.deepEqual(logOf(db, "u"), [{ __marmot_op: "upsert", v_id: 1n }]);
    } finally {
      db.close();
    }
  });

  it("follows a renamed column: the changes logged before the rename ship under the new name", () => {
    const { path, db } = captured("CREATE TABLE t (id INTEGER PRIMARY KEY, old_name)");
    try {
      sqlite3(path, "INSERT INTO t VALUES (1, 'pending');");
      sqlite3(path, "ALTER TABLE t RENAME COLUMN old_name TO new_name;");
      installCapture(db, silentLogger);
      sqlite3(path, "INSERT INTO t VALUES (2, 'after');");
      assert.deepEqual(logOf(db, "t"), [
        { __marmot_op: "upsert", v_id: 1n },
        { __marmot_op: "upsert", v_id: 2n },
      ]);
      const reader = new ChangeLogReader(db);
      reader.setTables(installCapture(db, silentLogger).tables);
      const shipped = reader.read(100, 1 << 20);
      assert.deepEqual(shipped[0]!.wireTable.columns, ["id", "new_name"]);
      assert.deepEqual(
        shipped.map((c) => c.values),
        [
          [1n, "pending"],
          [2n, "after"],
        ],
      );
    } finally {
      db.close();
    }
  });

  it("captures a table created after install at the next install", () => {
    const { path, db } = captured("CREATE TABLE first (a)");
    try {
      sqlite3(path, "CREATE TABLE later (id INTEGER PRIMARY KEY, v);");
      const version = schemaVersion(db);
      const result = installCapture(db, silentLogger);
      assert.ok(schemaVersion(db) > version);
      assert.deepEqual(
        result.tables.map((t) => t.name),
        ["first", "later"],
      );
      sqlite3(path, "INSERT INTO later VALUES (1, 'x');");
      assert.deepEqual(logOf(db, "later"), [{ __marmot_op: "upsert", v_id: 1n }]);
    } finally {
      db.close();
    }
  });

  it("drops the change log of a dropped table when it is empty, keeps it while it holds changes", () => {
    const { path, db } = captured("CREATE TABLE empty_one (a); CREATE TABLE busy_one (a);");
    try {
      sqlite3(path, "INSERT INTO busy_one VALUES (1); DROP TABLE empty_one; DROP TABLE busy_one;");
      const logger = recordingLogger();
      const result = installCapture(db, logger);
      assert.deepEqual(result.tables, []);
      const objects = objectsWithPrefix(path);
      assert.equal(objects.includes(changeLogTable("empty_one")), false);
      assert.equal(objects.includes(changeLogTable("busy_one")), true);
      assert.ok(logger.lines.some((l) => l.level === "warn" && l.message.includes('"busy_one"')));
    } finally {
      db.close();
    }
  });
});

describe("the chinook sample database", () => {
  const writes = [
    "INSERT INTO Artist (ArtistId, Name) VALUES (1000, 'Marmot Quartet');",
    "INSERT INTO Album (AlbumId, Title, ArtistId) VALUES (1000, 'Burrows', 1000);",
    "UPDATE Track SET UnitPrice = 1.29, Name = Name || ' (remastered)' WHERE TrackId = 1;",
    "DELETE FROM PlaylistTrack WHERE PlaylistId = 1 AND TrackId = 3402;",
    "UPDATE PlaylistTrack SET TrackId = 2819 WHERE PlaylistId = 8 AND TrackId = 1;",
    "DELETE FROM InvoiceLine WHERE InvoiceLineId = 1;",
  ].join("\n");

  it("captures all 11 tables, PlaylistTrack by its composite key, and logs writes", () => {
    const path = copyFixture("chinook");
    const db = openDatabase(path, silentLogger);
    try {
      const result = installCapture(db, silentLogger);
      assert.deepEqual(
        result.tables.map((t) => t.name),
        ["Album", "Artist", "Customer", "Employee", "Genre", "Invoice", "InvoiceLine", "MediaType", "Playlist", "PlaylistTrack", "Track"],
      );
      assert.deepEqual(result.tables.find((t) => t.name === "PlaylistTrack")?.keyColumns, ["PlaylistId", "TrackId"]);
      assert.ok(result.tables.every((t) => !t.rowidKeyed));
      sqlite3(path, writes);
      assert.deepEqual(logOf(db, "Artist"), [{ __marmot_op: "upsert", v_ArtistId: 1000n }]);
      const track = shippedOf(db, "Track");
      assert.equal(track.length, 1);
      assert.equal(track[0]!.values[8], 1.29);
      assert.equal(track[0]!.values[1], "For Those About To Rock (We Salute You) (remastered)");
      assert.deepEqual(logOf(db, "PlaylistTrack"), [
        { __marmot_op: "delete", v_PlaylistId: 1n, v_TrackId: 3402n },
        { __marmot_op: "delete", v_PlaylistId: 8n, v_TrackId: 1n },
        { __marmot_op: "upsert", v_PlaylistId: 8n, v_TrackId: 2819n },
      ]);
      assert.equal(logOf(db, "InvoiceLine").length, 1);
    } finally {
      db.close();
    }
  });

  it("removeCapture leaves a file identical (sqldiff) to one that never saw marmot", () => {
    const dir = tempDir();
    const path = copyFixture("chinook", dir);
    const pristine = join(dir, "pristine.sqlite");
    copyFileSync(path, pristine);

    const db = openDatabase(path, silentLogger);
    try {
      installCapture(db, silentLogger);
      sqlite3(path, writes);
      // A parked message and an applied sequence, as a running node would leave them.
      db.exec(
        `INSERT INTO "__marmot__applied" VALUES ('shard-1', 42);` +
          `INSERT INTO "__marmot__parked" (stream, seq, tbl, reason, payload, parked_at) VALUES ('shard-1', 7, 'Track', 'test', x'00', 0);`,
      );
      const result = removeCapture(db, silentLogger);
      assert.equal(result.triggers.length, 33);
    } finally {
      db.close();
    }
    sqlite3(pristine, writes);
    assert.equal(sqldiff(pristine, path), "");
    assert.equal(objectsWithPrefix(path), "");
    assert.equal(sqlite3(path, "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence';").trim(), "0");
    assert.equal(sqlite3(path, "PRAGMA integrity_check;").trim(), "ok");
  });

  it("removeCapture puts sqlite_sequence back as the app's own AUTOINCREMENT tables left it", () => {
    const dir = tempDir();
    const path = createDb(
      join(dir, "app.sqlite"),
      "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT); CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT);" +
        "INSERT INTO jobs DEFAULT VALUES;",
    );
    const pristine = join(dir, "pristine.sqlite");
    copyFileSync(path, pristine);
    const beforeNewTable =
      "INSERT INTO events (what) VALUES ('one'), ('two'); DELETE FROM events WHERE what = 'two'; INSERT INTO jobs DEFAULT VALUES;" +
      "CREATE TABLE tags (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT);";
    const afterNewTable = "INSERT INTO tags (tag) VALUES ('a'); INSERT INTO events (what) VALUES ('three');";

    const db = openDatabase(path, silentLogger);
    try {
      installCapture(db, silentLogger);
      sqlite3(path, beforeNewTable);
      installCapture(db, silentLogger);
      sqlite3(path, afterNewTable);
      removeCapture(db, silentLogger);
    } finally {
      db.close();
    }
    sqlite3(pristine, beforeNewTable + afterNewTable);
    assert.equal(sqldiff(pristine, path), "");
    assert.equal(sqlite3(path, "SELECT group_concat(name || '=' || seq, ' ') FROM sqlite_sequence;").trim(), "jobs=2 events=3 tags=1");
    assert.equal(sqlite3(path, "PRAGMA integrity_check;").trim(), "ok");
  });
});
