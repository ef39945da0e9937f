// Rows larger than one NATS message, written by the sqlite3 CLI on one of three real marmot processes, reach the
// other two whole: 400 KB of text, a 5 MB and a 50 MB BLOB, the last one with its writer killed mid-transfer.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, describe, test } from "node:test";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3Async } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE docs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, body TEXT, data BLOB);";
const MB = 1024 * 1024;

/** The peak resident memory of a process (VmHWM), in MiB. */
function peakRssMiB(pid: number): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Math.round(Number(match[1]) / 1024) : -1;
}

describe("rows larger than one NATS message, three nodes", () => {
  let server: TestNatsServer;
  let cluster: TestCluster;

  after(async () => {
    try {
      await cluster?.stopAll();
    } finally {
      await server?.stop();
    }
  });

  test("start three nodes on one nats-server (max_payload 1 MB)", async () => {
    server = await startNatsServer();
    cluster = await TestCluster.create({ natsUrls: [server.url], schema: SCHEMA, shards: 2 });
    await cluster.startAll();
    console.log(`large rows: peak RSS after start: ${cluster.nodes.map((n) => `${peakRssMiB(n.pid)} MiB`).join(", ")}`);
  });

  test("a 409,600-character TEXT row replicates", async () => {
    await sqlite3Async(cluster.node(1).spec.dbPath, "INSERT INTO docs (id, name, body) VALUES (1, 'text', printf('%.*c', 409600, 'a'));");
    await cluster.waitConverged(["docs"], 60_000);
    for (const out of cluster.query("SELECT length(body) FROM docs WHERE id = 1")) assert.equal(out.trim(), "409600");
  });

  test("a 5 MB BLOB replicates, and a later small write of the row wins over it", async () => {
    const db1 = cluster.node(1).spec.dbPath;
    await sqlite3Async(db1, `INSERT INTO docs (id, name, data) VALUES (2, 'five', randomblob(${5 * MB}));`);
    await cluster.waitConverged(["docs"], 60_000);
    for (const out of cluster.query("SELECT length(data) FROM docs WHERE id = 2")) assert.equal(out.trim(), String(5 * MB));
    await sqlite3Async(cluster.node(2).spec.dbPath, "UPDATE docs SET name = 'five, renamed on 2' WHERE id = 2;");
    await cluster.waitConverged(["docs"], 60_000);
    for (const out of cluster.query("SELECT name, length(data) FROM docs WHERE id = 2")) assert.equal(out.trim(), `five, renamed on 2|${5 * MB}`);
  });

  test("a 50 MB BLOB replicates though its writer is killed mid-transfer; never half-applied", async (t) => {
    const writer = cluster.node(1);
    const receiver = cluster.node(2);
    // Killed the moment it says it starts storing the object (its put takes hundreds of ms): no reference message
    // went out, and the change is still in its change log.
    const storing = /storing a change too large for one message as an object/;
    const child = writer.child!;
    child.stdout!.on("data", (chunk: Buffer) => {
      if (storing.test(chunk.toString("utf8"))) child.kill("SIGKILL");
    });
    await sqlite3Async(writer.spec.dbPath, `INSERT INTO docs (id, name, data) VALUES (3, 'fifty', randomblob(${50 * MB}));`);
    await writer.waitForLog(storing, 60_000);
    await writer.crash();
    const partial = cluster.query("SELECT count(*) FROM docs WHERE id = 3 AND length(data) <> 52428800");
    assert.deepEqual(
      partial.map((s) => s.trim()),
      ["0", "0", "0"],
    );
    writer.start();
    await writer.waitRunning();
    await waitFor(
      () => {
        for (const out of cluster.query("SELECT ifnull(length(data), -1) FROM docs WHERE id = 3")) {
          // Either not there yet or whole: the applier's transaction holds all of it or none.
          assert.ok(out.trim() === "" || out.trim() === String(50 * MB), `row 3 is ${out.trim()} bytes on some node`);
        }
        return cluster.query("SELECT length(data) FROM docs WHERE id = 3").every((out) => out.trim() === String(50 * MB));
      },
      90_000,
      () => `the 50 MB row on every node:\n${cluster.nodes.map((n) => `--- node ${n.spec.id}\n${n.tail(10)}`).join("\n")}`,
      500,
    );
    await cluster.waitConverged(["docs"], 60_000);
    assert.match(writer.output, storing, "after its restart (its output starts afresh) the writer sent the row again, from its change log");
    t.diagnostic(
      `peak RSS (VmHWM) with a 50 MB row: writer ${peakRssMiB(writer.pid)} MiB, receivers ${peakRssMiB(receiver.pid)} and ${peakRssMiB(cluster.node(3).pid)} MiB`,
    );
    console.log(
      `large rows: peak RSS with a 50 MB row: writer (after its restart) ${peakRssMiB(writer.pid)} MiB; receivers ${peakRssMiB(receiver.pid)} MiB, ${peakRssMiB(cluster.node(3).pid)} MiB`,
    );
  });
});
