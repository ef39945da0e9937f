// The publisher against a real nats-server: the sequence of each stored batch, and duplicates it must not believe.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { PhantomDuplicateError } from "../../src/errors.js";
import { JetStreamPublisher } from "../../src/stream/publisher.js";
import type { ShardStream } from "../../src/stream/streams.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";

useProcessCleanup();

const SHARD: ShardStream = { shard: 1, stream: "changes-1-1", subject: "change-log-1-1" };

describe("publishing batches to JetStream", { timeout: 60_000 }, () => {
  let server: TestNatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let publisher: JetStreamPublisher;

  before(async () => {
    server = await startNatsServer();
    nc = await connect({ servers: server.url });
    jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: SHARD.stream, subjects: [SHARD.subject] });
    publisher = new JetStreamPublisher(jetstream(nc), jsm, [SHARD]);
  });

  after(async () => {
    await nc?.close();
    await server?.stop();
  });

  test("returns where each batch was stored; a retry of a stored batch returns the same sequence", async () => {
    const first = await publisher.publish(1, Buffer.from("batch a"), "node-1-a");
    const second = await publisher.publish(1, Buffer.from("batch b"), "node-1-b");
    assert.equal(second, first + 1);
    assert.equal(await publisher.publish(1, Buffer.from("batch a"), "node-1-a"), first, "a repeat is the stored message");
    assert.equal((await jsm.streams.info(SHARD.stream)).state.messages, 2);
  });

  test("refuses a duplicate answer for a message the stream does not hold", async () => {
    // The server remembers the id in its duplicate window, but the message is gone from the stream: the answer a
    // former stream leader can give after a partition for a message that never reached the stream.
    const seq = await publisher.publish(1, Buffer.from("batch c"), "node-1-c");
    await jsm.streams.deleteMessage(SHARD.stream, seq);
    await assert.rejects(publisher.publish(1, Buffer.from("batch c"), "node-1-c"), (err: unknown) => {
      assert.ok(err instanceof PhantomDuplicateError, String(err));
      assert.match(err.message, new RegExp(`node-1-c.*duplicate of sequence ${seq} of ${SHARD.stream}, which holds nothing`));
      return true;
    });
    // Under a new id the same batch is stored.
    const again = await publisher.publish(1, Buffer.from("batch c"), "node-1-c~1");
    assert.ok(again > seq);
    assert.equal((await jsm.streams.getMessage(SHARD.stream, { seq: again }))?.string(), "batch c");
  });
});
