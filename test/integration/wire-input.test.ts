// Bad bytes on marmot's subject, published by a stranger: two real marmot processes survive, park them, and go on.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { encodeBatch, type WireTable } from "../../src/wire/codec.js";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = `
CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author TEXT);
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO Books VALUES (1, 'Emma', 'Austen'), (2, 'Dracula', 'Stoker');
`;
/** shards = 1 with the default prefixes */
const SUBJECT = "marmot-change-log-1-1";
const INJECTION = 'x"; DROP TABLE Books; --';

function validBatch(table: WireTable, values: (bigint | string | null)[]): Buffer {
  return encodeBatch({ origin: "99", changes: [{ table, op: "upsert", changeId: 1, values }] });
}

describe("messages marmot did not write", () => {
  let server: TestNatsServer;
  let cluster: TestCluster;
  let nc: NatsConnection | undefined;

  before(async () => {
    server = await startNatsServer();
    cluster = await TestCluster.create({ natsUrls: [server.url], size: 2, schema: SCHEMA });
    await cluster.startAll();
  });

  after(async () => {
    await nc?.close();
    try {
      await cluster?.stopAll();
    } finally {
      await server?.stop();
    }
  });

  test("garbage, a truncated batch, unknown tables and columns and an injection attempt are parked; the shard goes on", async () => {
    nc = await connect({ servers: server.url });
    const js = jetstream(nc);
    const whole = validBatch({ name: "Books", columns: ["id", "title", "author"], keyColumns: ["id"] }, [50n, "Truncated", "x"]);
    const messages: [string, Uint8Array][] = [
      ["garbage", Buffer.from("GET / HTTP/1.1\r\nHost: marmot\r\n\r\n\u0000\u00ff")],
      ["truncated", whole.subarray(0, whole.length - 3)],
      ["missing table", validBatch({ name: "nowhere", columns: ["id", "v"], keyColumns: ["id"] }, [1n, "lost"])],
      ["missing column", validBatch({ name: "authors", columns: ["id", "name", "ghost"], keyColumns: ["id"] }, [1n, "Austen", "boo"])],
      ["injection", validBatch({ name: INJECTION, columns: ["id"], keyColumns: ["id"] }, [1n])],
    ];
    const seqs: number[] = [];
    for (const [, data] of messages) seqs.push((await js.publish(SUBJECT, data)).seq);
    assert.deepEqual(seqs, [1, 2, 3, 4, 5], "the stream held nothing before");

    for (const node of cluster.nodes) {
      await node.waitForLog(/DROP TABLE Books/);
      await waitFor(
        () => sqlite3(node.spec.dbPath, "SELECT count(*) FROM __marmot__parked").trim() === "5",
        30_000,
        () =>
          `node ${node.spec.id} to park 5 messages; parked: ${sqlite3(node.spec.dbPath, "SELECT seq, tbl, reason FROM __marmot__parked")}\n${node.tail()}`,
      );
      assert.ok(node.running, `node ${node.spec.id} is still running`);
      const out = node.output;
      assert.match(out, /not a valid marmot batch.*seq=1 .*bad magic/);
      assert.match(out, /not a valid marmot batch.*seq=2 .*truncated batch/);
      assert.match(out, /WARN.*table=nowhere.*does not exist/);
      assert.match(out, /WARN.*table=authors.*no column \\"ghost\\"/);
      assert.ok(out.includes(`table=${JSON.stringify(INJECTION)}`), `the injection attempt is named in the log:\n${node.tail()}`);

      const parked = sqlite3(node.spec.dbPath, "SELECT seq, quote(tbl), substr(reason, 1, 12) FROM __marmot__parked ORDER BY seq").trim();
      assert.equal(
        parked,
        [
          "1|NULL|undecodable:",
          "2|NULL|undecodable:",
          "3|'nowhere'|table \"nowhe",
          "4|'authors'|table \"autho",
          `5|'x"; DROP TABLE Books; --'|table "x"; D`,
        ].join("\n"),
      );
      // Nothing was executed: the tables and their rows are as they were, and no table "nowhere" appeared.
      assert.equal(sqlite3(node.spec.dbPath, "SELECT id, title FROM Books ORDER BY id").trim(), "1|Emma\n2|Dracula");
      assert.equal(sqlite3(node.spec.dbPath, "SELECT count(*) FROM authors").trim(), "0");
      assert.equal(
        sqlite3(
          node.spec.dbPath,
          "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_\\_marmot%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name)",
        ).trim(),
        "Books,authors",
      );
      assert.equal(sqlite3(node.spec.dbPath, "SELECT seq FROM __marmot__applied").trim(), "5", "the sequence advanced past them");
    }

    // App writes made after the bad messages still replicate, both ways.
    sqlite3(cluster.node(1).spec.dbPath, "INSERT INTO Books VALUES (3, 'Ulysses', 'Joyce'); UPDATE Books SET title = 'Emma!' WHERE id = 1;");
    sqlite3(cluster.node(2).spec.dbPath, "INSERT INTO Books VALUES (4, 'Beloved', 'Morrison'); DELETE FROM Books WHERE id = 2;");
    await cluster.waitConverged(["Books"]);
    for (const out of cluster.query("SELECT id, title FROM Books ORDER BY id")) assert.equal(out.trim(), "1|Emma!\n3|Ulysses\n4|Beloved");
    for (const node of cluster.nodes) assert.ok(node.running, `node ${node.spec.id} is still running`);
  });

  test("once the app adds the missing column on one node, the parked change applies on both nodes", async () => {
    // On one node only: the schema change travels to the other (adding it there as well would race it).
    sqlite3(cluster.node(1).spec.dbPath, "ALTER TABLE authors ADD COLUMN ghost TEXT;");
    for (const node of cluster.nodes) {
      await waitFor(
        () => sqlite3(node.spec.dbPath, "SELECT id, name, ghost FROM authors").trim() === "1|Austen|boo",
        30_000,
        () => `node ${node.spec.id} to apply the parked authors change:\n${node.tail()}`,
      );
    }
    await cluster.waitConverged(["Books", "authors"]);
    const stillParked = cluster.query("SELECT group_concat(seq) FROM (SELECT seq FROM __marmot__parked ORDER BY seq)").map((s) => s.trim());
    assert.deepEqual(stillParked, ["1,2,3,5", "1,2,3,5"]);
  });
});
