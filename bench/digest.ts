// The cost of an agreement digest: one scan of a large table, digests for every shard, while the event loop stays free.
//
// node dist/bench/digest.js [--rows 1000000] [--shards 4] [--unique]

import { rmSync } from "node:fs";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import Database from "better-sqlite3";
import { digestTable } from "../src/cluster/digest.js";
import { silentLogger } from "../src/log.js";
import { installCapture } from "../src/sqlite/capture.js";
import { tempDir } from "../test/helpers/sqlite.js";
import { bulkInsertSql, bulkRow, bulkTableSql, nowNs } from "./workload.js";
import { positiveIntegerOption as option } from "./options.js";

const rows = option("--rows", 1_000_000);
const shards = option("--shards", 4);
const mib = (bytes: number) => (bytes / 1024 / 1024).toFixed(0);

async function main(): Promise<void> {
  const dir = tempDir("marmot-bench-digest-");
  const path = join(dir, "bench.db");
  try {
    const db = new Database(path);
    db.pragma("journal_mode = WAL");
    db.exec(bulkTableSql("bulk"));
    // --unique: an email UNIQUE besides the key, so the whole table sits on one shard and no row key is hashed
    if (process.argv.includes("--unique")) db.exec('CREATE UNIQUE INDEX bulk_email ON "bulk" (email);');
    const insert = db.prepare(bulkInsertSql("bulk"));
    db.transaction(() => {
      for (let i = 0; i < rows; i++) insert.run(bulkRow(i));
    })();
    const { tables } = installCapture(db, silentLogger);
    db.close();

    // As marmot reads it: a read-only connection of its own, inside one read transaction.
    const reader = new Database(path, { readonly: true });
    reader.defaultSafeIntegers(true);
    const table = tables.find((t) => t.name === "bulk")!;
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 20);
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    reader.prepare("BEGIN").run();
    const start = nowNs();
    const cpuStart = process.cpuUsage();
    const digests = await digestTable(reader, table, shards);
    const ms = Number(nowNs() - start) / 1e6;
    const cpu = process.cpuUsage(cpuStart);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    reader.prepare("COMMIT").run();
    loop.disable();
    clearInterval(sampler);
    rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    reader.close();

    const counted = digests.reduce((sum, d) => sum + d.rows, 0);
    if (counted !== rows) throw new Error(`the digests count ${counted} rows, the table has ${rows}`);
    console.log(`digest of ${rows} rows (about 100 bytes each) into ${shards} shards${table.uniqueBeyondKey ? " (one shard: UNIQUE column)" : ""}`);
    console.log(
      `  time:              ${ms.toFixed(0)} ms wall, ${cpuMs.toFixed(0)} ms CPU (${((rows / cpuMs) * 1000).toFixed(0)} rows per CPU second)`,
    );
    console.log(`  RSS:               ${mib(rssBefore)} MiB before, ${mib(rssPeak)} MiB at most (+${mib(rssPeak - rssBefore)} MiB)`);
    console.log(`  event loop delay:  max ${(loop.max / 1e6).toFixed(1)} ms, p99 ${(loop.percentile(99) / 1e6).toFixed(1)} ms`);
    console.log(`  per shard:         ${digests.map((d, i) => `${i + 1}: ${d.rows} rows ${d.hash}`).join("; ")}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
