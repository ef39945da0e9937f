// Large rows: how long a row larger than one NATS message takes to reach every node, and what it costs marmot in
// memory. Three bin/marmot processes with embedded, clustered nats-servers (R3 streams and bucket), one shard; each
// row is written on node 1 by the sqlite3 CLI, in ascending size, and polled for on every node. Peak RSS is each
// marmot's VmHWM after the row arrived (so it covers that row and every smaller one before it).
//
//   npm run build && node dist/bench/large-rows.js [--replicas 3] [--sizes-mb 1,5,50]

import { readFileSync } from "node:fs";
import { sleep, TestCluster, waitFor } from "../test/helpers/marmot.js";
import { killAll } from "../test/helpers/processes.js";
import { sqlite3, sqlite3Async } from "../test/helpers/sqlite.js";
import { table } from "./stats.js";
import { textOption } from "./options.js";

const SCHEMA = "CREATE TABLE docs (id INTEGER PRIMARY KEY, kind TEXT, body TEXT, data BLOB);";
const MB = 1024 * 1024;

const option = (name: string, fallback: string) => textOption(`--${name}`, fallback);

function peakRssMb(pid: number): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Math.round(Number(match[1]) / 1024) : -1;
}

async function main(): Promise<void> {
  const replicas = Number(option("replicas", "3"));
  const sizes = option("sizes-mb", "1,5,50").split(",").map(Number);
  const cluster = await TestCluster.create({ schema: SCHEMA, replicas, shards: 1 });
  const rows: string[][] = [];
  try {
    await cluster.startAll();
    await sleep(2000);
    rows.push(["(after start)", "", "", ...cluster.nodes.map((n) => String(peakRssMb(n.pid)))]);
    let id = 0;
    for (const sizeMb of sizes) {
      for (const kind of ["blob (random)", "text (repetitive)"]) {
        id++;
        const bytes = Math.round(sizeMb * MB);
        const value = kind.startsWith("blob") ? `randomblob(${bytes})` : `printf('%.*c', ${bytes}, 'x')`;
        const column = kind.startsWith("blob") ? "data" : "body";
        const started = performance.now();
        await sqlite3Async(cluster.node(1).spec.dbPath, `INSERT INTO docs (id, kind, ${column}) VALUES (${id}, '${kind}', ${value});`);
        await waitFor(
          () => cluster.nodes.every((n) => sqlite3(n.spec.dbPath, `SELECT length(${column}) FROM docs WHERE id = ${id}`).trim() === String(bytes)),
          600_000,
          () => `row ${id} (${sizeMb} MB ${kind}) on every node`,
          // length() of TEXT reads the whole value: polled too often, the poll would be the load measured.
          250,
        );
        const seconds = (performance.now() - started) / 1000;
        rows.push([
          `${sizeMb} MB ${kind}`,
          seconds.toFixed(2),
          (sizeMb / seconds || 0).toFixed(1),
          ...cluster.nodes.map((n) => String(peakRssMb(n.pid))),
        ]);
      }
    }
    await cluster.waitConverged(["docs"], 120_000);
  } finally {
    await cluster.stopAll().catch(() => undefined);
    await killAll();
  }
  console.log(`large rows, ${replicas} replicas, written on node 1 (peak RSS = VmHWM of each marmot, MiB)`);
  console.log(table(["row", "s to all 3 nodes", "MB/s", "node 1 peak RSS", "node 2", "node 3"], rows));
}

main().catch(async (err) => {
  console.error(err);
  await killAll();
  process.exit(1);
});
