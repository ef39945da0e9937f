// Large changes kept as objects, against a real nats-server: a reference to a missing or corrupt object is parked
// with its reason by two real marmot processes, which go on; and the cleanup removes only objects whose reference
// the stream no longer holds.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { silentLogger } from "../../src/log.js";
import { JetStreamLargeBatches, largeBatchBucket } from "../../src/stream/large-objects.js";
import { encodeBatch, encodeReference } from "../../src/wire/codec.js";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE docs (id INTEGER PRIMARY KEY, data BLOB);";
/** shards = 1 with the default prefixes */
const SUBJECT = "marmot-change-log-1-1";
const STREAM = "marmot-changes-1-1";

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest();

describe("large-change objects", { timeout: 120_000 }, () => {
  let server: TestNatsServer;
  let cluster: TestCluster;
  let nc: NatsConnection | undefined;

  before(async () => {
    server = await startNatsServer();
    cluster = await TestCluster.create({ natsUrls: [server.url], size: 2, schema: SCHEMA });
    await cluster.startAll();
    nc = await connect({ servers: server.url });
  });

  after(async () => {
    await nc?.close();
    try {
      await cluster?.stopAll();
    } finally {
      await server?.stop();
    }
  });

  test("a reference to a missing or a corrupt object is parked with its reason; the nodes go on", async () => {
    const js = jetstream(nc!);
    const store = await JetStreamLargeBatches.open(js, largeBatchBucket("marmot-changes"), 1, silentLogger, new AbortController().signal);
    const batch = encodeBatch({
      origin: "99/x",
      changes: [
        { table: { name: "docs", columns: ["id", "data"], keyColumns: ["id"] }, op: "upsert", changeId: 1, values: [7n, Buffer.alloc(10, 1)] },
      ],
    });
    await store.put("99-x-corrupt", batch, { stream: STREAM });
    const seqs = [
      (await js.publish(SUBJECT, encodeReference({ object: "99-x-missing", size: 100, sha256: Buffer.alloc(32) }))).seq,
      // The object is there, but not what the reference says: a bit flipped in its digest.
      (
        await js.publish(
          SUBJECT,
          encodeReference({ object: "99-x-corrupt", size: batch.length, sha256: sha256(Buffer.concat([batch, Buffer.from([0])])) }),
        )
      ).seq,
    ];
    for (const node of cluster.nodes) {
      await waitFor(
        () => sqlite3(node.spec.dbPath, "SELECT count(*) FROM __marmot__parked").trim() === "2",
        30_000,
        () =>
          `node ${node.spec.id} to park 2 messages; parked: ${sqlite3(node.spec.dbPath, "SELECT seq, reason FROM __marmot__parked")}\n${node.tail()}`,
      );
      assert.ok(node.running);
      // The log is read from the node's stderr pipe, which can trail the commit the test just saw.
      const said = [
        /ERROR.*large change's object cannot be read.*object=99-x-missing.*is not in bucket/,
        /ERROR.*large change's object cannot be read.*object=99-x-corrupt.*does not match the sha-256/,
      ];
      await waitFor(
        () => said.every((line) => line.test(node.output)),
        10_000,
        () => `node ${node.spec.id} to log why each object cannot be read:\n${node.tail()}`,
      );
      const parked = sqlite3(node.spec.dbPath, "SELECT seq, reason FROM __marmot__parked ORDER BY seq").trim().split("\n");
      assert.match(parked[0]!, new RegExp(`^${seqs[0]}\\|undecodable: .*large object "99-x-missing" \\(100 bytes\\)`));
      assert.match(parked[1]!, new RegExp(`^${seqs[1]}\\|undecodable: .*large object "99-x-corrupt"`));
      assert.equal(sqlite3(node.spec.dbPath, "SELECT count(*) FROM docs").trim(), "0", "nothing of the corrupt object was applied");
    }
    sqlite3(cluster.node(1).spec.dbPath, "INSERT INTO docs VALUES (1, x'00ff');");
    await cluster.waitConverged(["docs"]);
  });

  test("the cleanup removes a node's objects whose reference left the stream, and nothing else", async () => {
    const js = jetstream(nc!);
    const jsm = await jetstreamManager(nc!);
    const store = await JetStreamLargeBatches.open(js, "cleanup-test", 1, silentLogger, new AbortController().signal);
    await jsm.streams.add({ name: "cleanup-stream", subjects: ["cleanup-subject"] });
    for (let i = 0; i < 5; i++) await js.publish("cleanup-subject", Buffer.from(`m${i}`));
    const put = async (name: string, seq?: number) => {
      await store.put(name, Buffer.alloc(300_000, 3), { stream: "cleanup-stream" });
      if (seq !== undefined) await store.referenced(name, seq);
    };
    await put("5-e-gone", 2);
    await put("5-e-kept", 4);
    await put("5-e-unreferenced-yet");
    await put("6-e-another-node", 1);
    await jsm.streams.purge("cleanup-stream", { seq: 3 }); // the stream now begins at 3
    const removed = await store.removeUnreferenced("5-", async (stream) => (await jsm.streams.info(stream)).state.first_seq);
    assert.equal(removed, 1);
    const left = (await (await new Objm(js).open("cleanup-test")).list()).filter((o) => !o.deleted).map((o) => o.name);
    assert.deepEqual(left.sort(), ["5-e-kept", "5-e-unreferenced-yet", "6-e-another-node"]);
    // The kept one still reads back whole.
    const data = Buffer.alloc(300_000, 3);
    const read = await store.read({ object: "5-e-kept", size: data.length, sha256: sha256(data) });
    assert.ok(read.data?.equals(data));

    // Chunks of a put cut short by a crash belong to no object: they go once old enough, and only they.
    await js.publish("$O.cleanup-test.C.abandoned-put", Buffer.alloc(1000));
    const chunkSubjects = async () =>
      Object.keys((await jsm.streams.info("OBJ_cleanup-test", { subjects_filter: "$O.cleanup-test.C.>" })).state.subjects ?? {}).length;
    assert.equal(await chunkSubjects(), 4);
    assert.equal(await store.removeUnreferenced("nobody-", async () => 0), 0, "not before they are a day old");
    assert.equal(await store.removeUnreferenced("nobody-", async () => 0, 0), 1);
    assert.equal(await chunkSubjects(), 3);
    assert.ok((await store.read({ object: "5-e-kept", size: data.length, sha256: sha256(data) })).data?.equals(data));
  });
});
