// The snapshot lease and the snapshot request on a real nats-server: one holder at a time in the KV bucket, taken
// over only once released; a request finds the listening node, and nothing when none listens.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { openLeaseBucket, SnapshotLease } from "../../src/snapshot/lease.js";
import { askForSnapshot, SnapshotRequestListener, type SnapshotRequest } from "../../src/snapshot/snapshot-requests.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { recordingLogger } from "../helpers/sqlite.js";

useProcessCleanup();

describe("snapshot lease and requests on a real nats-server", () => {
  let server: TestNatsServer | undefined;
  const connections: NatsConnection[] = [];
  after(async () => {
    for (const nc of connections) await nc.close();
    await server?.stop();
  });

  it("one node holds the lease; another gets it only after release; a second bucket open sees the same key", async () => {
    server = await startNatsServer();
    const [a, b] = await Promise.all([connect({ servers: server.url }), connect({ servers: server.url })]);
    connections.push(a, b);
    const one = new SnapshotLease(await openLeaseBucket(a, "lease-test", 1), "node 1", recordingLogger());
    const two = new SnapshotLease(await openLeaseBucket(b, "lease-test", 1), "node 2", recordingLogger());
    const held = await one.tryAcquire();
    assert.ok(held, "node 1 takes the free lease");
    assert.equal(await two.tryAcquire(), undefined, "node 2 is refused while node 1 holds it");
    await held.release();
    const second = await two.tryAcquire();
    assert.ok(second, "node 2 takes it once released");
    assert.equal(second.signal.aborted, false);
    await second.release();
  });

  it("a request reaches the listening node, which answers; with none listening the asker gets no answer", async () => {
    const [asker, answerer] = await Promise.all([connect({ servers: server!.url }), connect({ servers: server!.url })]);
    connections.push(asker, answerer);
    const request: SnapshotRequest = { from: "4", needs: { "marmot-changes-1-1": 98 } };
    assert.equal(await askForSnapshot(asker, "req-test", request), undefined);
    const seen: SnapshotRequest[] = [];
    const listener = new SnapshotRequestListener(
      answerer,
      "req-test",
      (r) => {
        seen.push(r);
        return { node: "1", accepted: true };
      },
      recordingLogger(),
    );
    listener.start();
    await answerer.flush();
    assert.deepEqual(await askForSnapshot(asker, "req-test", request), { node: "1", accepted: true });
    assert.deepEqual(seen, [request]);
    listener.stop();
  });
});
