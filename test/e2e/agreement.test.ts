// Three marmot nodes prove they hold the same rows: digests of quiet shards agree, and a row changed behind
// marmot's back on one node (its capture triggers bypassed) is reported by the other nodes within a minute.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { APPLYING_TABLE } from "../../src/sqlite/names.js";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = `
CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, price REAL, cover BLOB);
CREATE TABLE ratings (user TEXT NOT NULL, book INTEGER NOT NULL, stars REAL, PRIMARY KEY (user, book));
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE);
`;
const TABLES = ["Books", "ratings", "users"];

function writes(node: number): string {
  const rows: string[] = [];
  for (let i = 0; i < 40; i++) {
    const id = node * 1000 + i;
    rows.push(
      `INSERT INTO Books VALUES (${id}, 'title ${id} ✓', ${i}.25, x'${(id % 256).toString(16).padStart(2, "0")}00ff');`,
      `INSERT INTO ratings VALUES ('user ${node}', ${id}, ${i % 5}.5);`,
      `INSERT INTO users VALUES (${id}, 'u${id}@example.com');`,
    );
  }
  rows.push(`INSERT INTO Books VALUES (${node}, 'big', 9223372036854775807, NULL);`);
  return `BEGIN; ${rows.join(" ")} COMMIT;`;
}

describe("nodes prove they agree", () => {
  let cluster: TestCluster | undefined;
  after(async () => {
    await cluster?.stopAll();
  });

  test("identical nodes report agreement; a row changed behind marmot's back is reported by the others", async () => {
    cluster = await TestCluster.create({ schema: SCHEMA, replicas: 1, shards: 2 });
    await cluster.startAll();
    for (const n of cluster.nodes) sqlite3(n.spec.dbPath, writes(n.spec.id));
    await cluster.waitConverged(TABLES, 120_000);

    for (const n of cluster.nodes) await n.waitForLog(/this node agrees with the other nodes/, 90_000);
    assert.doesNotMatch(cluster.nodes.map((n) => n.output).join("\n"), /nodes disagree/);

    // The app on node 3 changes a row with marmot's capture switched off for its transaction: no change is logged,
    // none travels, and node 3 now holds a row no other node has.
    const node3 = cluster.node(3);
    sqlite3(
      node3.spec.dbPath,
      `BEGIN; INSERT INTO "${APPLYING_TABLE}" VALUES (1); UPDATE Books SET title = 'changed behind marmot' WHERE id = 1001; DELETE FROM "${APPLYING_TABLE}"; COMMIT;`,
    );
    assert.notEqual(cluster.differences(["Books"]), "", "the row differs on node 3 only");

    for (const id of [1, 2]) {
      const n = cluster.node(id);
      await waitFor(
        () => new RegExp(`nodes disagree.*table=Books.*nodes=${id},3`).test(n.output),
        60_000,
        () => `node ${id} to report that node 3 disagrees on table Books; its output:\n${n.tail(20)}`,
        500,
      );
    }
    assert.doesNotMatch(node3.output + cluster.node(1).output, /nodes disagree.*table=(ratings|users)/, "only the changed table is reported");
    const codes = await Promise.all(cluster.nodes.map((n) => n.stop()));
    assert.deepEqual(codes, [0, 0, 0]);
  });
});
