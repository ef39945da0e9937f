// marmot -status and -parked against a real three-node cluster: the exit codes a script relies on, and parked
// changes listed, retried through the running node, and discarded.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";
import { marmotCommand, repoRoot, TestCluster, waitFor } from "../helpers/marmot.js";
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
    execFile(marmotCommand[0]!, [...marmotCommand.slice(1), ...args], { cwd: repoRoot, timeout: 60_000 }, (err, stdout, stderr) => {
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
  // Every node has the table, but nodes 2 and 3 refuse one value with a CHECK of their own (set before marmot's first
  // start, so it is each node's own schema and does not travel): node 1's row breaks it there and is parked. A
  // table missing on a node would not do: once the schema stream has passed such a change, it is settled as
  // obsolete (see Applier.retryParked).
  sqlite3(cluster.node(1).spec.dbPath, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);");
  for (const id of [2, 3]) {
    sqlite3(cluster.node(id).spec.dbPath, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT CHECK (body <> 'kept aside'));");
  }
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

  sqlite3(cluster.node(1).spec.dbPath, "INSERT INTO notes (id, body) VALUES (1, 'kept aside'); INSERT INTO books (id, title) VALUES (1, 'Emma');");
  await waitFor(
    () => sqlite3(cluster.node(3).spec.dbPath, "SELECT title FROM books;").trim() === "Emma",
    60_000,
    () => "the book on node 3",
  );
  await waitFor(
    async () => (last = await marmot([...config(2), "-status"])).code === 1 && /node 3 has 1 parked change/.test(last.stdout),
    60_000,
    () => `-status to fail on the parked changes: ${last && show(last)}`,
    500,
  );
  assert.match(last!.stdout, /node 2 has 1 parked change/);

  const listed = await marmot([...config(2), "-parked"]);
  assert.equal(listed.code, 0, show(listed));
  assert.match(
    listed.stdout,
    /^\d+\s+notes\s+SQLITE_CONSTRAINT_CHECK: CHECK constraint failed.*\s+\S+Z\s+1\/\S+\s+marmot-changes-1-1\/\d+$/m,
    show(listed),
  );

  // Node 2: a retry through the running node, which cannot help here (the CHECK still refuses the row): it says so.
  const retried = await marmot([...config(2), "-parked", "-retry"]);
  assert.equal(retried.code, 1, show(retried));
  assert.match(retried.stdout, /applied 0 of 1 parked change\(s\); 1 still parked/);
  await waitFor(
    () => /retried the parked changes, as marmot -parked -retry asked/.test(cluster.node(2).output),
    10_000,
    () => "the running node to log the retry",
  );

  // Node 3, its marmot stopped: no node takes the request, so the command tries itself.
  assert.equal(await cluster.node(3).stop(), 0);
  const alone = await marmot([...config(3), "-parked", "-retry"]);
  assert.equal(alone.code, 1, show(alone));
  assert.match(alone.stdout, /applied 0 of 1 parked change\(s\); 1 still parked/, show(alone));
  assert.match(alone.stderr + alone.stdout, /no running marmot took the request/);
  cluster.node(3).start();
  await cluster.node(3).waitForLog(/marmot is ready/);

  // The parked changes are discarded: without a terminal to confirm on, only with -yes.
  for (const id of [2, 3]) {
    const refused = await marmot([...config(id), "-parked", "-discard"]);
    assert.equal(refused.code, 2, show(refused));
    assert.match(refused.stderr + refused.stdout, /add -yes/);
    const discarded = await marmot([...config(id), "-parked", "-discard", "-yes"]);
    assert.equal(discarded.code, 0, show(discarded));
    assert.match(discarded.stdout, /discarded 1 parked change/);
    assert.equal((await marmot([...config(id), "-parked"])).stdout.trim(), `no parked changes in ${cluster.node(id).spec.dbPath}`);
  }
  // Discarded, the note is on node 1 only: the digests of the quiet shard show it, and -status fails on it.
  await waitFor(
    async () => (last = await marmot([...config(1), "-status"])).code === 1 && /differs from the others on shard 1/.test(last.stdout),
    90_000,
    () => `-status to report that the nodes differ: ${last && show(last)}`,
    500,
  );
  // Deleted on node 1 (the delete travels), the nodes agree again.
  sqlite3(cluster.node(1).spec.dbPath, "DELETE FROM notes WHERE id = 1;");
  await waitFor(
    async () => (last = await marmot([...config(1), "-status"])).code === 0,
    90_000,
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
