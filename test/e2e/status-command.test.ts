// marmot -status and -parked against a real three-node cluster: the exit codes a script relies on, and parked
// changes listed, retried through the running node, and discarded.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";
import { marmotBin, repoRoot, TestCluster, waitFor } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

function marmot(args: string[]): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [marmotBin, ...args], { cwd: repoRoot, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const show = (r: CommandResult) => `exit ${r.code}\n${r.stdout}\n${r.stderr}`;

test("-status exits 0 when all nodes are ready, non-zero with a parked change or a node down; -parked lists, retries and discards", async (t) => {
  const cluster = await TestCluster.create({
    // Replicated like the example cluster: with one replica, the heartbeat bucket is gone while its server is.
    replicas: 3,
    schema: "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
    toml: '[logging]\nformat = "console"',
  });
  t.after(() => cluster.stopAll());
  // Only node 1 has these tables: their changes cannot be applied on nodes 2 and 3, and are parked there.
  sqlite3(
    cluster.node(1).spec.dbPath,
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); CREATE TABLE drafts (id INTEGER PRIMARY KEY, body TEXT);",
  );
  await cluster.startAll();
  const config = (id: number) => ["-config", cluster.node(id).spec.configPath];

  let last: CommandResult | undefined;
  // -status knows the nodes that wrote a heartbeat: a node still starting may not have written its first one.
  const readyLines = (r: CommandResult) => ["1", "2", "3"].every((id) => new RegExp(`^${id}\\s+ready\\s`, "m").test(r.stdout));
  await waitFor(
    async () => (last = await marmot([...config(1), "-status"])).code === 0 && readyLines(last),
    90_000,
    () => `-status to report a healthy cluster of three: ${last && show(last)}`,
    500,
  );
  assert.match(last!.stdout, /all nodes ready/);

  sqlite3(
    cluster.node(1).spec.dbPath,
    "INSERT INTO notes (id, body) VALUES (1, 'kept aside'); INSERT INTO drafts (id, body) VALUES (1, 'draft'); INSERT INTO books (id, title) VALUES (1, 'Emma');",
  );
  await waitFor(
    () => sqlite3(cluster.node(3).spec.dbPath, "SELECT title FROM books;").trim() === "Emma",
    60_000,
    () => "the book on node 3",
  );
  await waitFor(
    async () => (last = await marmot([...config(2), "-status"])).code === 1 && /node 3 has 2 parked change/.test(last.stdout),
    60_000,
    () => `-status to fail on the parked changes: ${last && show(last)}`,
    500,
  );
  assert.match(last!.stdout, /node 2 has 2 parked change/);

  const listed = await marmot([...config(2), "-parked"]);
  assert.equal(listed.code, 0, show(listed));
  assert.match(listed.stdout, /^\d+\s+notes\s+table "notes" does not exist on this node\s+\S+Z\s+1\/\S+\s+marmot-changes-1-1\/\d+$/m, show(listed));

  assert.match(listed.stdout, /^\d+\s+drafts\s+table "drafts" does not exist on this node\s/m, show(listed));

  // Node 2: the tables are created while its marmot is down (so nothing retries on its own), then retried by request.
  assert.equal(await cluster.node(2).stop(), 0);
  sqlite3(
    cluster.node(2).spec.dbPath,
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); CREATE TABLE drafts (id INTEGER PRIMARY KEY, body TEXT);",
  );
  cluster.node(2).start();
  await cluster.node(2).waitForLog(/marmot is ready/);
  const retried = await marmot([...config(2), "-parked", "-retry"]);
  assert.equal(retried.code, 0, show(retried));
  assert.match(retried.stdout, /applied 2 of 2 parked change\(s\); 0 still parked/);
  assert.match(cluster.node(2).output, /retried the parked changes, as marmot -parked -retry asked/, "the running node did the retry");
  assert.equal(sqlite3(cluster.node(2).spec.dbPath, "SELECT body FROM notes WHERE id = 1;").trim(), "kept aside");
  assert.equal(sqlite3(cluster.node(2).spec.dbPath, "SELECT body FROM drafts WHERE id = 1;").trim(), "draft");

  // Node 3, its marmot stopped: no node takes the request, so the command applies what it can itself.
  assert.equal(await cluster.node(3).stop(), 0);
  sqlite3(cluster.node(3).spec.dbPath, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);");
  const alone = await marmot([...config(3), "-parked", "-retry"]);
  assert.equal(alone.code, 1, show(alone));
  assert.match(alone.stdout, /applied 1 of 2 parked change\(s\); 1 still parked/, show(alone));
  assert.match(alone.stderr + alone.stdout, /no running marmot took the request/);
  assert.equal(sqlite3(cluster.node(3).spec.dbPath, "SELECT body FROM notes WHERE id = 1;").trim(), "kept aside");
  cluster.node(3).start();
  await cluster.node(3).waitForLog(/marmot is ready/);

  // Node 3's other change is discarded: without a terminal to confirm on, only with -yes.
  const refused = await marmot([...config(3), "-parked", "-discard"]);
  assert.equal(refused.code, 2, show(refused));
  assert.match(refused.stderr + refused.stdout, /add -yes/);
  const discarded = await marmot([...config(3), "-parked", "-discard", "-yes"]);
  assert.equal(discarded.code, 0, show(discarded));
  assert.match(discarded.stdout, /discarded 1 parked change/);
  assert.equal((await marmot([...config(3), "-parked"])).stdout.trim(), `no parked changes in ${cluster.node(3).spec.dbPath}`);
  await waitFor(
    async () => (last = await marmot([...config(1), "-status"])).code === 0,
    60_000,
    () => `healthy again: ${last && show(last)}`,
    500,
  );

  // One node down: the others report it, and the stopped node's own config finds no NATS to ask.
  assert.equal(await cluster.node(3).stop(), 0);
  // Waited for: when node 3's server led the bucket, its replicas elect another leader first.
  await waitFor(
    async () => (last = await marmot([...config(1), "-status"])).code === 1 && /^3\s+(stopped|unreachable)\s/m.test(last.stdout),
    30_000,
    () => `-status to report node 3 down: ${last && show(last)}`,
    500,
  );
  assert.match(last!.stdout, /node 3 is (stopped|unreachable)/);
  assert.match(last!.stdout, /^1\s+ready\s/m);
  const noNats = await marmot([...config(3), "-status"]);
  assert.equal(noNats.code, 3, show(noNats));
  assert.match(noNats.stderr + noNats.stdout, /no NATS server to ask/);
});
