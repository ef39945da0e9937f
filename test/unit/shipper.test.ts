// The shipper on real SQLite files with a fake publisher: what leaves the change log, when, and in which messages.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type Database from "better-sqlite3";
import { PhantomDuplicateError } from "../../src/errors.js";
import { ChangeShipper, type ShipperOptions } from "../../src/shipper.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { ChangeLogReader } from "../../src/sqlite/change-log.js";
import { openDatabase } from "../../src/sqlite/open.js";
import type { SqlValue } from "../../src/wire/value.js";
import { createHash } from "node:crypto";
import { decodeBatch, decodeReference, type WireChange } from "../../src/wire/codec.js";
import type { LargeBatchStore } from "../../src/stream/large-objects.js";
import type { BatchPublisher } from "../../src/stream/publisher.js";
import { rowKeyBytes, rowKeyString, shardOf, shardOfRow } from "../../src/wire/shard.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir, type RecordedLine } from "../helpers/sqlite.js";

after(removeTempDirs);

const SCHEMA = `
CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author TEXT);
CREATE TABLE ratings (user TEXT NOT NULL, book INTEGER NOT NULL, stars REAL, PRIMARY KEY (user, book));
CREATE TABLE notes (body TEXT, tag TEXT);
CREATE TABLE files (name TEXT PRIMARY KEY, content BLOB);
`;
const TABLES = ["Books", "ratings", "notes", "files"];

interface Attempt {
  shard: number;
  payload: Buffer;
  msgId: string;
  ok: boolean;
}

/** Records every publish; `decide` may fail an attempt by throwing. */
class FakePublisher implements BatchPublisher {
  readonly attempts: Attempt[] = [];
  constructor(private readonly decide: (attempt: Omit<Attempt, "ok">, publisher: FakePublisher) => void | Promise<void> = () => {}) {}

  async publish(shard: number, payload: Uint8Array, msgId: string): Promise<number> {
    const attempt = { shard, payload: Buffer.from(payload), msgId };
    try {
      await this.decide(attempt, this);
    } catch (err) {
      this.attempts.push({ ...attempt, ok: false });
      throw err;
    }
    this.attempts.push({ ...attempt, ok: true });
    return this.acknowledged.length;
  }

  get acknowledged(): Attempt[] {
    return this.attempts.filter((a) => a.ok);
  }

  /** Every change JetStream would now hold, with the shard its message went to. */
  changes(): { shard: number; change: WireChange }[] {
    return this.acknowledged.flatMap((a) => decodeBatch(a.payload).changes.map((change) => ({ shard: a.shard, change })));
  }
}

/** An object store in memory: what was put, and which references were recorded. */
class FakeLargeStore implements LargeBatchStore {
  readonly objects = new Map<string, Buffer>();
  readonly references: { object: string; seq: number }[] = [];
  puts = 0;
  constructor(private readonly decide: (object: string) => void | Promise<void> = () => {}) {}

  async put(object: string, payload: Buffer): Promise<void> {
    this.puts++;
    await this.decide(object);
    this.objects.set(object, Buffer.from(payload));
  }

  async referenced(object: string, seq: number): Promise<void> {
    this.references.push({ object, seq });
  }
}

interface Setup {
  path: string;
  db: Database.Database;
  reader: ChangeLogReader;
  lines: RecordedLine[];
  shipper(publisher: BatchPublisher, options?: Partial<ShipperOptions>): ChangeShipper;
}

function setup(schema = SCHEMA): Setup {
  const path = createDb(join(tempDir(), "app.sqlite"), schema);
  const db = openDatabase(path, recordingLogger());
  const reader = new ChangeLogReader(db);
  reader.setTables(installCapture(db, recordingLogger()).tables);
  const logger = recordingLogger();
  return {
    path,
    db,
    reader,
    lines: logger.lines,
    shipper: (publisher, options = {}) =>
      new ChangeShipper(
        reader,
        publisher,
        {
          origin: "1",
          epoch: "e1",
          shards: 1,
          batchMaxChanges: 512,
          maxPayload: () => 1024 * 1024,
          compress: false,
          duplicates: { windowMs: 120_000, findStored: () => Promise.reject(new Error("no retry here outlasts the duplicate window")) },
          ...options,
        },
        logger,
      ),
  };
}

/** Rows waiting in all change logs, counted by another process as an operator would. */
function pendingInFile(path: string): number {
  const sql = TABLES.map((t) => `(SELECT count(*) FROM "__marmot__${t}_change_log" WHERE __marmot_op <> 'marker')`).join(" + ");
  return Number(sqlite3(path, `SELECT ${sql};`).trim());
}

function insertBooks(path: string, from: number, count: number, title = (i: number) => `title ${i}`): void {
  const values: string[] = [];
  for (let i = from; i < from + count; i++) values.push(`(${i}, '${title(i)}', 'author ${i}')`);
  sqlite3(path, `INSERT INTO Books VALUES ${values.join(", ")};`);
}

function keyOf(change: WireChange): SqlValue[] {
  if (change.op === "delete") return change.values;
  return change.table.keyColumns.map((k) => change.values[change.table.columns.indexOf(k)]!);
}

describe("shipping the change log", () => {
  it("ships each row as the table holds it when shipped, and a row gone by then as a delete", async () => {
    const s = setup();
    try {
      sqlite3(
        s.path,
        "INSERT INTO Books VALUES (1, 'first', 'a'), (2, 'gone', 'b'), (3, 'moved', 'c');" +
          "UPDATE Books SET title = 'edited' WHERE id = 1; UPDATE Books SET id = 4 WHERE id = 3;",
      );
      // Deleted behind marmot's back (as the applier would, with no log row): the upsert finds no row.
      s.db.exec("INSERT INTO __marmot__applying VALUES (1); DELETE FROM Books WHERE id = 2; DELETE FROM __marmot__applying;");
      const fake = new FakePublisher();
      assert.equal(await s.shipper(fake).shipRound(new AbortController().signal), 6);
      const byKey = new Map(fake.changes().map(({ change }) => [String(change.op === "upsert" ? change.values[0] : change.values[0]), change]));
      assert.equal(byKey.size, 4);
      assert.deepEqual([byKey.get("1")!.op, byKey.get("1")!.values], ["upsert", [1n, "edited", "a"]]);
      assert.deepEqual([byKey.get("2")!.op, byKey.get("2")!.values], ["delete", [2n]]);
      assert.deepEqual([byKey.get("3")!.op, byKey.get("3")!.values], ["delete", [3n]]);
      assert.deepEqual([byKey.get("4")!.op, byKey.get("4")!.values], ["upsert", [4n, "moved", "c"]]);
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  it("reads rows under the schema of the moment when the app altered the table before marmot's next look", async () => {
    const s = setup();
    try {
      sqlite3(
        s.path,
        "INSERT INTO Books VALUES (1, 't1', 'a1'); ALTER TABLE Books ADD COLUMN isbn TEXT; INSERT INTO Books VALUES (2, 't2', 'a2', 'x-2');",
      );
      const fake = new FakePublisher();
      assert.equal(await s.shipper(fake).shipRound(new AbortController().signal), 2);
      assert.deepEqual(
        fake.changes().map(({ change }) => change.table.columns),
        [
          ["id", "title", "author", "isbn"],
          ["id", "title", "author", "isbn"],
        ],
      );
      assert.deepEqual(
        fake.changes().map(({ change }) => change.values),
        [
          [1n, "t1", "a1", null],
          [2n, "t2", "a2", "x-2"],
        ],
      );
      sqlite3(s.path, "ALTER TABLE Books DROP COLUMN author; INSERT INTO Books VALUES (3, 't3', 'x-3');");
      assert.equal(await s.shipper(fake).shipRound(new AbortController().signal), 1);
      assert.deepEqual(fake.changes().at(-1)!.change.values, [3n, "t3", "x-3"]);
      assert.deepEqual(fake.changes().at(-1)!.change.table.columns, ["id", "title", "isbn"]);
    } finally {
      s.db.close();
    }
  });

  it("ships what the app wrote through the CLI and empties the log once acknowledged", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 10);
      sqlite3(s.path, "INSERT INTO ratings VALUES ('ann', 1, 4.5); INSERT INTO notes VALUES ('hello', 't'); DELETE FROM Books WHERE id = 10;");
      const fake = new FakePublisher();
      const shipper = s.shipper(fake);
      assert.equal(await shipper.shipRound(new AbortController().signal), 13);
      const shipped = fake.changes().map(({ change }) => `${change.table.name}:${change.op}:${change.values.map(String).join(",")}`);
      assert.deepEqual(
        shipped.sort(),
        [
          ...Array.from({ length: 9 }, (_, i) => `Books:upsert:${i + 1},title ${i + 1},author ${i + 1}`),
          "Books:delete:10",
          "notes:upsert:1,hello,t",
          "ratings:upsert:ann,1,4.5",
        ].sort(),
      );
      assert.equal(pendingInFile(s.path), 0);
      assert.equal(await shipper.shipRound(new AbortController().signal), 0, "nothing is sent twice");
      assert.equal(fake.acknowledged.length, 1);
    } finally {
      s.db.close();
    }
  });

  it("sends a row updated many times in one round once, with its last state", async () => {
    const s = setup();
    try {
      const updates = Array.from({ length: 50 }, (_, i) => `UPDATE Books SET title = 'v${i + 1}' WHERE id = 1;`).join("\n");
      sqlite3(s.path, `INSERT INTO Books VALUES (1, 'v0', 'a'), (2, 'other', 'b');\n${updates}`);
      const fake = new FakePublisher();
      assert.equal(await s.shipper(fake).shipRound(new AbortController().signal), 52);
      const changes = fake.changes().map(({ change }) => change);
      const ofRowOne = changes.filter((c) => c.values[0] === 1n);
      assert.equal(ofRowOne.length, 1);
      assert.deepEqual(ofRowOne[0]!.values, [1n, "v50", "a"]);
      assert.equal(changes.length, 2);
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  it("empties the log only after every batch of the round was acknowledged, retrying with the same message id", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 40);
      let failuresLeft = 3;
      const pendingDuringFailures: number[] = [];
      let doomedMsgId: string | undefined;
      let acknowledgedMeanwhile = 0;
      const fake = new FakePublisher(async (attempt, publisher) => {
        const ids = decodeBatch(attempt.payload).changes.map((c) => c.values[0]);
        // The batch holding row 25 fails its first three attempts.
        if (ids.includes(25n) && failuresLeft > 0) {
          failuresLeft--;
          doomedMsgId ??= attempt.msgId;
          // Let the other batches finish first, then look at the file from another process.
          await new Promise((r) => setTimeout(r, 20));
          pendingDuringFailures.push(pendingInFile(s.path));
          acknowledgedMeanwhile = publisher.acknowledged.length;
          throw new Error("nats: timeout");
        }
      });
      const shipped = await s.shipper(fake, { batchMaxChanges: 10 }).shipRound(new AbortController().signal);
      assert.equal(shipped, 40);
      assert.deepEqual(pendingDuringFailures, [40, 40, 40], "every row stays in the log while one batch is unacknowledged");
      assert.equal(acknowledgedMeanwhile, 3, "although the other three batches were acknowledged meanwhile");
      assert.equal(pendingInFile(s.path), 0);

      const tries = fake.attempts.filter((a) => decodeBatch(a.payload).changes.some((c) => c.values[0] === 25n));
      assert.equal(tries.length, 4);
      assert.deepEqual(
        tries.map((t) => t.ok),
        [false, false, false, true],
      );
      assert.ok(
        tries.every((t) => t.msgId === doomedMsgId),
        "every retry carries the same message id",
      );
      assert.ok(
        tries.every((t) => t.payload.equals(tries[0]!.payload)),
        "and the same bytes",
      );
      const otherIds = new Set(fake.acknowledged.map((a) => a.msgId));
      assert.equal(otherIds.size, 4, "distinct batches have distinct message ids");
      assert.ok(
        s.lines.some((l) => l.level === "warn" && /waiting for JetStream/.test(l.message)),
        "the wait is logged",
      );
    } finally {
      s.db.close();
    }
  });

  it("keeps batches within scan_max_changes and the maximum payload", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 95);
      const fake = new FakePublisher();
      await s.shipper(fake, { batchMaxChanges: 10 }).shipRound(new AbortController().signal);
      assert.deepEqual(
        fake.acknowledged.map((a) => decodeBatch(a.payload).changes.length),
        [10, 10, 10, 10, 10, 10, 10, 10, 10, 5],
      );

      // Rows of about 1.5 KiB under a 16 KiB max_payload: the size, not the count, cuts these batches.
      const big = "x".repeat(1500);
      insertBooks(s.path, 1000, 60, () => big);
      const sized = new FakePublisher();
      const maxPayload = 16 * 1024;
      await s.shipper(sized, { batchMaxChanges: 512, maxPayload: () => maxPayload }).shipRound(new AbortController().signal);
      const counts = sized.acknowledged.map((a) => decodeBatch(a.payload).changes.length);
      assert.equal(
        counts.reduce((a, b) => a + b, 0),
        60,
      );
      assert.ok(counts.length > 1, `more than one message: ${counts.join(",")}`);
      for (const a of sized.acknowledged) assert.ok(a.payload.length <= maxPayload, `payload of ${a.payload.length} bytes fits`);
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  it("leaves a change larger than one message in the log with an error, ships the rest, and lets a later change of the row replace it", async () => {
    const s = setup();
    try {
      const maxPayload = 64 * 1024;
      const fake = new FakePublisher();
      const shipper = s.shipper(fake, { maxPayload: () => maxPayload });
      sqlite3(s.path, "INSERT INTO files VALUES ('small-1', x'01'), ('huge', zeroblob(200000)), ('small-2', x'02');");
      assert.equal(await shipper.shipRound(new AbortController().signal), 3);
      assert.deepEqual(
        fake
          .changes()
          .map(({ change }) => change.values[0])
          .sort(),
        ["small-1", "small-2"],
      );
      const errors = s.lines.filter((l) => l.level === "error");
      assert.equal(errors.length, 1);
      assert.match(errors[0]!.message, /larger than one NATS message/);
      assert.equal(errors[0]!.fields?.table, "files");
      assert.match(String(errors[0]!.fields?.fix), /max_payload/);
      assert.equal(sqlite3(s.path, "SELECT v_name FROM __marmot__files_change_log WHERE __marmot_op <> 'marker';").trim(), "huge");

      // It does not block rows written after it, and it is not reported again.
      sqlite3(s.path, "INSERT INTO files VALUES ('small-3', x'03'); INSERT INTO Books VALUES (1, 't', 'a');");
      assert.equal(await shipper.shipRound(new AbortController().signal), 2);
      assert.equal(fake.changes().length, 4);
      assert.equal(sqlite3(s.path, "SELECT v_name FROM __marmot__files_change_log WHERE __marmot_op <> 'marker';").trim(), "huge");
      assert.equal(s.lines.filter((l) => l.level === "error").length, 1);

      // A later, smaller change of the same row supersedes it: that one travels and the log empties.
      sqlite3(s.path, "UPDATE files SET content = x'ff' WHERE name = 'huge';");
      assert.equal(await shipper.shipRound(new AbortController().signal), 1);
      const last = fake.changes().at(-1)!.change;
      assert.deepEqual(last.values, ["huge", Buffer.from([0xff])]);
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  it("leaves everything in the log when the signal aborts during retries", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 30);
      const controller = new AbortController();
      const fake = new FakePublisher((attempt, publisher) => {
        const failed = publisher.attempts.filter((a) => !a.ok).length;
        if (decodeBatch(attempt.payload).changes.some((c) => c.values[0] === 30n)) {
          if (failed >= 2) controller.abort(new Error("marmot is stopping"));
          throw new Error("no responders");
        }
      });
      await assert.rejects(s.shipper(fake, { batchMaxChanges: 10 }).shipRound(controller.signal), /marmot is stopping|no responders/);
      assert.ok(fake.acknowledged.length >= 1, "some batches of the round were acknowledged");
      assert.equal(pendingInFile(s.path), 30, "yet every change of the round stays in the log");

      // The next process ships them all (a repeat of an acknowledged batch carries the same id, so JetStream drops it).
      const idsBefore = new Set(fake.acknowledged.map((a) => a.msgId));
      s.reader.rewind();
      const again = new FakePublisher();
      assert.equal(await s.shipper(again, { batchMaxChanges: 10 }).shipRound(new AbortController().signal), 30);
      for (const id of idsBefore)
        assert.ok(
          again.acknowledged.some((a) => a.msgId === id),
          "the same batches get the same ids",
        );
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  it("does not wait for an ack that may never come when the node stops", { timeout: 10_000 }, async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 5);
      const controller = new AbortController();
      // A server that died with the request in flight: no answer, no error.
      const silent: BatchPublisher = { publish: () => new Promise<number>(() => undefined) };
      const round = s.shipper(silent).shipRound(controller.signal);
      setTimeout(() => controller.abort(new Error("marmot is stopping")), 50);
      await assert.rejects(round, /marmot is stopping/);
      assert.equal(pendingInFile(s.path), 5, "the changes stay in the log");
    } finally {
      s.db.close();
    }
  });

  it("sends a batch again under a new id when JetStream calls it a duplicate of a message it does not hold", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 3);
      const fake = new FakePublisher((attempt, publisher) => {
        if (publisher.attempts.length === 0) throw new PhantomDuplicateError(`${attempt.msgId} is a duplicate of sequence 7, which holds nothing`);
      });
      const shipper = s.shipper(fake);
      assert.equal(await shipper.shipRound(new AbortController().signal), 3);
      const [refused, sent] = fake.attempts;
      assert.equal(refused!.ok, false);
      assert.equal(sent!.msgId, `${refused!.msgId}~1`);
      assert.deepEqual(sent!.payload, refused!.payload, "the same changes");
      assert.equal(pendingInFile(s.path), 0);
      assert.ok(s.lines.some((l) => /duplicate of a message it does not hold/.test(l.message)));
    } finally {
      s.db.close();
    }
  });

  it("says where JetStream stored each batch and which rows it holds", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 25);
      const fake = new FakePublisher();
      const stored: { shard: number; seq: number; rowKeys: readonly string[] }[] = [];
      const onStored = (shard: number, seq: number, rowKeys: readonly string[]) => stored.push({ shard, seq, rowKeys });
      await s.shipper(fake, { batchMaxChanges: 10, shards: 3, onStored }).shipRound(new AbortController().signal);
      assert.equal(stored.length, fake.acknowledged.length);
      for (const [i, attempt] of fake.acknowledged.entries()) {
        const note = stored.find((n) => n.seq === i + 1)!;
        assert.equal(note.shard, attempt.shard);
        const keys = decodeBatch(attempt.payload).changes.map((c) => rowKeyString(rowKeyBytes(c.table.name, keyOf(c))));
        assert.deepEqual(note.rowKeys, keys);
      }
      assert.equal(
        stored.reduce((n, note) => n + note.rowKeys.length, 0),
        25,
      );
    } finally {
      s.db.close();
    }
  });

  it("records per stream the highest sequence its batches were stored at, as their changes leave the log", async () => {
    const s = setup();
    try {
      const streamOf = (shard: number) => `changes-3-${shard}`;
      insertBooks(s.path, 1, 25);
      const fake = new FakePublisher();
      await s.shipper(fake, { batchMaxChanges: 4, shards: 3, streamOf }).shipRound(new AbortController().signal);
      assert.equal(pendingInFile(s.path), 0);
      for (const shard of [1, 2, 3]) {
        const seqs = fake.acknowledged.flatMap((a, i) => (a.shard === shard ? [i + 1] : []));
        assert.ok(seqs.length > 0, `shard ${shard} got batches`);
        assert.equal(s.reader.lastStoredSeq(streamOf(shard)), Math.max(...seqs), `shard ${shard}`);
      }
      // A round stopped before all its acks removes nothing, and records nothing either, though some were stored.
      const recorded = [1, 2, 3].map((shard) => s.reader.lastStoredSeq(streamOf(shard)));
      insertBooks(s.path, 100, 20);
      const stop = new AbortController();
      const failing = new FakePublisher((attempt, publisher) => {
        if (!decodeBatch(attempt.payload).changes.some((c) => c.values[0] === 119n)) return;
        if (publisher.attempts.filter((a) => !a.ok).length >= 2) stop.abort(new Error("marmot is stopping"));
        throw new Error("no responders");
      });
      await assert.rejects(s.shipper(failing, { batchMaxChanges: 4, shards: 3, streamOf }).shipRound(stop.signal));
      assert.ok(failing.acknowledged.length >= 1, "some batches of the round were stored");
      assert.equal(pendingInFile(s.path), 20);
      assert.deepEqual(
        [1, 2, 3].map((shard) => s.reader.lastStoredSeq(streamOf(shard))),
        recorded,
      );
    } finally {
      s.db.close();
    }
  });

  it("sends decodable batches, each to the shard of every row it holds", async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 100);
      const values: string[] = [];
      for (let i = 0; i < 40; i++) values.push(`('user ${i % 7} ✓', ${i}, ${i}.5)`);
      sqlite3(
        s.path,
        `INSERT INTO ratings VALUES ${values.join(", ")};
         INSERT INTO notes (body, tag) VALUES ('a', 'x'), ('b', 'y'), ('c', 'z');
         INSERT INTO files VALUES ('name with "quotes"', x'00'), ('9223372036854775807', NULL);
         DELETE FROM Books WHERE id <= 10;
         UPDATE Books SET id = id + 1000 WHERE id BETWEEN 11 AND 15;`,
      );
      const shards = 4;
      const fake = new FakePublisher();
      await s.shipper(fake, { shards, batchMaxChanges: 16 }).shipRound(new AbortController().signal);
      const seenShards = new Set<number>();
      let total = 0;
      for (const { shard, change } of fake.changes()) {
        const expected = shardOf(rowKeyBytes(change.table.name, keyOf(change)), shards);
        assert.equal(shard, expected, `${change.table.name} ${keyOf(change).map(String).join(",")}`);
        seenShards.add(shard);
        total++;
      }
      assert.equal(seenShards.size, shards, "the rows spread over every shard");
      // 100 books (10 deleted, 5 re-keyed: old keys deleted, new keys upserted) + 40 ratings + 3 notes + 2 files
      assert.equal(total, 100 + 5 + 40 + 3 + 2);
      for (const a of fake.acknowledged) assert.ok(decodeBatch(a.payload).changes.length <= 16);
    } finally {
      s.db.close();
    }
  });

  it("ships a 409,600-character text row in one message: fit is decided on its encoded bytes, not the estimate", async () => {
    const s = setup();
    try {
      const text = "a".repeat(409_600);
      sqlite3(s.path, "INSERT INTO Books VALUES (1, printf('%.*c', 409600, 'a'), 'author');");
      const fake = new FakePublisher();
      assert.equal(await s.shipper(fake).shipRound(new AbortController().signal), 1);
      assert.equal(fake.acknowledged.length, 1);
      assert.ok(fake.acknowledged[0]!.payload.length < 1024 * 1024);
      assert.deepEqual(fake.changes()[0]!.change.values, [1n, text, "author"]);
      assert.equal(pendingInFile(s.path), 0, "the row left the change log");
      assert.equal(s.lines.filter((l) => l.level === "error").length, 0);
    } finally {
      s.db.close();
    }
  });

  it("does not recurse on one change that does not fit, though the estimate said it would", { timeout: 20_000 }, async () => {
    const s = setup();
    try {
      // The server's max_payload shrank between packing and publishing (a reconnect to another server).
      let calls = 0;
      const maxPayload = () => (calls++ === 0 ? 1024 * 1024 : 100 * 1024);
      sqlite3(s.path, "INSERT INTO files VALUES ('big', randomblob(300000));");
      const fake = new FakePublisher();
      assert.equal(await s.shipper(fake, { maxPayload }).shipRound(new AbortController().signal), 1);
      assert.equal(fake.attempts.length, 0, "nothing was published");
      const errors = s.lines.filter((l) => l.level === "error");
      assert.equal(errors.length, 1);
      assert.match(errors[0]!.message, /larger than one NATS message/);
      assert.equal(sqlite3(s.path, "SELECT v_name FROM __marmot__files_change_log WHERE __marmot_op <> 'marker';").trim(), "big");
    } finally {
      s.db.close();
    }
  });

  it("stores a change larger than one message as an object first, then publishes a reference to it", async () => {
    const s = setup();
    try {
      sqlite3(s.path, "INSERT INTO files VALUES ('small', x'01'), ('huge', randomblob(3000000));");
      const fake = new FakePublisher();
      const store = new FakeLargeStore((object) => {
        // The reference never goes out before its object is stored whole.
        assert.equal(fake.attempts.filter((a) => decodeReference(a.payload)?.object === object).length, 0);
      });
      const stored: { seq: number; rowKeys: readonly string[] }[] = [];
      const shipper = s.shipper(fake, { largeBatches: store, onStored: (_shard, seq, rowKeys) => stored.push({ seq, rowKeys }) });
      assert.equal(await shipper.shipRound(new AbortController().signal), 2);
      assert.equal(pendingInFile(s.path), 0);
      for (const a of fake.acknowledged) assert.ok(a.payload.length <= 1024 * 1024);
      const refs = fake.acknowledged.map((a) => decodeReference(a.payload)).filter((r) => r !== undefined);
      assert.equal(refs.length, 1);
      const ref = refs[0]!;
      const object = store.objects.get(ref.object)!;
      assert.equal(object.length, ref.size);
      assert.deepEqual(createHash("sha256").update(object).digest(), ref.sha256);
      const change = decodeBatch(object).changes[0]!;
      assert.equal(change.values[0], "huge");
      assert.deepEqual(change.values[1], s.db.prepare("SELECT content FROM files WHERE name = 'huge'").pluck(true).get());
      // The rule that keeps the app's newer writes hears of the large row as of any other.
      const refSeq = fake.acknowledged.findIndex((a) => decodeReference(a.payload) !== undefined) + 1;
      const note = stored.find((n) => n.seq === refSeq)!;
      assert.deepEqual(note.rowKeys, [rowKeyString(rowKeyBytes("files", ["huge"]))]);
      assert.deepEqual(store.references, [{ object: ref.object, seq: refSeq }]);
    } finally {
      s.db.close();
    }
  });

  it("keeps a large change in the log when its object cannot be stored before the node stops", async () => {
    const s = setup();
    try {
      sqlite3(s.path, "INSERT INTO files VALUES ('huge', randomblob(2000000));");
      const stop = new AbortController();
      const fake = new FakePublisher();
      const store = new FakeLargeStore(() => {
        if (store.puts >= 2) stop.abort(new Error("marmot is stopping"));
        throw new Error("no responders");
      });
      await assert.rejects(s.shipper(fake, { largeBatches: store }).shipRound(stop.signal), /marmot is stopping|no responders/);
      assert.equal(fake.attempts.length, 0, "no reference to an object not stored");
      assert.equal(pendingInFile(s.path), 1, "the change stays in the log, to go again");

      s.reader.rewind();
      const working = new FakeLargeStore();
      assert.equal(await s.shipper(fake, { largeBatches: working }).shipRound(new AbortController().signal), 1);
      assert.equal(working.objects.size, 1);
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  /**
   * A stream as JetStream keeps one: it drops a repeat of a message id stored within its duplicate window. Its
   * first ack is lost (the message is stored, the publisher hears a timeout), then it is unreachable for `outageMs`.
   */
  function lossyStream(windowMs: number, outageMs: number, storeFirst: boolean) {
    const stored: { msgId: string; at: number; payload: Buffer }[] = [];
    let attempts = 0;
    let started = 0;
    const publisher: BatchPublisher = {
      async publish(_shard, payload, msgId) {
        attempts++;
        if (attempts === 1) {
          started = Date.now();
          if (storeFirst) stored.push({ msgId, at: Date.now(), payload: Buffer.from(payload) });
          throw new Error("TIMEOUT");
        }
        if (Date.now() - started < outageMs) throw new Error("no responders");
        const recent = stored.findIndex((m) => m.msgId === msgId && Date.now() - m.at < windowMs);
        if (recent >= 0) return recent + 1;
        stored.push({ msgId, at: Date.now(), payload: Buffer.from(payload) });
        return stored.length;
      },
    };
    const findStored = async (_shard: number, msgId: string, sinceMs: number) => {
      const i = stored.findIndex((m) => m.msgId === msgId && m.at >= sinceMs);
      return i >= 0 ? i + 1 : undefined;
    };
    return { stored, publisher, duplicates: { windowMs, findStored } };
  }

  it("stores a batch once though its first ack was lost and the retries outlast the duplicate window", { timeout: 20_000 }, async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 3);
      const stream = lossyStream(400, 1000, true);
      const seqs: number[] = [];
      const shipper = s.shipper(stream.publisher, { duplicates: stream.duplicates, onStored: (_shard, seq) => seqs.push(seq) });
      assert.equal(await shipper.shipRound(new AbortController().signal), 3);
      assert.equal(stream.stored.length, 1, "the stream holds the batch once");
      assert.deepEqual(seqs, [1], "the shipper learned where the first attempt landed");
      assert.equal(pendingInFile(s.path), 0);
      assert.ok(s.lines.some((l) => /was stored already; its ack was lost/.test(l.message)));
    } finally {
      s.db.close();
    }
  });

  it("sends a batch again after a look finds that none of its attempts landed", { timeout: 20_000 }, async () => {
    const s = setup();
    try {
      insertBooks(s.path, 1, 3);
      const stream = lossyStream(400, 1000, false);
      assert.equal(await s.shipper(stream.publisher, { duplicates: stream.duplicates }).shipRound(new AbortController().signal), 3);
      assert.equal(stream.stored.length, 1);
      assert.equal(decodeBatch(stream.stored[0]!.payload).changes.length, 3);
      assert.equal(pendingInFile(s.path), 0);
    } finally {
      s.db.close();
    }
  });

  it("keeps every row of a table with a UNIQUE value besides its key on one shard, so one stream orders their clashes", async () => {
    const s = setup(`${SCHEMA}
      CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
      CREATE TABLE handles (id TEXT PRIMARY KEY, handle TEXT);
      CREATE UNIQUE INDEX handles_by_handle ON handles (lower(handle));`);
    try {
      const users: string[] = [];
      const handles: string[] = [];
      for (let i = 0; i < 60; i++) {
        users.push(`(${i}, 'u${i}@example.com', 'user ${i}')`);
        handles.push(`('h${i}', 'Handle${i}')`);
      }
      sqlite3(s.path, `INSERT INTO users VALUES ${users.join(", ")}; INSERT INTO handles VALUES ${handles.join(", ")};`);
      insertBooks(s.path, 1, 60);
      const shards = 4;
      const fake = new FakePublisher();
      await s.shipper(fake, { shards }).shipRound(new AbortController().signal);
      const shardsOf = (table: string) =>
        new Set(
          fake
            .changes()
            .filter(({ change }) => change.table.name === table)
            .map(({ shard }) => shard),
        );
      assert.deepEqual([...shardsOf("users")], [shardOfRow("users", new Uint8Array(), shards, true)]);
      assert.deepEqual([...shardsOf("handles")], [shardOfRow("handles", new Uint8Array(), shards, true)]);
      assert.equal(shardsOf("Books").size, shards, "a table without such a constraint still spreads");
    } finally {
      s.db.close();
    }
  });

  it("sends every change of a table whose rows clash, in the app's order: none folded, batches one after the other", async () => {
    const s = setup(`${SCHEMA}\nCREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE);`);
    try {
      // The app's REPLACE removes row 1 here, unseen by the AFTER triggers: marmot's BEFORE trigger logs row 1's key,
      // so its delete travels before row 2, whose later change to 'b@example.com' then clashes with nothing.
      sqlite3(
        s.path,
        `INSERT INTO users VALUES (1, 'a@example.com'), (3, 'c@example.com'), (4, 'd@example.com'), (5, 'e@example.com');
         INSERT OR REPLACE INTO users VALUES (2, 'a@example.com');
         UPDATE users SET email = 'b@example.com' WHERE id = 2;`,
      );
      // The first batch is slow to be acknowledged: a later batch of the table must not overtake it.
      let first = true;
      const fake = new FakePublisher(async () => {
        if (first) {
          first = false;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      });
      const shipper = s.shipper(fake, { shards: 4, batchMaxChanges: 2 });
      while ((await shipper.shipRound(new AbortController().signal)) > 0);
      // Each change carries its row as it is when shipped (row 1 is gone by then): the key-only change log.
      const emails = fake.changes().map(({ change }) => `${change.op} ${change.values[0]}${change.op === "upsert" ? `:${change.values[1]}` : ""}`);
      assert.deepEqual(emails, [
        "delete 1",
        "upsert 3:c@example.com",
        "upsert 4:d@example.com",
        "upsert 5:e@example.com",
        "delete 1",
        "upsert 2:b@example.com",
        "upsert 2:b@example.com",
      ]);
      assert.equal(sqlite3(s.path, `SELECT count(*) FROM "__marmot__users_change_log" WHERE __marmot_op <> 'marker';`).trim(), "0");
    } finally {
      s.db.close();
    }
  });
});
