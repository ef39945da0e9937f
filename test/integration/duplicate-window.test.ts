// A publish whose ack is lost, retried for longer than the stream's duplicate window, against a real nats-server:
// the batch is stored once. And marmot sets the window on the streams it creates and on those an older one made.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import { defaultConfig } from "../../src/config/defaults.js";
import { ChangeShipper } from "../../src/shipper.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { ChangeLogReader } from "../../src/sqlite/change-log.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { DUPLICATE_WINDOW_MS } from "../../src/stream/duplicate-window.js";
import { JetStreamPublisher, type BatchPublisher } from "../../src/stream/publisher.js";
import { ensureStreams } from "../../src/stream/streams.js";
import { decodeBatch } from "../../src/wire/codec.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();
after(removeTempDirs);

describe("the duplicate window", { timeout: 90_000 }, () => {
  let server: TestNatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;

  before(async () => {
    server = await startNatsServer();
    nc = await connect({ servers: server.url });
    jsm = await jetstreamManager(nc);
  });

  after(async () => {
    await nc?.close();
    await server?.stop();
  });

  test("is set on a new stream, and on a stream an older marmot created, though update_existing is off", async () => {
    const config = defaultConfig();
    config.nats.streamPrefix = "windows";
    config.nats.subjectPrefix = "windows-log";
    config.replicationLog.shards = 2;
    // Shard 1: created by an older marmot, with the server's default window. Shard 2: a longer window set by hand.
    await jsm.streams.add({ name: "windows-2-1", subjects: ["windows-log-2-1"], max_msgs: config.replicationLog.maxEntries });
    await jsm.streams.add({
      name: "windows-2-2",
      subjects: ["windows-log-2-2"],
      max_msgs: config.replicationLog.maxEntries,
      duplicate_window: nanos(3_600_000),
    });
    assert.equal(config.replicationLog.updateExisting, false);
    const logger = recordingLogger();
    await ensureStreams(jsm, config, logger);
    assert.equal((await jsm.streams.info("windows-2-1")).config.duplicate_window, nanos(DUPLICATE_WINDOW_MS));
    assert.equal((await jsm.streams.info("windows-2-2")).config.duplicate_window, nanos(3_600_000), "a longer window is kept");
    assert.ok(logger.lines.some((l) => /set the stream's duplicate window/.test(l.message) && l.fields?.stream === "windows-2-1"));

    config.nats.streamPrefix = "fresh";
    config.nats.subjectPrefix = "fresh-log";
    await ensureStreams(jsm, config, recordingLogger());
    assert.equal((await jsm.streams.info("fresh-2-1")).config.duplicate_window, nanos(DUPLICATE_WINDOW_MS));
  });

  test("a batch whose first ack was lost and whose retries outlast the window is stored once", async () => {
    const windowMs = 2000;
    const config = defaultConfig();
    config.nats.streamPrefix = "lossy";
    config.nats.subjectPrefix = "lossy-log";
    config.replicationLog.shards = 1;
    const streams = await ensureStreams(jsm, config, recordingLogger(), undefined, undefined, windowMs);
    assert.equal((await jsm.streams.info("lossy-1-1")).config.duplicate_window, nanos(windowMs));

    const real = new JetStreamPublisher(jetstream(nc), jsm, streams);
    // The first publish reaches the stream but its ack is lost; then the server is out of reach for 3 windows.
    let attempts = 0;
    let lostAt = 0;
    const lossy: BatchPublisher = {
      async publish(shard, payload, msgId) {
        attempts++;
        if (attempts === 1) {
          await real.publish(shard, payload, msgId);
          lostAt = Date.now();
          throw new Error("TIMEOUT");
        }
        if (Date.now() - lostAt < 3 * windowMs) throw new Error("no responders");
        return real.publish(shard, payload, msgId);
      },
    };

    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    const db = openDatabase(path, recordingLogger());
    try {
      const reader = new ChangeLogReader(db);
      reader.setTables(installCapture(db, recordingLogger()).tables);
      sqlite3(path, "INSERT INTO t VALUES (1, 'one'), (2, 'two');");
      const logger = recordingLogger();
      const shipper = new ChangeShipper(
        reader,
        lossy,
        {
          origin: "1",
          epoch: "e1",
          shards: 1,
          batchMaxChanges: 512,
          maxPayload: () => 1024 * 1024,
          compress: false,
          duplicates: { windowMs, findStored: (...args) => real.findStored(...args) },
        },
        logger,
      );
      assert.equal(await shipper.shipRound(new AbortController().signal), 2);
      assert.ok(attempts > 2, "the shipper retried");
      const state = (await jsm.streams.info("lossy-1-1")).state;
      assert.equal(state.messages, 1, "the stream holds the batch once");
      assert.equal(decodeBatch((await jsm.streams.getMessage("lossy-1-1", { seq: 1 }))!.data).changes.length, 2);
      assert.ok(
        logger.lines.some((l) => /was stored already; its ack was lost/.test(l.message)),
        JSON.stringify(logger.lines),
      );
      assert.equal(sqlite3(path, "SELECT count(*) FROM __marmot__t_change_log WHERE __marmot_op <> 'marker';").trim(), "0");
    } finally {
      db.close();
    }
  });
});
