// The applier on real SQLite files: what reaches the database, what is parked, and what is never executed.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type Database from "better-sqlite3";
import { installCapture } from "../../src/sqlite/capture.js";
import { Applier, type ApplierOptions } from "../../src/sqlite/applier.js";
import { APPLIED_TABLE, changeLogTable, PARKED_TABLE } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { quoteIdent } from "../../src/sqlite/quote.js";
import type { SqlValue } from "../../src/wire/value.js";
import { encodeBatch, type ChangeOp, type WireTable } from "../../src/wire/codec.js";
import { rowKeyBytes, rowKeyString } from "../../src/wire/shard.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, sqlite3Async, tempDir, type RecordedLine } from "../helpers/sqlite.js";

after(removeTempDirs);

const STREAM = "marmot-changes-1-1";

const SCHEMA = `
CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author TEXT);
CREATE TABLE ratings (user TEXT NOT NULL, book INTEGER NOT NULL, stars REAL, PRIMARY KEY (user, book));
CREATE TABLE notes (body TEXT, tag TEXT);
CREATE TABLE vals (id INTEGER PRIMARY KEY, v);
CREATE TABLE later (id INTEGER PRIMARY KEY, v TEXT);
`;

const BOOKS: WireTable = { name: "Books", columns: ["id", "title", "author"], keyColumns: ["id"] };
const RATINGS: WireTable = { name: "ratings", columns: ["user", "book", "stars"], keyColumns: ["user", "book"] };
const NOTES: WireTable = { name: "notes", columns: ["rowid", "body", "tag"], keyColumns: ["rowid"] };
const VALS: WireTable = { name: "vals", columns: ["id", "v"], keyColumns: ["id"] };

interface Node {
  path: string;
  db: Database.Database;
  applier: Applier;
  lines: RecordedLine[];
  /** re-read the schema after the app changed it, as the node does when the schema version moves */
  refreshSchema(): void;
}

/** A database the app created through the CLI, with capture installed and an applier on marmot's connection. */
function node(schema = SCHEMA, options: ApplierOptions = {}): Node {
  const path = createDb(join(tempDir(), "app.sqlite"), schema);
  const db = openDatabase(path, recordingLogger());
  // Capture first: it creates the internal tables the applier reads.
  const captured = installCapture(db, recordingLogger());
  const logger = recordingLogger();
  const applier = new Applier(db, logger, options);
  applier.setTables(captured.tables);
  return {
    path,
    db,
    applier,
    lines: logger.lines,
    refreshSchema: () => applier.setTables(installCapture(db, recordingLogger()).tables),
  };
}

function change(table: WireTable, op: ChangeOp, changeId: number, values: SqlValue[]) {
  return { table, op, changeId, values };
}

function batch(...changes: ReturnType<typeof change>[]): Buffer {
  return encodeBatch({ origin: "2", changes });
}

/** A batch this node (node 1) published itself, as it comes back from the stream. */
function ownBatch(...changes: ReturnType<typeof change>[]): Buffer {
  return encodeBatch({ origin: "1/e1", changes });
}

function upsertBook(id: number, title: string | null, author: string | null = "anon", changeId = id) {
  return change(BOOKS, "upsert", changeId, [BigInt(id), title, author]);
}

function rows(path: string, sql: string): string {
  return sqlite3(path, sql).trim();
}

function appliedSeq(path: string): string {
  return rows(path, `SELECT seq FROM ${APPLIED_TABLE} WHERE stream = '${STREAM}'`);
}

function parked(db: Database.Database): { seq: bigint; tbl: string | null; reason: string }[] {
  return db.prepare(`SELECT seq, tbl, reason FROM ${quoteIdent(PARKED_TABLE)} ORDER BY id`).all() as {
    seq: bigint;
    tbl: string | null;
    reason: string;
  }[];
}

function logCount(db: Database.Database, table: string): number {
  return Number(
    db
      .prepare(`SELECT count(*) FROM ${quoteIdent(changeLogTable(table))} WHERE __marmot_op <> 'marker'`)
      .pluck()
      .get(),
  );
}

describe("applying replicated batches", () => {
  it("applies upserts and deletes and records the stream sequence", () => {
    const n = node();
    try {
      const first = n.applier.applyMessage(STREAM, 1, batch(upsertBook(1, "Emma", "Austen"), upsertBook(2, "Dracula", "Stoker")));
      assert.deepEqual(first, { outcome: "applied", applied: 2, parked: 0 });
      const second = n.applier.applyMessage(STREAM, 2, batch(upsertBook(1, "Persuasion", "Austen", 3), change(BOOKS, "delete", 4, [2n])));
      assert.deepEqual(second, { outcome: "applied", applied: 2, parked: 0 });
      assert.equal(rows(n.path, "SELECT id, title, author FROM Books ORDER BY id"), "1|Persuasion|Austen");
      assert.equal(appliedSeq(n.path), "2");
      assert.equal(n.applier.appliedSequence(STREAM), 2);
    } finally {
      n.db.close();
    }
  });

  it("records the sequence in the same transaction as the rows: a failure part-way leaves neither", () => {
    const n = node();
    try {
      n.applier.applyMessage(STREAM, 1, batch(upsertBook(1, "Emma")));
      // A function only marmot's connection knows, called by a trigger: it fails the apply mid-batch when armed.
      let armed = false;
      n.db.function("fail_when_armed", () => {
        if (armed) throw new Error("disk on fire");
        return 0;
      });
      n.db.exec("CREATE TRIGGER vals_guard AFTER INSERT ON vals BEGIN SELECT fail_when_armed(); END");
      armed = true;
      assert.throws(() => n.applier.applyMessage(STREAM, 2, batch(upsertBook(2, "Dracula"), change(VALS, "upsert", 5, [1n, "x"]))), /disk on fire/);
      assert.equal(rows(n.path, "SELECT group_concat(id) FROM Books"), "1", "the batch's first change was rolled back");
      assert.equal(rows(n.path, "SELECT count(*) FROM vals"), "0");
      assert.equal(appliedSeq(n.path), "1", "the sequence did not advance");
      assert.equal(n.applier.appliedSequence(STREAM), 1);
      // The same message again, once the problem is gone, applies whole.
      armed = false;
      assert.equal(n.applier.applyMessage(STREAM, 2, batch(upsertBook(2, "Dracula"), change(VALS, "upsert", 5, [1n, "x"]))).outcome, "applied");
      assert.equal(rows(n.path, "SELECT group_concat(id) FROM Books"), "1,2");
      assert.equal(appliedSeq(n.path), "2");
    } finally {
      n.db.close();
    }
  });

  it("treats a repeated or lower sequence as a duplicate that changes nothing, also after a restart", () => {
    const n = node();
    try {
      n.applier.applyMessage(STREAM, 5, batch(upsertBook(1, "Emma")));
      const before = rows(n.path, "SELECT * FROM Books");
      assert.deepEqual(n.applier.applyMessage(STREAM, 5, batch(upsertBook(1, "Changed"))), { outcome: "duplicate", applied: 0, parked: 0 });
      assert.deepEqual(n.applier.applyMessage(STREAM, 3, batch(upsertBook(9, "New"))), { outcome: "duplicate", applied: 0, parked: 0 });
      assert.equal(rows(n.path, "SELECT * FROM Books"), before);
      // A new applier (marmot restarted) knows the sequence from the database.
      const restarted = new Applier(n.db, recordingLogger());
      restarted.setTables(installCapture(n.db, recordingLogger()).tables);
      assert.equal(restarted.applyMessage(STREAM, 5, batch(upsertBook(1, "Changed"))).outcome, "duplicate");
      assert.equal(rows(n.path, "SELECT * FROM Books"), before);
      // Other streams keep their own sequence.
      assert.equal(restarted.applyMessage("marmot-changes-2-2", 1, batch(upsertBook(2, "Other shard"))).outcome, "applied");
      assert.equal(appliedSeq(n.path), "5");
    } finally {
      n.db.close();
    }
  });

  for (const trusted of [0, 1]) {
    it(`does not capture what it applies while the app's writes at the same time are captured (trusted_schema=${trusted})`, async () => {
      const n = node();
      try {
        const appRows = 300;
        const statements = [`PRAGMA trusted_schema = ${trusted};`];
        for (let i = 0; i < appRows; i++) statements.push(`INSERT INTO Books VALUES (${100_000 + i}, 'app ${i}', 'app');`);
        const app = sqlite3Async(n.path, statements.join("\n"));
        let appDone = false;
        void app.finally(() => (appDone = true)).catch(() => undefined);
        let seq = 0;
        // Keep applying until the app has finished, so the two writers interleave.
        while (!appDone || seq < 50) {
          seq++;
          const result = n.applier.applyMessage(
            STREAM,
            seq,
            batch(upsertBook(seq, `replicated ${seq}`, "remote"), upsertBook(seq, `again ${seq}`, "remote", seq + 1)),
          );
          assert.equal(result.outcome, "applied");
          await new Promise((r) => setImmediate(r));
        }
        await app;
        assert.equal(rows(n.path, "SELECT count(*) FROM Books WHERE author = 'remote'"), String(seq));
        const logged = n.db
          .prepare(`SELECT v_id FROM ${quoteIdent(changeLogTable("Books"))} WHERE __marmot_op <> 'marker' ORDER BY __marmot_id`)
          .pluck()
          .all() as bigint[];
        assert.equal(logged.length, appRows, "exactly the app's writes are in the change log");
        assert.ok(
          logged.every((id) => id >= 100_000n),
          "no applied change is in the change log",
        );
        assert.equal(rows(n.path, "SELECT count(*) FROM __marmot__applying"), "0", "the marker is never left behind");
      } finally {
        n.db.close();
      }
    });
  }
});

describe("parking what this node cannot apply", () => {
  it("parks changes for a missing table, keeps later ones behind them, goes on with the shard, and applies them in order once the table exists", () => {
    const n = node();
    try {
      const MISSING: WireTable = { name: "shelves", columns: ["id", "label"], keyColumns: ["id"] };
      const first = n.applier.applyMessage(STREAM, 1, batch(change(MISSING, "upsert", 1, [1n, "first"]), upsertBook(1, "Emma")));
      assert.deepEqual(first, { outcome: "partly-parked", applied: 1, parked: 1 });
      const warning = n.lines.find((l) => l.level === "warn" && l.fields?.table === "shelves");
      assert.ok(warning, `a warning names the table: ${JSON.stringify(n.lines)}`);
      assert.match(String(warning.fields?.reason), /"shelves" does not exist/);

      // Later changes to that table wait behind the first; the rest of the shard goes on.
      const second = n.applier.applyMessage(
        STREAM,
        2,
        batch(
          change(MISSING, "upsert", 2, [1n, "second"]),
          change(MISSING, "upsert", 3, [2n, "two"]),
          change(MISSING, "delete", 4, [3n]),
          upsertBook(2, "Dracula"),
        ),
      );
      assert.deepEqual(second, { outcome: "partly-parked", applied: 1, parked: 3 });
      assert.equal(n.applier.applyMessage(STREAM, 3, batch(upsertBook(3, "Ulysses"))).outcome, "applied");
      assert.equal(rows(n.path, "SELECT group_concat(id) FROM Books"), "1,2,3");
      assert.equal(appliedSeq(n.path), "3");
      const waiting = parked(n.db);
      assert.deepEqual(
        waiting.map((p) => [Number(p.seq), p.tbl]),
        [
          [1, "shelves"],
          [2, "shelves"],
          [2, "shelves"],
          [2, "shelves"],
        ],
      );
      assert.match(waiting[1]!.reason, /earlier changes to table "shelves" are waiting/);

      // Nothing to retry into yet: everything stays parked.
      assert.equal(n.applier.retryParked(), 0);
      assert.equal(parked(n.db).length, 4);

      // The app creates the table (with a row that the parked delete must remove), and the parked changes apply in order.
      sqlite3(n.path, "CREATE TABLE shelves (id INTEGER PRIMARY KEY, label TEXT);");
      n.refreshSchema();
      sqlite3(n.path, "INSERT INTO shelves VALUES (3, 'local');");
      assert.equal(n.applier.retryParked(), 4);
      assert.equal(rows(n.path, "SELECT id, label FROM shelves ORDER BY id"), "1|second\n2|two");
      assert.equal(parked(n.db).length, 0);
      assert.equal(logCount(n.db, "shelves"), 1, "only the app's own insert is in the change log, not the retried changes");
      assert.equal(n.applier.hasParked(), false);
      // And the table takes new changes directly again.
      assert.equal(n.applier.applyMessage(STREAM, 4, batch(change(MISSING, "upsert", 5, [4n, "direct"]))).outcome, "applied");
    } finally {
      n.db.close();
    }
  });

  it("parks changes naming a column this node lacks until the app adds it, also across a restart", () => {
    const n = node();
    try {
      const WIDER: WireTable = { name: "later", columns: ["id", "v", "extra"], keyColumns: ["id"] };
      const NARROW: WireTable = { name: "later", columns: ["id", "v"], keyColumns: ["id"] };
      assert.equal(n.applier.applyMessage(STREAM, 1, batch(change(WIDER, "upsert", 1, [1n, "one", "x1"]))).outcome, "parked");
      const warning = n.lines.find((l) => l.level === "warn" && l.fields?.table === "later");
      assert.ok(warning, "a warning names the table");
      assert.match(String(warning.fields?.reason), /no column "extra"/);
      // A later change to the same table that this node could apply still waits, so the row's order is kept.
      assert.equal(n.applier.applyMessage(STREAM, 2, batch(change(NARROW, "upsert", 2, [1n, "newer"]))).outcome, "parked");
      assert.equal(rows(n.path, "SELECT count(*) FROM later"), "0");

      // marmot restarts: the new applier still knows the table has parked changes.
      const restarted = new Applier(n.db, recordingLogger());
      restarted.setTables(installCapture(n.db, recordingLogger()).tables);
      assert.equal(restarted.hasParked(), true);
      assert.equal(restarted.applyMessage(STREAM, 3, batch(change(NARROW, "upsert", 3, [2n, "two"]))).outcome, "parked");

      sqlite3(n.path, "ALTER TABLE later ADD COLUMN extra TEXT;");
      restarted.setTables(installCapture(n.db, recordingLogger()).tables);
      assert.equal(restarted.retryParked(), 3);
      assert.equal(rows(n.path, "SELECT id, v, quote(extra) FROM later ORDER BY id"), "1|newer|'x1'\n2|two|NULL");
      assert.equal(parked(n.db).length, 0);
    } finally {
      n.db.close();
    }
  });

  it("keeps a table's order inside one batch too: after a parked change, later changes to that table wait", () => {
    const n = node();
    try {
      const WIDER: WireTable = { name: "later", columns: ["id", "v", "extra"], keyColumns: ["id"] };
      const NARROW: WireTable = { name: "later", columns: ["id", "v"], keyColumns: ["id"] };
      const result = n.applier.applyMessage(
        STREAM,
        1,
        batch(change(WIDER, "upsert", 1, [1n, "older", "x"]), change(NARROW, "upsert", 2, [1n, "newer"]), upsertBook(1, "Emma", "a", 3)),
      );
      assert.deepEqual(result, { outcome: "partly-parked", applied: 1, parked: 2 });
      assert.equal(rows(n.path, "SELECT count(*) FROM later"), "0");
      sqlite3(n.path, "ALTER TABLE later ADD COLUMN extra TEXT;");
      n.refreshSchema();
      assert.equal(n.applier.retryParked(), 2);
      assert.equal(rows(n.path, "SELECT id, v, extra FROM later"), "1|newer|x", "the row ends in its last state");
    } finally {
      n.db.close();
    }
  });

  it("parks an upsert that lacks a key column, has no columns, or names a column twice, instead of inserting or throwing", () => {
    const n = node();
    try {
      sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');");
      const noKey: WireTable = { name: "Books", columns: ["title", "author"], keyColumns: ["id"] };
      const noColumns: WireTable = { name: "Books", columns: [], keyColumns: ["id"] };
      const twice: WireTable = { name: "vals", columns: ["id", ...Array.from({ length: 40_000 }, () => "v")], keyColumns: ["id"] };
      const noRowid: WireTable = { name: "notes", columns: ["body", "tag"], keyColumns: ["rowid"] };
      let seq = 0;
      for (const [table, values] of [
        [noKey, ["Dracula", "Stoker"]],
        [noColumns, []],
        [twice, [1n, ...Array.from({ length: 40_000 }, () => "x")]],
        [noRowid, ["body", "tag"]],
      ] as [WireTable, SqlValue[]][]) {
        const result = n.applier.applyMessage(STREAM, ++seq, batch(change(table, "upsert", seq, values)));
        assert.equal(result.outcome, "parked", `${table.name} (${table.columns.length} columns)`);
      }
      assert.equal(rows(n.path, "SELECT id, title FROM Books"), "1|Emma", "no row was made up");
      assert.equal(rows(n.path, "SELECT (SELECT count(*) FROM vals) + (SELECT count(*) FROM notes)"), "0");
      assert.equal(appliedSeq(n.path), String(seq));
      const reasons = parked(n.db).map((p) => p.reason);
      assert.match(reasons[0]!, /key column "id"/);
      assert.match(reasons[2]!, /column "v" .*twice/);
    } finally {
      n.db.close();
    }
  });

  it("parks garbage and a truncated batch as undecodable and advances the sequence", () => {
    const n = node();
    try {
      const garbage = Buffer.from("this is not a batch at all \u0000\u0001\u0002", "utf8");
      assert.deepEqual(n.applier.applyMessage(STREAM, 1, garbage), { outcome: "parked", applied: 0, parked: 1 });
      const whole = batch(upsertBook(1, "Emma"), upsertBook(2, "Dracula"));
      const truncated = whole.subarray(0, whole.length - 5);
      assert.deepEqual(n.applier.applyMessage(STREAM, 2, truncated), { outcome: "parked", applied: 0, parked: 1 });
      assert.deepEqual(n.applier.applyMessage(STREAM, 3, Buffer.alloc(0)), { outcome: "parked", applied: 0, parked: 1 });
      assert.equal(appliedSeq(n.path), "3");
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "0");

      const set = parked(n.db);
      assert.deepEqual(
        set.map((p) => [Number(p.seq), p.tbl]),
        [
          [1, null],
          [2, null],
          [3, null],
        ],
      );
      assert.match(set[0]!.reason, /^undecodable: .*bad magic/);
      assert.match(set[1]!.reason, /^undecodable: truncated batch/);
      const stored = n.db
        .prepare(`SELECT payload FROM ${quoteIdent(PARKED_TABLE)} WHERE seq = 2`)
        .pluck()
        .get() as Buffer;
      assert.deepEqual(stored, truncated, "the bytes are kept for inspection");
      const errors = n.lines.filter((l) => l.level === "error");
      assert.equal(errors.length, 3);
      assert.match(errors[1]!.message, /not a valid marmot batch/);
      assert.equal(errors[1]!.fields?.seq, 2);

      // The shard goes on, and undecodable messages do not make any table wait.
      assert.equal(n.applier.applyMessage(STREAM, 4, whole).outcome, "applied");
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "2");
      assert.equal(n.applier.retryParked(), 0, "undecodable messages are not retried");
    } finally {
      n.db.close();
    }
  });

  it("parks a change that would violate NOT NULL with the constraint error instead of throwing", () => {
    const n = node();
    try {
      const result = n.applier.applyMessage(STREAM, 1, batch(upsertBook(1, null), change(VALS, "upsert", 2, [1n, "fine"])));
      assert.deepEqual(result, { outcome: "partly-parked", applied: 1, parked: 1 });
      const [row] = parked(n.db);
      assert.equal(row?.tbl, "Books");
      assert.match(row!.reason, /SQLITE_CONSTRAINT_NOTNULL/);
      assert.match(row!.reason, /Books\.title/);
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "0");
      assert.equal(rows(n.path, "SELECT v FROM vals"), "fine");
      assert.equal(appliedSeq(n.path), "1");
    } finally {
      n.db.close();
    }
  });

  it("never executes names from a batch that exist nowhere locally: injection attempts are parked and the tables stay intact", () => {
    const n = node();
    try {
      sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen'), (2, 'Dracula', 'Stoker');");
      const schemaBefore = rows(n.path, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '__marmot%' ORDER BY name");
      const hostileTables: WireTable[] = [
        { name: 'x"; DROP TABLE Books; --', columns: ["id"], keyColumns: ["id"] },
        { name: "Books; DELETE FROM Books", columns: ["id"], keyColumns: ["id"] },
        { name: 'Books" (id) VALUES (1); DROP TABLE Books; --', columns: ["id"], keyColumns: ["id"] },
        { name: "x'); DROP TABLE Books; --", columns: ["id"], keyColumns: ["id"] },
      ];
      let seq = 0;
      for (const table of hostileTables) {
        for (const op of ["upsert", "delete"] as const) {
          const result = n.applier.applyMessage(STREAM, ++seq, batch(change(table, op, seq, [1n])));
          assert.equal(result.outcome, "parked", `${op} on ${table.name}`);
        }
      }
      // Hostile column and key names on a real table are refused before any SQL is built.
      const hostileColumn: WireTable = { name: "vals", columns: ["id", 'v" = 1; DROP TABLE Books; --'], keyColumns: ["id"] };
      assert.equal(n.applier.applyMessage(STREAM, ++seq, batch(change(hostileColumn, "upsert", seq, [1n, 2n]))).outcome, "parked");
      const hostileKey: WireTable = { name: "ratings", columns: ["user", "book", "stars"], keyColumns: ["user", "book) OR 1=1; --"] };
      assert.equal(n.applier.applyMessage(STREAM, ++seq, batch(change(hostileKey, "delete", seq, ["u", 1n]))).outcome, "parked");

      assert.equal(rows(n.path, "SELECT id, title FROM Books ORDER BY id"), "1|Emma\n2|Dracula");
      assert.equal(rows(n.path, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '__marmot%' ORDER BY name"), schemaBefore);
      const tables = parked(n.db).map((p) => p.tbl);
      assert.ok(tables.includes('x"; DROP TABLE Books; --'), `parked under its name: ${JSON.stringify(tables)}`);
      assert.ok(
        n.lines.some((l) => l.level === "warn" && l.fields?.table === 'x"; DROP TABLE Books; --'),
        "the warning names the table as given",
      );
      // The real tables keep working.
      assert.equal(n.applier.applyMessage(STREAM, ++seq, batch(upsertBook(3, "Ulysses"))).outcome, "applied");
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "3");
    } finally {
      n.db.close();
    }
  });
});

describe("keys and values", () => {
  it("upserts and deletes a table without a primary key by its rowid", () => {
    const n = node();
    try {
      sqlite3(n.path, "INSERT INTO notes (rowid, body, tag) VALUES (7, 'local', 'l');");
      n.applier.applyMessage(STREAM, 1, batch(change(NOTES, "upsert", 1, [42n, "remote", "r"])));
      n.applier.applyMessage(STREAM, 2, batch(change(NOTES, "upsert", 2, [42n, "remote, edited", "r2"])));
      assert.equal(rows(n.path, "SELECT rowid, body, tag FROM notes ORDER BY rowid"), "7|local|l\n42|remote, edited|r2");
      n.applier.applyMessage(STREAM, 3, batch(change(NOTES, "delete", 3, [7n])));
      assert.equal(rows(n.path, "SELECT rowid, body FROM notes ORDER BY rowid"), "42|remote, edited");
    } finally {
      n.db.close();
    }
  });

  it("deletes by a composite key, touching only that row", () => {
    const n = node();
    try {
      sqlite3(n.path, "INSERT INTO ratings VALUES ('ann', 1, 4.5), ('ann', 2, 3.0), ('bob', 2, 5.0);");
      n.applier.applyMessage(STREAM, 1, batch(change(RATINGS, "delete", 1, ["ann", 2n])));
      assert.equal(rows(n.path, "SELECT user, book FROM ratings ORDER BY user, book"), "ann|1\nbob|2");
      n.applier.applyMessage(STREAM, 2, batch(change(RATINGS, "upsert", 2, ["bob", 2n, 1.5])));
      assert.equal(rows(n.path, "SELECT user, book, stars FROM ratings ORDER BY user, book"), "ann|1|4.5\nbob|2|1.5");
    } finally {
      n.db.close();
    }
  });

  it("keeps int64 extremes, integers beyond 2^53 and REAL 1.0 exact", () => {
    const n = node();
    try {
      const values: SqlValue[] = [
        9223372036854775807n,
        -9223372036854775808n,
        9007199254740993n,
        -9007199254740993n,
        1.0,
        -0.0,
        0.1,
        null,
        "1",
        Buffer.from([0, 255]),
      ];
      n.applier.applyMessage(STREAM, 1, batch(...values.map((v, i) => change(VALS, "upsert", i + 1, [BigInt(i + 1), v]))));
      assert.equal(
        rows(n.path, "SELECT id, typeof(v), quote(v) FROM vals ORDER BY id"),
        [
          "1|integer|9223372036854775807",
          "2|integer|-9223372036854775808",
          "3|integer|9007199254740993",
          "4|integer|-9007199254740993",
          "5|real|1.0",
          "6|real|0.0",
          "7|real|0.1",
          "8|null|NULL",
          "9|text|'1'",
          "10|blob|X'00FF'",
        ].join("\n"),
      );
      // The key itself may be a 64-bit extreme too.
      n.applier.applyMessage(STREAM, 2, batch(change(VALS, "upsert", 20, [9223372036854775807n, "max"]), change(VALS, "delete", 21, [1n])));
      assert.equal(rows(n.path, "SELECT v FROM vals WHERE id = 9223372036854775807"), "max");
      assert.equal(rows(n.path, "SELECT count(*) FROM vals WHERE id = 1"), "0");
    } finally {
      n.db.close();
    }
  });
});

describe("rows that clash on a UNIQUE column", () => {
  const USERS: WireTable = { name: "users", columns: ["id", "email"], keyColumns: ["id"] };
  const schema = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE);";

  it("the later write in the stream wins and the table keeps replicating, the same way on every node", () => {
    // Two nodes each inserted 'x@example.com' under their own id; each already holds its own row.
    const a = node(schema);
    const b = node(schema);
    sqlite3(a.path, "INSERT INTO users VALUES (1, 'x@example.com');");
    sqlite3(b.path, "INSERT INTO users VALUES (2, 'x@example.com');");
    const fromA = batch(change(USERS, "upsert", 1, [1n, "x@example.com"]));
    const fromB = batch(change(USERS, "upsert", 1, [2n, "x@example.com"]));
    const next = batch(change(USERS, "upsert", 2, [3n, "y@example.com"]));
    for (const n of [a, b]) {
      n.applier.applyMessage(STREAM, 1, fromA);
      n.applier.applyMessage(STREAM, 2, fromB);
      const result = n.applier.applyMessage(STREAM, 3, next);
      assert.equal(result.outcome, "applied", "the table is not stalled");
      assert.equal(
        rows(n.path, "SELECT group_concat(id || ':' || email, ',') FROM (SELECT * FROM users ORDER BY id)"),
        "2:x@example.com,3:y@example.com",
      );
      assert.deepEqual(parked(n.db), []);
      assert.ok(n.lines.some((l) => /clashed with it on a UNIQUE column/.test(l.message)));
    }
  });

  it("an update that moves a row onto another row's unique value removes that row", () => {
    const n = node(schema);
    sqlite3(n.path, "INSERT INTO users VALUES (1, 'x@example.com'), (3, 'z@example.com');");
    const result = n.applier.applyMessage(STREAM, 1, batch(change(USERS, "upsert", 1, [3n, "x@example.com"])));
    assert.equal(result.outcome, "applied");
    assert.equal(rows(n.path, "SELECT group_concat(id || ':' || email, ',') FROM users"), "3:x@example.com");
  });
});

describe("rows that clash on a UNIQUE column while the app's newer write is on its way", () => {
  const USERS: WireTable = { name: "users", columns: ["id", "email", "name"], keyColumns: ["id"] };
  const schema = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
  const users = (path: string) => rows(path, "SELECT group_concat(id || ':' || email || ':' || name, ',') FROM (SELECT * FROM users ORDER BY id)");

  it("go as on every other node: such a table applies every change in stream order, the app's newer write wins when it comes back", () => {
    // This node (1) and another one (3) apply the same stream; only node 1's app writes meanwhile.
    const here = node(schema, { origin: "1/e1" });
    const elsewhere = node(schema, { origin: "3/e1" });
    try {
      for (const n of [here, elsewhere]) n.applier.applyMessage(STREAM, 1, batch(change(USERS, "upsert", 1, [7n, "x@example.com", "seven"])));
      // The app here writes row 9; before that reaches the stream, node 2's row 9 takes row 7's email.
      sqlite3(here.path, "INSERT INTO users VALUES (9, 'y@example.com', 'mine');");
      const mine = Number(
        here.db
          .prepare(`SELECT max(__marmot_id) FROM ${quoteIdent(changeLogTable("users"))}`)
          .pluck()
          .get(),
      );
      const clash = batch(change(USERS, "upsert", 2, [9n, "x@example.com", "theirs"]));
      for (const n of [here, elsewhere]) n.applier.applyMessage(STREAM, 2, clash);
      assert.equal(users(elsewhere.path), "9:x@example.com:theirs", "row 7 lost the clash");
      assert.equal(users(here.path), users(elsewhere.path), "here too: the row that lost goes, on every node alike");
      // The app's row 9 reaches the stream and comes back: it wins on both nodes, and leaves the change log here.
      const back = encodeBatch({ origin: "1/e1", changes: [change(USERS, "upsert", mine, [9n, "y@example.com", "mine"])] });
      for (const n of [here, elsewhere]) n.applier.applyMessage(STREAM, 3, back);
      assert.equal(users(here.path), "9:y@example.com:mine");
      assert.equal(users(elsewhere.path), users(here.path));
      assert.equal(logCount(here.db, "users"), 0);
    } finally {
      here.db.close();
      elsewhere.db.close();
    }
  });
});

describe("the app's own newer writes", () => {
  const OWN: ApplierOptions = { origin: "1/e1" };

  /** The newest change id in a table's change log: what the shipper would read next. */
  function newestLogId(n: Node, table: string): number {
    return Number(
      n.db
        .prepare(`SELECT max(__marmot_id) FROM ${quoteIdent(changeLogTable(table))}`)
        .pluck()
        .get(),
    );
  }

  /** What the shipper does once JetStream acknowledged a table's changes up to an id. */
  function acknowledged(n: Node, table: string, upTo: number): void {
    n.db.prepare(`DELETE FROM ${quoteIdent(changeLogTable(table))} WHERE __marmot_id <= ?`).run(BigInt(upTo));
  }

  it("are not undone by the node's own older change coming back from the stream, nor by older changes of others", () => {
    const n = node(SCHEMA, OWN);
    try {
      sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');");
      const inserted = newestLogId(n, "Books");
      acknowledged(n, "Books", inserted);
      // Published and acknowledged, not applied back yet; meanwhile the app changes the row again.
      sqlite3(n.path, "UPDATE Books SET title = 'Persuasion' WHERE id = 1;");
      const updated = newestLogId(n, "Books");

      n.applier.applyMessage(STREAM, 1, ownBatch(upsertBook(1, "Emma", "Austen", inserted)));
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Persuasion", "the app's newer write stays");
      // Another node's change sequenced before the app's update reaches the stream: the update lands after it.
      n.applier.applyMessage(STREAM, 2, batch(upsertBook(1, "Dracula", "Stoker", 7)));
      assert.equal(rows(n.path, "SELECT title, author FROM Books"), "Persuasion|Austen");
      assert.equal(n.applier.superseded, 2);

      // The update reaches the stream and comes back: it leaves the change log, and later changes apply again.
      n.applier.applyMessage(STREAM, 3, ownBatch(upsertBook(1, "Persuasion", "Austen", updated)));
      assert.equal(logCount(n.db, "Books"), 0, "a change the stream holds is no longer pending");
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Persuasion");
      n.applier.applyMessage(STREAM, 4, batch(upsertBook(1, "Dracula", "Stoker", 8)));
      assert.equal(rows(n.path, "SELECT title, author FROM Books"), "Dracula|Stoker", "a later change of another node wins");
      assert.equal(appliedSeq(n.path), "4");
    } finally {
      n.db.close();
    }
  });

  it("are not undone by their own older changes coming back after JetStream stored the newer one too", () => {
    const n = node(SCHEMA, OWN);
    const row1 = rowKeyString(rowKeyBytes("Books", [1n]));
    try {
      // Three writes of the app, each published and acknowledged (and so gone from the change log) before the
      // node applies any of them back: the shipper tells the applier where each was stored.
      const ids: number[] = [];
      for (const [seq, sql] of [
        [1, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');"],
        [2, "DELETE FROM Books WHERE id = 1;"],
        [3, "INSERT INTO Books VALUES (1, 'Persuasion', 'Austen');"],
      ] as const) {
        sqlite3(n.path, sql);
        ids.push(newestLogId(n, "Books"));
        acknowledged(n, "Books", ids.at(-1)!);
        n.applier.noteStored(STREAM, seq, [row1]);
      }
      n.applier.applyMessage(STREAM, 1, ownBatch(upsertBook(1, "Emma", "Austen", ids[0])));
      n.applier.applyMessage(STREAM, 2, ownBatch(change(BOOKS, "delete", ids[1]!, [1n])));
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Persuasion", "the row neither went back nor went away");
      n.applier.applyMessage(STREAM, 3, ownBatch(upsertBook(1, "Persuasion", "Austen", ids[2])));
      n.applier.applyMessage(STREAM, 4, batch(upsertBook(1, "Dracula", "Stoker", 9)));
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Dracula", "once its own change is back, later changes apply");
    } finally {
      n.db.close();
    }
  });

  it("are kept after a restart from their messages read back from the stream (composite and rowid keys)", () => {
    const n = node(SCHEMA, OWN);
    try {
      // The app wrote, and each change was stored and left the change log; then marmot restarted (nothing of the
      // shipper's word survives). The messages at 3 and 4 are its own, read back from the stream.
      sqlite3(n.path, "INSERT INTO ratings VALUES ('ann', 1, 4.5); INSERT INTO notes (rowid, body, tag) VALUES (7, 'draft', 'x');");
      const [rating, note] = [newestLogId(n, "ratings"), newestLogId(n, "notes")];
      sqlite3(n.path, "UPDATE ratings SET stars = 5.0; DELETE FROM notes;");
      const [rating2, note2] = [newestLogId(n, "ratings"), newestLogId(n, "notes")];
      acknowledged(n, "ratings", rating2);
      acknowledged(n, "notes", note2);
      const older = ownBatch(change(RATINGS, "upsert", rating, ["ann", 1n, 4.5]), change(NOTES, "upsert", note, [7n, "draft", "x"]));
      const newer = ownBatch(change(RATINGS, "upsert", rating2, ["ann", 1n, 5.0]), change(NOTES, "delete", note2, [7n]));
      const restarted = new Applier(n.db, recordingLogger(), OWN);
      restarted.setTables(installCapture(n.db, recordingLogger()).tables);
      assert.equal(restarted.noteStoredMessage(STREAM, 4, newer), 2);
      assert.equal(restarted.noteStoredMessage(STREAM, 5, batch(change(RATINGS, "upsert", 9, ["ann", 1n, 1.0]))), 0, "another node's");
      restarted.applyMessage(STREAM, 3, older);
      assert.equal(rows(n.path, "SELECT stars FROM ratings"), "5.0", "the update does not go back");
      assert.equal(rows(n.path, "SELECT count(*) FROM notes"), "0", "the deleted row does not come back");
      restarted.applyMessage(STREAM, 4, newer);
      restarted.applyMessage(STREAM, 5, batch(change(RATINGS, "upsert", 9, ["ann", 1n, 1.0])));
      assert.equal(rows(n.path, "SELECT stars FROM ratings"), "1.0", "once its own change is back, later changes apply");
    } finally {
      n.db.close();
    }
  });

  it("stay deleted or updated (composite and rowid keys) while other rows of the tables still apply", () => {
    const n = node(SCHEMA, OWN);
    try {
      sqlite3(n.path, "INSERT INTO ratings VALUES ('ann', 1, 4.5); INSERT INTO notes (rowid, body, tag) VALUES (7, 'draft', 'x');");
      const rating = newestLogId(n, "ratings");
      const note = newestLogId(n, "notes");
      acknowledged(n, "ratings", rating);
      acknowledged(n, "notes", note);
      sqlite3(n.path, "DELETE FROM ratings; UPDATE notes SET body = 'final';");
      n.applier.applyMessage(
        STREAM,
        1,
        ownBatch(change(RATINGS, "upsert", rating, ["ann", 1n, 4.5]), change(NOTES, "upsert", note, [7n, "draft", "x"])),
      );
      assert.equal(rows(n.path, "SELECT count(*) FROM ratings"), "0", "the deleted row does not come back");
      assert.equal(rows(n.path, "SELECT body FROM notes"), "final");
      // Other rows of the same tables are not held back.
      n.applier.applyMessage(STREAM, 2, batch(change(RATINGS, "upsert", 3, ["bob", 1n, 2.0]), change(NOTES, "upsert", 4, [8n, "other", null])));
      assert.equal(rows(n.path, "SELECT user FROM ratings"), "bob");
      assert.equal(rows(n.path, "SELECT count(*) FROM notes"), "2");
    } finally {
      n.db.close();
    }
  });

  it("yield to a later change of another node when their own change is already in the stream but not acknowledged", () => {
    const n = node(SCHEMA, OWN);
    try {
      sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');");
      const inserted = newestLogId(n, "Books");
      // Stored at sequence 1, the ack not back yet: the row is still in the change log when the stream comes back.
      n.applier.applyMessages(STREAM, [
        { seq: 1, data: ownBatch(upsertBook(1, "Emma", "Austen", inserted)) },
        { seq: 2, data: batch(upsertBook(1, "Dracula", "Stoker", 5)) },
      ]);
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Dracula", "every node applies the later change: so must this one");
      assert.equal(logCount(n.db, "Books"), 0);
      assert.equal(n.applier.superseded, 0);
    } finally {
      n.db.close();
    }
  });

  it("treat a batch of this node from before a cleanup (another epoch) as another writer's: its change ids mean nothing now", () => {
    const n = node(SCHEMA, OWN);
    try {
      sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');");
      const replayed = encodeBatch({ origin: "1/e0", changes: [upsertBook(1, "Dracula", "Stoker", 1_000_000)] });
      n.applier.applyMessage(STREAM, 1, replayed);
      assert.equal(logCount(n.db, "Books"), 1, "the app's pending change stays in the change log");
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Emma");
    } finally {
      n.db.close();
    }
  });

  it("without publishing (publish = false) every replicated change applies, pending local changes or not", () => {
    const n = node(SCHEMA);
    try {
      sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');");
      n.applier.applyMessage(STREAM, 1, batch(upsertBook(1, "Dracula", "Stoker", 5)));
      assert.equal(rows(n.path, "SELECT title FROM Books"), "Dracula");
    } finally {
      n.db.close();
    }
  });
});

describe("the node's own changes coming back from the stream", () => {
  const USERS: WireTable = { name: "users", columns: ["id", "email"], keyColumns: ["id"] };
  const schema = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE);";
  const userKey = (id: bigint) => rowKeyString(rowKeyBytes("users", [id]));

  it("are written again when the row no longer holds them, and change nothing when it does", () => {
    const n = node(schema, { origin: "1/e1" });
    try {
      sqlite3(n.path, "INSERT INTO users VALUES (1, 'x@example.com'), (2, 'y@example.com');");
      const logged = Number(
        n.db
          .prepare(`SELECT max(__marmot_id) FROM ${quoteIdent(changeLogTable("users"))}`)
          .pluck()
          .get(),
      );
      // The shipper published both rows; JetStream stored them at 2; they left the change log.
      n.applier.noteStored(STREAM, 2, [userKey(1n), userKey(2n)]);
      n.db.prepare(`DELETE FROM ${quoteIdent(changeLogTable("users"))} WHERE __marmot_id <= ?`).run(BigInt(logged));
      // Before them in the stream: another node's row with the same email as row 1. It wins here for now (the
      // later write wins), and takes row 1 away.
      n.applier.applyMessage(STREAM, 1, batch(change(USERS, "upsert", 9, [5n, "x@example.com"])));
      assert.equal(rows(n.path, "SELECT group_concat(id, ',') FROM (SELECT id FROM users ORDER BY id)"), "2,5");

      // Row 1 comes back later in the stream: every node ends with it, so this one must write it again; row 2
      // is as the message leaves it.
      const result = n.applier.applyMessage(
        STREAM,
        2,
        encodeBatch({
          origin: "1/e1",
          changes: [change(USERS, "upsert", logged - 1, [1n, "x@example.com"]), change(USERS, "upsert", logged, [2n, "y@example.com"])],
        }),
      );
      assert.equal(result.outcome, "applied");
      assert.equal(
        rows(n.path, "SELECT group_concat(id || ':' || email, ',') FROM (SELECT * FROM users ORDER BY id)"),
        "1:x@example.com,2:y@example.com",
      );
      assert.equal(appliedSeq(n.path), "2");
    } finally {
      n.db.close();
    }
  });
});

describe("the node's own changes coming back, with an app trigger", () => {
  const TRIGGER = "CREATE TRIGGER app_touch AFTER INSERT ON ratings BEGIN UPDATE Books SET title = 'touched' WHERE id = NEW.book; END;";

  for (const when of ["before marmot started", "while marmot runs, not noticed yet"]) {
    it(`are written again when the app's trigger (created ${when}) changed their row while applying another node's change`, () => {
      const n = node(when.startsWith("before") ? `${SCHEMA}\n${TRIGGER}` : SCHEMA, { origin: "1/e1" });
      try {
        if (!when.startsWith("before")) sqlite3(n.path, TRIGGER);
        sqlite3(n.path, "INSERT INTO Books VALUES (1, 'Emma', 'Austen');");
        const logged = Number(
          n.db
            .prepare(`SELECT max(__marmot_id) FROM ${quoteIdent(changeLogTable("Books"))}`)
            .pluck()
            .get(),
        );
        n.applier.noteStored(STREAM, 2, [rowKeyString(rowKeyBytes("Books", [1n]))]);
        n.db.prepare(`DELETE FROM ${quoteIdent(changeLogTable("Books"))} WHERE __marmot_id <= ?`).run(BigInt(logged));
        // Another node's rating, sequenced first. A trigger marmot has seen carries its guard and does not fire on
        // apply (its effect comes from the node that wrote the rating); one it has not seen yet rewrites book 1 here.
        n.applier.applyMessage(STREAM, 1, batch(change(RATINGS, "upsert", 3, ["ann", 1n, 4.5])));
        assert.equal(rows(n.path, "SELECT title FROM Books WHERE id = 1"), when.startsWith("before") ? "Emma" : "touched");
        // The app's own write comes after it in the stream: every node ends with it, this one too.
        n.applier.applyMessage(STREAM, 2, ownBatch(upsertBook(1, "Emma", "Austen", logged)));
        assert.equal(rows(n.path, "SELECT title FROM Books WHERE id = 1"), "Emma");
      } finally {
        n.db.close();
      }
    });
  }
});

describe("settling changes parked for a schema that did not come", () => {
  it("a change of a table that is gone goes; an upsert naming a column that lost applies without it; order is kept", () => {
    const n = node();
    try {
      const GONE: WireTable = { name: "gone", columns: ["id", "v"], keyColumns: ["id"] };
      const WIDER: WireTable = { name: "vals", columns: ["id", "v", "lost_column"], keyColumns: ["id"] };
      n.applier.applyMessage(STREAM, 1, batch(change(GONE, "upsert", 1, [1n, "x"]), change(WIDER, "upsert", 2, [7n, "kept", "lost"])));
      n.applier.applyMessage(STREAM, 2, batch(change(VALS, "upsert", 3, [7n, "later"]), change(VALS, "upsert", 4, [8n, 9007199254740993n])));
      assert.equal(parked(n.db).length, 4, "the later changes of vals wait behind the one naming a missing column");
      // Not settled while the schema stream may still bring the table or the column.
      assert.equal(n.applier.retryParked(), 0);
      assert.equal(n.applier.retryParked(Date.now() - 60_000), 0);
      assert.equal(parked(n.db).length, 4);
      // Settled: the schema stream was applied past them and neither came.
      assert.equal(n.applier.retryParked(Date.now() + 1), 3);
      assert.equal(parked(n.db).length, 0);
      assert.equal(rows(n.path, "SELECT id, v, typeof(v) FROM vals ORDER BY id"), "7|later|text\n8|9007199254740993|integer");
      assert.ok(
        n.lines.some(
          (l) =>
            /will not get/.test(l.message) && l.fields?.["dropped_with_their_table"] === 1 && l.fields?.["applied_without_missing_columns"] === 1,
        ),
      );
    } finally {
      n.db.close();
    }
  });
});
