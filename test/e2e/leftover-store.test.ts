// A fresh database meeting the JetStream store an earlier run left beside it: marmot says so, naming the store.

import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { test } from "node:test";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { createDb, sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);";

test("a new database on an old embedded store gets the earlier run's changes, and a warning that names the store", async (t) => {
  const cluster = await TestCluster.create({ size: 1, schema: SCHEMA });
  t.after(() => cluster.stopAll());
  const node = cluster.node(1);
  // A lone embedded server: without peers, -cluster-addr would ask for a JetStream cluster it cannot form.
  node.spec.args.splice(node.spec.args.indexOf("-cluster-addr"));
  await cluster.startAll();
  sqlite3(node.spec.dbPath, "INSERT INTO books (id, title) VALUES (1, 'from the first run');");
  await node.waitForLog(/marmot is ready/);
  // Published once the change log is empty again.
  await waitFor(
    () => sqlite3(node.spec.dbPath, "SELECT count(*) FROM __marmot__books_change_log WHERE __marmot_op <> 'marker';").trim() === "0",
    30_000,
    () => "the first run's change to be published",
  );
  assert.equal(await node.stop(), 0);
  assert.doesNotMatch(node.output, /never applied a replicated change/, "the first start on an empty store says nothing");

  // The user starts over by deleting the database only, as the original's example did.
  for (const suffix of ["", "-wal", "-shm"]) rmSync(node.spec.dbPath + suffix, { force: true });
  createDb(node.spec.dbPath, SCHEMA);
  node.start();
  await node.waitForLog(/marmot is ready/);
  assert.match(node.output, /never applied a replicated change, but the streams already hold changes from before this start/);
  assert.ok(node.output.includes(node.spec.storeDir), `the warning names the store ${node.spec.storeDir}:\n${node.tail()}`);
  await waitFor(
    () => sqlite3(node.spec.dbPath, "SELECT title FROM books;").trim() === "from the first run",
    30_000,
    () => "the earlier run's row replayed into the new database (what the warning is about)",
  );
});
