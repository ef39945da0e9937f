// A node that finds messages gone from a stream before it applied them says so: an error line, the
// missed_messages metric, and the count its status reads. Real nats-server, real SQLite file.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Metrics } from "../../src/metrics.js";
import { Applier } from "../../src/sqlite/applier.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { ShardConsumer } from "../../src/stream/consumer.js";
import { encodeBatch } from "../../src/wire/codec.js";
import { waitFor } from "../helpers/marmot.js";
import { startNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();
after(removeTempDirs);

test("messages the stream dropped before this node applied them are counted and reported", async () => {
  const server = await startNatsServer();
  const nc = await connect({ servers: server.url });
  const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT);");
  const db = openDatabase(path, recordingLogger());
  const controller = new AbortController();
  let running: Promise<void> | undefined;
  try {
    const jsm = await jetstreamManager(nc);
    const shard = { shard: 1, stream: "marmot-changes-1-1", subject: "marmot-change-log-1-1" };
    // Retention keeps the last 3 messages: the 7 before them are gone before this node ever reads the stream.
    await jsm.streams.add({ name: shard.stream, subjects: [shard.subject], max_msgs: 3 });
    const js = jetstream(nc);
    const books = { name: "Books", columns: ["id", "title"], keyColumns: ["id"] };
    for (let i = 1; i <= 10; i++) {
      await js.publish(
        shard.subject,
        encodeBatch({ origin: "2/e1", changes: [{ table: books, op: "upsert", changeId: i, values: [BigInt(i), `book ${i}`] }] }),
      );
    }

    // Capture first: it creates the internal tables the applier uses.
    const { tables } = installCapture(db, recordingLogger());
    const applier = new Applier(db, recordingLogger());
    applier.setTables(tables);
    const metrics = new Metrics();
    const logger = recordingLogger();
    const consumer = new ShardConsumer(js, jsm, shard, applier, { durableName: "node-1" }, logger, metrics);
    running = consumer.run(controller.signal);
    await waitFor(
      () => applier.appliedSequence(shard.stream) === 10,
      30_000,
      () => `the stream applied to 10, at ${applier.appliedSequence(shard.stream)}`,
    );

    assert.equal(sqlite3(path, "SELECT group_concat(id) FROM Books;").trim(), "8,9,10", "only what the stream still held arrived");
    assert.equal(metrics.missedMessages.get({ stream: shard.stream }), 7);
    assert.match(metrics.render(), /marmot_missed_messages\{stream="marmot-changes-1-1"\} 7/);
    const line = logger.lines.find((l) => l.level === "error" && /missed changes/.test(l.message));
    assert.ok(line, "an error line says the node missed changes");
    assert.equal(line.fields?.missed_from, 1);
    assert.equal(line.fields?.missed_to, 7);
  } finally {
    controller.abort(new Error("test over"));
    await running;
    await nc.close();
    db.close();
    await server.stop();
  }
});
