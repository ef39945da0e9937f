// Snapshots in a running cluster, through bin/marmot: a node that was away while the streams dropped messages it
// never applied comes back by restoring a snapshot (its own offline write kept); a node frozen while running finds
// the gap and heals; a fourth node with an empty database joins, the cluster saving a snapshot on its request.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { MarmotProcess, TestCluster, waitFor } from "../helpers/marmot.js";
import { freePort } from "../helpers/ports.js";
import { spawnTracked, untrackPid, useProcessCleanup } from "../helpers/processes.js";
import { sqlite3, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = `
CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL, n INTEGER);
CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
`;
const TABLES = ["items", "kv"];
const STREAM = "marmot-changes-1-1";
/** R3 object store: the snapshot stays readable while any one node is down. */
const SNAPSHOT_TOML = "\n[snapshot]\nenabled = true\n\n[snapshot.nats]\nreplicas = 3\n";

/** The client URL of a node's embedded nats-server, from its "marmot is running" line. */
function clientUrl(node: MarmotProcess): string {
  const match = /marmot is running.*?nats=(nats:\/\/[0-9.]+:\d+)/.exec(node.output);
  assert.ok(match, `node ${node.spec.id} logged its NATS URL:\n${node.tail()}`);
  return match[1]!;
}

async function streamFirstSeq(url: string): Promise<number> {
  const nc = await connect({ servers: url });
  try {
    return (await (await jetstreamManager(nc)).streams.info(STREAM)).state.first_seq;
  } finally {
    await nc.close();
  }
}

/** A node's durable consumer: pull requests still open on it, and the last stream sequence the server delivered to it. */
async function consumerState(url: string, node: number): Promise<{ waiting: number; delivered: number }> {
  const nc = await connect({ servers: url });
  try {
    const info = await (await jetstreamManager(nc)).consumers.info(STREAM, `marmot-node-${node}`);
    return { waiting: info.num_waiting, delivered: info.delivered.stream_seq };
  } finally {
    await nc.close();
  }
}

function appliedOf(dbPath: string): number {
  return Number(sqlite3(dbPath, `SELECT seq FROM __marmot__applied WHERE stream = '${STREAM}'`).trim() || "0");
}

/**
 * Single-row writes on a node, from an app process of its own (test/helpers/trickle-writer.ts): each waits until
 * marmot shipped the one before and `witness` applied it, so each travels in a message of its own and the stream
 * really holds (and drops) one message per write, while the running nodes keep up. Returns how long they took.
 */
async function trickleWrites(dbPath: string, witness: string, firstId: number, count: number): Promise<number> {
  const script = fileURLToPath(new URL("../helpers/trickle-writer.js", import.meta.url));
  const child = spawnTracked(process.execPath, [script, dbPath, witness, "items", String(firstId), String(count)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  untrackPid(child.pid!);
  assert.equal(code, 0, `the writer failed: ${output}`);
  return (JSON.parse(output.trim().split("\n").pop()!) as { ms: number }).ms;
}

/** Runs a test's body; on a failure, adds every node's last log lines: the node that waited is rarely the one at fault. */
async function withLogs(cluster: TestCluster | undefined, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    const logs = (cluster?.nodes ?? []).map(
      (n) => `--- node ${n.spec.id} ---\n${readFileSync(n.spec.logPath, "utf8").split("\n").slice(-40).join("\n")}`,
    );
    (err as Error).message += `\n${logs.join("\n")}`;
    throw err;
  }
}

describe("a node that was away while the streams dropped its messages (R3, max_entries = 64)", () => {
  let cluster: TestCluster;
  after(async () => {
    await cluster?.stopAll();
  });

  test("three nodes start and share some rows", async () => {
    cluster = await TestCluster.create({ schema: SCHEMA, replicas: 3, shards: 1, maxEntries: 64, toml: SNAPSHOT_TOML });
    await cluster.startAll();
    sqlite3(cluster.node(1).spec.dbPath, "INSERT INTO items VALUES (1, 'first', 1), (2, 'second', 2); INSERT INTO kv VALUES ('blob', x'00ff10');");
    await cluster.waitConverged(TABLES);
  });

  test("node 3 stopped, its app writes offline; the stream drops messages it never applied; it restarts, restores and converges", (t) =>
    withLogs(cluster, async () => {
      const [n1, n3] = [cluster.node(1), cluster.node(3)];
      assert.equal(await n3.stop(), 0);
      const appliedBefore = appliedOf(n3.spec.dbPath);
      // The app on node 3 keeps writing while its marmot is down: the capture triggers log it.
      sqlite3(
        n3.spec.dbPath,
        "INSERT INTO items VALUES (900001, 'written offline on node 3', -1); INSERT INTO kv VALUES ('offline', 9223372036854775807);",
      );

      const ms = await trickleWrites(n1.spec.dbPath, cluster.node(2).spec.dbPath, 1000, 160);
      t.diagnostic(`160 single-row writes, each shipped and applied on node 2 before the next, took ${ms} ms`);
      const firstSeq = await streamFirstSeq(clientUrl(n1));
      t.diagnostic(`node 3 applied ${appliedBefore}; the stream now starts at ${firstSeq}`);
      assert.ok(
        firstSeq > appliedBefore + 1,
        `the stream dropped messages node 3 never applied (first_seq ${firstSeq}, node 3 applied ${appliedBefore})`,
      );

      n3.start();
      await n3.waitRunning();
      await cluster.waitConverged(TABLES, 90_000);
      assert.match(n3.output, /restored from a snapshot/);
      for (const out of cluster.query("SELECT body FROM items WHERE id = 900001; SELECT v FROM kv WHERE k = 'offline';")) {
        assert.equal(out, "written offline on node 3\n9223372036854775807\n");
      }
      for (const out of cluster.query("SELECT count(*) FROM items")) assert.equal(out.trim(), String(2 + 160 + 1));
    }));

  test("a running node that falls behind the stream (frozen) finds the gap, restores and converges, its own writes kept", (t) =>
    withLogs(cluster, async () => {
      const [n1, n3] = [cluster.node(1), cluster.node(3)];
      const restoresBefore = (n3.output.match(/restored from a snapshot/g) ?? []).length;
      const appliedBefore = appliedOf(n3.spec.dbPath);
      // SIGSTOP: marmot stays "running" (its nats-server too) but applies nothing, as a long pause would.
      process.kill(n3.pid, "SIGSTOP");
      try {
        // Its open pull requests expire first: messages the server pushed into its socket before then are not missed.
        const url = clientUrl(n1);
        await waitFor(
          async () => (await consumerState(url, 3)).waiting === 0,
          30_000,
          () => "node 3's pull requests to expire",
          500,
        );
        sqlite3(n3.spec.dbPath, "INSERT INTO items VALUES (900002, 'written on node 3 while its marmot was frozen', -2);");
        await trickleWrites(n1.spec.dbPath, cluster.node(2).spec.dbPath, 5000, 160);
        const firstSeq = await streamFirstSeq(url);
        const { delivered } = await consumerState(url, 3);
        t.diagnostic(`node 3 applied ${appliedBefore} and was given up to ${delivered}; the stream now starts at ${firstSeq}`);
        assert.ok(firstSeq > Math.max(appliedBefore, delivered) + 1, "the stream dropped messages node 3 was never given");
      } finally {
        process.kill(n3.pid, "SIGCONT");
      }
      await waitFor(
        () => (n3.output.match(/restored from a snapshot/g) ?? []).length > restoresBefore,
        90_000,
        () => "node 3 to restore after finding the gap",
      );
      assert.match(n3.output, /this node missed changes/);
      await cluster.waitConverged(TABLES, 90_000);
      for (const out of cluster.query("SELECT body FROM items WHERE id = 900002"))
        assert.equal(out, "written on node 3 while its marmot was frozen\n");
      for (const out of cluster.query("SELECT count(*) FROM items")) assert.equal(out.trim(), String(2 + 160 + 1 + 160 + 1));
    }));

  test("SIGTERM stops every node cleanly", async () => {
    assert.deepEqual(await Promise.all(cluster.nodes.map((n) => n.stop())), [0, 0, 0]);
  });
});

describe("a fourth node with an empty database joins a running three-node cluster", () => {
  let cluster: TestCluster;
  after(async () => {
    await cluster?.stopAll();
  });

  test("three nodes with data, no snapshot stored (max_entries large: none is due)", async () => {
    cluster = await TestCluster.create({ schema: SCHEMA, replicas: 3, shards: 2, toml: SNAPSHOT_TOML });
    await cluster.startAll();
    const rows = Array.from({ length: 500 }, (_, i) => `(${i + 1}, 'row ${i + 1} ''quoted''', ${i * 1_000_000_007})`).join(",");
    sqlite3(
      cluster.node(1).spec.dbPath,
      `INSERT INTO items VALUES ${rows}; INSERT INTO kv VALUES ('pi', 3.14159), ('nothing', NULL), ('big', -9223372036854775808);`,
    );
    sqlite3(cluster.node(2).spec.dbPath, "INSERT INTO kv VALUES ('from-2', x'deadbeef');");
    await cluster.waitConverged(TABLES);
  });

  test("node 4 starts from an empty file, asks the cluster for a snapshot, and reaches the same schema and rows", () =>
    withLogs(cluster, async () => {
      const dir = cluster.dir;
      const dbPath = join(dir, "node-4.db");
      writeFileSync(dbPath, "");
      const configPath = join(dir, "node-4.toml");
      const base = readFileSync(cluster.node(1).spec.configPath, "utf8");
      writeFileSync(configPath, base.replace(/^db_path = .*$/m, `db_path = ${JSON.stringify(dbPath)}`).replace(/^node_id = .*$/m, "node_id = 4"));
      const routeOf = (n: MarmotProcess) => n.spec.args[n.spec.args.indexOf("-cluster-addr") + 1]!;
      const peers = cluster.nodes.map((n) => `nats://${routeOf(n)}/`).join(",");
      const args = ["-config", configPath, "-cluster-addr", `127.0.0.1:${await freePort()}`, "-cluster-peers", peers];
      const node4 = new MarmotProcess({ id: 4, dbPath, configPath, storeDir: join(dir, "marmot-nats-4"), logPath: join(dir, "node-4.log"), args });
      cluster.nodes.push(node4);
      node4.start();
      await node4.waitRunning(120_000);
      await cluster.waitConverged(TABLES, 90_000);

      const schemaOf = (path: string) => sqlite3(path, "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE '__marmot%' ORDER BY name");
      assert.equal(schemaOf(dbPath), schemaOf(cluster.node(1).spec.dbPath));
      assert.match(node4.output, /restored from a snapshot/);
      assert.ok(
        cluster.nodes.slice(0, 3).some((n) => /a node asked for a snapshot/.test(n.output)),
        "a running node saved one on request",
      );
    }));

  test("then writes travel both ways between node 4 and node 1", async () => {
    const node4 = cluster.node(4);
    sqlite3(node4.spec.dbPath, "INSERT INTO items VALUES (40001, 'written on node 4', 4); UPDATE items SET body = 'changed on node 4' WHERE id = 7;");
    sqlite3(cluster.node(1).spec.dbPath, "INSERT INTO items VALUES (10001, 'written on node 1 after the join', 1); DELETE FROM kv WHERE k = 'pi';");
    await cluster.waitConverged(TABLES, 60_000);
    for (const out of cluster.query(
      "SELECT group_concat(body, '|') FROM (SELECT body FROM items WHERE id IN (7, 10001, 40001) ORDER BY id); SELECT count(*) FROM kv WHERE k = 'pi';",
    )) {
      assert.equal(out, "changed on node 4|written on node 1 after the join|written on node 4\n0\n");
    }
  });

  test("SIGTERM stops every node cleanly", async () => {
    assert.deepEqual(await Promise.all(cluster.nodes.map((n) => n.stop())), [0, 0, 0, 0]);
  });
});

describe("a snapshot store marmot may not use", () => {
  test("stops the node at start with an error naming the key to fix, exit code 1", async () => {
    const cluster = await TestCluster.create({ size: 1, schema: SCHEMA });
    try {
      // A regular file where the store's folder should be: no retry can fix that, the config must change.
      const notAFolder = join(cluster.dir, "not-a-folder");
      writeFileSync(notAFolder, "");
      const node = cluster.node(1);
      node.spec.args.splice(2); // one node: no cluster flags
      writeFileSync(
        node.spec.configPath,
        `${readFileSync(node.spec.configPath, "utf8")}\n[snapshot]\nstore = "file"\n\n[snapshot.file]\npath = ${JSON.stringify(notAFolder)}\n`,
      );
      node.start();
      assert.equal(await node.exited(), 1);
      assert.match(node.output, /\[snapshot\.file\] path/);
      assert.doesNotMatch(node.output, /marmot is running/);
    } finally {
      await cluster.stopAll();
    }
  });
});

describe("sleep_timeout (the serverless case)", () => {
  test("a node that exits on sleep_timeout saves a snapshot first, which holds its last writes", async () => {
    const folder = tempDir("marmot-snapshots-");
    const cluster = await TestCluster.create({
      size: 1,
      schema: SCHEMA,
      nodeToml: () => "sleep_timeout = 3000",
      toml: `\n[snapshot]\nstore = "file"\n\n[snapshot.file]\npath = ${JSON.stringify(folder)}\n`,
    });
    try {
      const node = cluster.node(1);
      node.spec.args.splice(2); // one node: no cluster flags
      node.start();
      await node.waitRunning();
      sqlite3(node.spec.dbPath, "INSERT INTO items VALUES (1, 'written just before sleeping', 1);");
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<"timed out">((resolve) => (timer = setTimeout(() => resolve("timed out"), 60_000)));
      const code = await Promise.race([node.exited(), timedOut]).finally(() => clearTimeout(timer));
      assert.equal(code, 0, `node 1 exits on sleep_timeout with code 0:\n${node.tail()}`);
      const manifest = JSON.parse(readFileSync(join(folder, "latest.json"), "utf8")) as { object: string; streams: Record<string, number> };
      assert.ok((manifest.streams[STREAM] ?? 0) >= 1, `the snapshot covers the write's message: ${JSON.stringify(manifest.streams)}`);
      assert.equal(sqlite3(join(folder, manifest.object), "SELECT body FROM items WHERE id = 1"), "written just before sleeping\n");
    } finally {
      await cluster.stopAll();
    }
  });
});

describe("[snapshot] interval", () => {
  test("a running node saves a new snapshot that often, with no writes at all", async () => {
    const folder = tempDir("marmot-snapshots-");
    const cluster = await TestCluster.create({
      size: 1,
      schema: SCHEMA,
      toml: `\n[snapshot]\ninterval = 2000\nstore = "file"\n\n[snapshot.file]\npath = ${JSON.stringify(folder)}\n`,
    });
    try {
      const node = cluster.node(1);
      node.spec.args.splice(2); // one node: no cluster flags
      node.start();
      await node.waitRunning();
      const createdAt = () => (JSON.parse(readFileSync(join(folder, "latest.json"), "utf8")) as { createdAt: string }).createdAt;
      const seen = new Set<string>();
      await waitFor(
        () => seen.add(createdAt()).size >= 3,
        60_000,
        () => `three snapshots, one every 2 s; saw ${[...seen].join(", ")}\n${node.tail()}`,
        200,
      );
      assert.equal(await node.stop(), 0);
    } finally {
      await cluster.stopAll();
    }
  });
});
