// The own-writes rule on its own, on a real SQLite file the app writes through the sqlite3 CLI: no network.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { installCapture } from "../../src/sqlite/capture.js";
import { changeLogTable } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { OwnWrites, type OwnWritesScan } from "../../src/sqlite/own-writes.js";
import { quoteIdent } from "../../src/sqlite/quote.js";
import type { TableInfo } from "../../src/sqlite/table.js";
import { encodeBatch, type WireChange, type WireTable } from "../../src/wire/codec.js";
import { rowKeyBytes, rowKeyString } from "../../src/wire/shard.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const STREAM = "marmot-changes-1-1";
const OTHER_STREAM = "marmot-changes-1-2";
const ORIGIN = "1/e1";
const BOOKS: WireTable = { name: "Books", columns: ["id", "title"], keyColumns: ["id"] };

/** `origin` null: a node that does not publish. */
function setup(origin: string | null = ORIGIN) {
  const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT);");
  const db = openDatabase(path, recordingLogger());
  const { tables } = installCapture(db, recordingLogger());
  const books = tables.find((t) => t.name === "Books") as TableInfo;
  return { path, db, books, own: new OwnWrites(db, origin ?? undefined) };
}

const rowKey = (id: number) => rowKeyString(rowKeyBytes("Books", [BigInt(id)]));
const upsert = (id: number, changeId: number): WireChange => ({ table: BOOKS, op: "upsert", changeId, values: [BigInt(id), `title ${id}`] });
const from = (seq: number, own = false, stream = STREAM) => ({ stream, seq, own });
const scan = (): OwnWritesScan => new Map();

describe("the own-writes record", () => {
  it("is trimmed by sequence even when the acks came back out of order", () => {
    const { db, own } = setup();
    try {
      // One round's acks arrive in any order: 10 before 5.
      own.noteStored(STREAM, 10, [rowKey(1)], 0);
      own.noteStored(STREAM, 5, [rowKey(2)], 0);
      assert.equal(own.size, 2);
      own.appliedUpTo(STREAM, 7);
      assert.equal(own.size, 1, "the row stored at 5 is applied back: only the one stored at 10 is still on its way");
      own.appliedUpTo(STREAM, 10);
      assert.equal(own.size, 0);
    } finally {
      db.close();
    }
  });

  it("stays as small as the rows on their way while the stream is not applied (a stalled consumer)", () => {
    const { db, own } = setup();
    try {
      // The app rewrites the same 10 rows 10,000 times; nothing is applied back meanwhile.
      for (let seq = 1; seq <= 10_000; seq++) own.noteStored(STREAM, seq, [rowKey(seq % 10)], 0);
      assert.equal(own.size, 10);
      own.appliedUpTo(STREAM, 10_000);
      assert.equal(own.size, 0);
    } finally {
      db.close();
    }
  });

  it("skips an older change of a stored row of the same stream until the stream is applied past it", () => {
    const { db, books, own } = setup();
    try {
      own.noteStored(STREAM, 5, [rowKey(1)], 0);
      assert.equal(own.supersedes(books, [1n], upsert(1, 3), from(3), scan()), true, "sequenced before the app's write: skipped");
      assert.equal(own.supersedes(books, [2n], upsert(2, 3), from(3), scan()), false, "another row applies");
      assert.equal(own.supersedes(books, [1n], upsert(1, 3), from(3, false, OTHER_STREAM), scan()), false, "another stream orders nothing here");
      assert.equal(own.supersedes(books, [1n], upsert(1, 9), from(6), scan()), false, "sequenced after it: applies");
      own.appliedUpTo(STREAM, 5);
      assert.equal(own.supersedes(books, [1n], upsert(1, 3), from(4), scan()), false, "once applied back, nothing is kept");
    } finally {
      db.close();
    }
  });

  it("skips another node's change of a row the app changed and marmot has not published yet", () => {
    const { path, db, books, own } = setup();
    try {
      sqlite3(path, "INSERT INTO Books VALUES (1, 'Emma');");
      assert.equal(own.supersedes(books, [1n], upsert(1, 7), from(1), scan()), true);
      assert.equal(own.supersedes(books, [2n], upsert(2, 7), from(1), scan()), false);
    } finally {
      db.close();
    }
  });

  it("takes the app's change out of the change log when it comes back from the stream", () => {
    const { path, db, books, own } = setup();
    try {
      sqlite3(path, "INSERT INTO Books VALUES (1, 'Emma');");
      const id = Number(
        db
          .prepare(`SELECT max(__marmot_id) FROM ${quoteIdent(changeLogTable("Books"))}`)
          .pluck()
          .get(),
      );
      db.transaction(() => assert.equal(own.supersedes(books, [1n], upsert(1, id), from(1, true), scan()), false))();
      const left = db
        .prepare(`SELECT count(*) FROM ${quoteIdent(changeLogTable("Books"))} WHERE __marmot_op <> 'marker'`)
        .pluck()
        .get();
      assert.equal(Number(left), 0);
    } finally {
      db.close();
    }
  });

  it("skips nothing in a table whose rows clash on a UNIQUE value, yet takes its own changes out of the log", () => {
    const { path, db, books, own } = setup();
    try {
      const users = { ...books, name: "Books", uniqueBeyondKey: true };
      sqlite3(path, "INSERT INTO Books VALUES (1, 'Emma');");
      own.noteStored(STREAM, 5, [rowKey(1)], 0);
      assert.equal(own.supersedes(users, [1n], upsert(1, 99), from(3), scan()), false, "another node's change of the row applies");
      const id = Number(
        db
          .prepare(`SELECT max(__marmot_id) FROM ${quoteIdent(changeLogTable("Books"))}`)
          .pluck()
          .get(),
      );
      assert.equal(own.supersedes(users, [1n], upsert(1, id), from(4, true), scan()), false);
      const left = db
        .prepare(`SELECT count(*) FROM ${quoteIdent(changeLogTable("Books"))} WHERE __marmot_op <> 'marker'`)
        .pluck()
        .get();
      assert.equal(Number(left), 0, "its own change came back: it left the change log");
    } finally {
      db.close();
    }
  });

  it("reads its own messages back at start, and keeps nothing without an origin (publish = false)", () => {
    const mine = encodeBatch({ origin: ORIGIN, changes: [upsert(1, 1), upsert(2, 2)] });
    const theirs = encodeBatch({ origin: "2/e9", changes: [upsert(3, 1)] });
    const { db, own } = setup();
    try {
      assert.equal(own.noteStoredMessage(STREAM, 4, mine, 0), 2);
      assert.equal(own.noteStoredMessage(STREAM, 5, theirs, 0), 0);
      assert.equal(own.noteStoredMessage(STREAM, 3, Buffer.from("not a batch"), 0), 0);
      assert.equal(own.noteStoredMessage(STREAM, 2, mine, 2), 0, "applied already");
      assert.equal(own.size, 2);
    } finally {
      db.close();
    }
    const publishNothing = setup(null);
    try {
      publishNothing.own.noteStored(STREAM, 5, [rowKey(1)], 0);
      assert.equal(publishNothing.own.size, 0);
      sqlite3(publishNothing.path, "INSERT INTO Books VALUES (1, 'Emma');");
      assert.equal(publishNothing.own.supersedes(publishNothing.books, [1n], upsert(1, 7), from(1), scan()), false);
    } finally {
      publishNothing.db.close();
    }
  });
});
