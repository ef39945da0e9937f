// The agreement check of two nodes on real SQLite files written by the sqlite3 CLI, sharing an in-memory stand-in
// for the KV bucket (the e2e test runs it through real nats-server): what the status reads, and when a node keeps
// quiet.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { KV, KvWatchEntry } from "@nats-io/kv";
import { Agreement, type AgreementSummary } from "../../src/cluster/agreement.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { APPLIED_TABLE, APPLYING_TABLE } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { waitFor } from "../helpers/marmot.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir, type RecordedLine } from "../helpers/sqlite.js";

after(removeTempDirs);

const STREAMS = [
  { shard: 1, stream: "marmot-changes-2-1" },
  { shard: 2, stream: "marmot-changes-2-2" },
];

/** Just what the agreement uses of a KV bucket: put, and a watch that replays the last values, then follows. */
class MemoryBucket {
  private readonly entries = new Map<string, string>();
  private readonly watchers = new Set<(key: string, value: string) => void>();

  async put(key: string, value: string): Promise<number> {
    this.entries.set(key, value);
    for (const w of this.watchers) w(key, value);
    return this.entries.size;
  }

  async watch(): Promise<AsyncIterable<KvWatchEntry> & { stop(): void }> {
    const queue: KvWatchEntry[] = [];
    let wake: (() => void) | undefined;
    let stopped = false;
    const push = (key: string, value: string) => {
      queue.push({ key, operation: "PUT", json: () => JSON.parse(value) } as unknown as KvWatchEntry);
      wake?.();
    };
    for (const [key, value] of this.entries) push(key, value);
    this.watchers.add(push);
    return {
      stop: () => {
        stopped = true;
        this.watchers.delete(push);
        wake?.();
      },
      async *[Symbol.asyncIterator]() {
        while (!stopped) {
          const next = queue.shift();
          if (next) yield next;
          else await new Promise<void>((resolve) => (wake = resolve));
        }
      },
    };
  }
}

/** A node's database after applying the same stream: the rows, and the sequences recorded as the applier does. */
function database(rows: string): string {
  const path = createDb(
    join(tempDir(), "app.sqlite"),
    "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT); CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE);",
  );
  const db = openDatabase(path, recordingLogger());
  installCapture(db, recordingLogger());
  db.close();
  // Written the way the applier writes: capture off for the transaction, the applied sequences recorded with it.
  sqlite3(
    path,
    `BEGIN; INSERT INTO "${APPLYING_TABLE}" VALUES (1); ${rows} DELETE FROM "${APPLYING_TABLE}"; INSERT INTO "${APPLIED_TABLE}" VALUES ('marmot-changes-2-1', 5), ('marmot-changes-2-2', 7); COMMIT;`,
  );
  return path;
}

function start(nodeId: string, path: string, bucket: MemoryBucket, signal: AbortSignal) {
  const db = openDatabase(path, recordingLogger());
  const { tables } = installCapture(db, recordingLogger());
  db.close();
  const logger = recordingLogger();
  const agreement = new Agreement(
    {
      dbPath: path,
      nodeId,
      shards: 2,
      streams: STREAMS,
      tables: () => tables,
      appliedSequence: (stream) => (stream.endsWith("-1") ? 5 : 7),
      caughtUp: () => true,
      openBucket: async () => bucket as unknown as KV,
      quietMs: 20,
      checkMs: 20,
      redigestMs: 100,
    },
    logger,
  );
  return { agreement, lines: logger.lines, running: agreement.run(signal) };
}

const ROWS = "INSERT INTO Books VALUES (1, 'Emma'), (2, 'Dracula'), (3, 'Persuasion'); INSERT INTO users VALUES (1, 'a@example.com');";
const errors = (lines: RecordedLine[]) => lines.filter((l) => l.level === "error");

describe("agreement between nodes", () => {
  it("is 'agree' for identical rows, and names the table, shard, sequence and nodes once one changes behind marmot's back", async () => {
    const controller = new AbortController();
    const bucket = new MemoryBucket();
    const [path1, path2] = [database(ROWS), database(ROWS)];
    const one = start("1", path1, bucket, controller.signal);
    const two = start("2", path2, bucket, controller.signal);
    try {
      assert.equal(one.agreement.summary().state, "unknown", "nothing compared yet");
      await waitFor(
        () => one.agreement.summary().state === "agree" && two.agreement.summary().state === "agree",
        30_000,
        () => JSON.stringify(one.agreement.summary()),
      );
      assert.deepEqual(errors(one.lines), []);

      sqlite3(
        path2,
        `BEGIN; INSERT INTO "${APPLYING_TABLE}" VALUES (1); UPDATE Books SET title = 'changed' WHERE id = 2; DELETE FROM "${APPLYING_TABLE}"; COMMIT;`,
      );
      await waitFor(
        () => one.agreement.summary().state === "disagree",
        30_000,
        () => JSON.stringify(one.agreement.summary()),
      );
      const summary: AgreementSummary = one.agreement.summary();
      assert.equal(summary.mismatches.length, 1);
      const [mismatch] = summary.mismatches;
      assert.equal(mismatch!.table, "Books");
      assert.deepEqual(mismatch!.nodes, ["1", "2"]);
      assert.equal(mismatch!.seq, mismatch!.shard === 1 ? 5 : 7);
      const line = errors(one.lines).find((l) => /nodes disagree/.test(l.message));
      assert.equal(line?.fields?.table, "Books");
      assert.equal(line?.fields?.nodes, "1,2");

      // Put back: they agree again.
      sqlite3(
        path2,
        `BEGIN; INSERT INTO "${APPLYING_TABLE}" VALUES (1); UPDATE Books SET title = 'Dracula' WHERE id = 2; DELETE FROM "${APPLYING_TABLE}"; COMMIT;`,
      );
      await waitFor(
        () => one.agreement.summary().state === "agree",
        30_000,
        () => JSON.stringify(one.agreement.summary()),
      );
    } finally {
      controller.abort(new Error("test over"));
      await Promise.all([one.running, two.running]);
    }
  });

  it("does not digest while the app's change is not published: the rows are not what the stream made them", async () => {
    const controller = new AbortController();
    const bucket = new MemoryBucket();
    const [path1, path2] = [database(ROWS), database(ROWS)];
    // Through the capture triggers, as the app writes: the change waits in node 2's change log.
    sqlite3(path2, "UPDATE Books SET title = 'new' WHERE id = 1;");
    const one = start("1", path1, bucket, controller.signal);
    const two = start("2", path2, bucket, controller.signal);
    try {
      await waitFor(
        () => two.lines.some((l) => /not digesting yet/.test(l.message) && /change logs/.test(String(l.fields?.reason))),
        30_000,
        () => "node 2 to say why it does not digest",
      );
      await waitFor(
        () => one.lines.some((l) => /digested quiet shards/.test(l.message)),
        30_000,
        () => "node 1 to digest",
      );
      assert.equal(one.agreement.summary().state, "unknown", "node 1 has nothing to compare with");
      assert.deepEqual([...errors(one.lines), ...errors(two.lines)], []);
    } finally {
      controller.abort(new Error("test over"));
      await Promise.all([one.running, two.running]);
    }
  });
});
