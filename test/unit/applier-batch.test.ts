// Several delivered messages applied in one transaction: all or none, the last sequence recorded, duplicates skipped.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type Database from "better-sqlite3";
import { Applier } from "../../src/sqlite/applier.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { APPLIED_TABLE, PARKED_TABLE } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { encodeBatch, type WireTable } from "../../src/wire/codec.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const STREAM = "marmot-changes-1-1";
const BOOKS: WireTable = { name: "Books", columns: ["id", "title"], keyColumns: ["id"] };

function node(): { path: string; db: Database.Database; applier: Applier } {
  const path = createDb(
    join(tempDir(), "app.sqlite"),
    "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL); CREATE TABLE vals (id INTEGER PRIMARY KEY, v);",
  );
  const db = openDatabase(path, recordingLogger());
  // Capture first: it creates the internal tables the applier uses.
  const captured = installCapture(db, recordingLogger());
  const applier = new Applier(db, recordingLogger());
  applier.setTables(captured.tables);
  return { path, db, applier };
}

function message(seq: number, ...books: [number, string][]) {
  const data = encodeBatch({
    origin: "2",
    changes: books.map(([id, title], i) => ({ table: BOOKS, op: "upsert" as const, changeId: seq * 100 + i, values: [BigInt(id), title] })),
  });
  return { seq, data };
}

const rows = (path: string, sql: string) => sqlite3(path, sql).trim();
const appliedSeq = (path: string) => rows(path, `SELECT seq FROM ${APPLIED_TABLE} WHERE stream = '${STREAM}'`);

describe("applying several messages at once", () => {
  it("applies them in order in one call and records the last sequence", () => {
    const n = node();
    try {
      const results = n.applier.applyMessages(STREAM, [message(1, [1, "Emma"]), message(2, [2, "Dracula"]), message(3, [1, "Persuasion"])]);
      assert.deepEqual(
        results.map((r) => r.outcome),
        ["applied", "applied", "applied"],
      );
      assert.equal(rows(n.path, "SELECT group_concat(id || '=' || title, ',') FROM (SELECT * FROM Books ORDER BY id)"), "1=Persuasion,2=Dracula");
      assert.equal(appliedSeq(n.path), "3");
      assert.equal(n.applier.appliedSequence(STREAM), 3);
    } finally {
      n.db.close();
    }
  });

  it("skips messages at or below the applied sequence, also inside one call", () => {
    const n = node();
    try {
      n.applier.applyMessage(STREAM, 2, message(2, [1, "Emma"]).data);
      const results = n.applier.applyMessages(STREAM, [
        message(1, [1, "old"]),
        message(2, [1, "old again"]),
        message(3, [2, "Dracula"]),
        message(3, [2, "repeat"]),
      ]);
      assert.deepEqual(
        results.map((r) => r.outcome),
        ["duplicate", "duplicate", "applied", "duplicate"],
      );
      assert.equal(rows(n.path, "SELECT group_concat(title, ',') FROM (SELECT * FROM Books ORDER BY id)"), "Emma,Dracula");
      assert.equal(appliedSeq(n.path), "3");
      assert.deepEqual(
        n.applier.applyMessages(STREAM, [message(3, [9, "x"])]).map((r) => r.outcome),
        ["duplicate"],
      );
    } finally {
      n.db.close();
    }
  });

  it("applies none of them when the database fails part-way, and all of them when retried", () => {
    const n = node();
    try {
      let armed = true;
      n.db.function("fail_when_armed", () => {
        if (armed) throw new Error("disk on fire");
        return 0;
      });
      n.db.exec("CREATE TRIGGER books_guard AFTER INSERT ON Books WHEN NEW.id = 3 BEGIN SELECT fail_when_armed(); END");
      const messages = [message(1, [1, "Emma"]), message(2, [2, "Dracula"]), message(3, [3, "Ulysses"])];
      assert.throws(() => n.applier.applyMessages(STREAM, messages), /disk on fire/);
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "0");
      assert.equal(appliedSeq(n.path), "");
      assert.equal(n.applier.appliedSequence(STREAM), 0);
      armed = false;
      assert.deepEqual(
        n.applier.applyMessages(STREAM, messages).map((r) => r.outcome),
        ["applied", "applied", "applied"],
      );
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "3");
      assert.equal(appliedSeq(n.path), "3");
    } finally {
      n.db.close();
    }
  });

  it("parks an undecodable message among good ones and goes on", () => {
    const n = node();
    try {
      const results = n.applier.applyMessages(STREAM, [
        message(1, [1, "Emma"]),
        { seq: 2, data: Buffer.from("not a batch") },
        message(3, [2, "Dracula"]),
      ]);
      assert.deepEqual(
        results.map((r) => r.outcome),
        ["applied", "parked", "applied"],
      );
      assert.equal(rows(n.path, "SELECT count(*) FROM Books"), "2");
      assert.equal(rows(n.path, `SELECT seq FROM ${PARKED_TABLE}`), "2");
      assert.equal(appliedSeq(n.path), "3");
    } finally {
      n.db.close();
    }
  });
});
