// The tables and rows the benchmark writes, shared by the app processes and the ceilings so both carry the same data.

/** Bulk-load table (T1, O1, the ceilings): an INTEGER PRIMARY KEY and about 100 bytes of mixed values per row. */
export function bulkTableSql(table: string): string {
  return `CREATE TABLE "${table}" (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, score REAL, created_at INTEGER NOT NULL, note TEXT);`;
}

export const BULK_COLUMNS = ["id", "name", "email", "score", "created_at", "note"] as const;

export type BulkRow = [bigint, string, string, number, bigint, string];

/** Row `i` of the bulk load; deterministic, partly repetitive, like real data (it compresses, but not to nothing). */
export function bulkRow(i: number): BulkRow {
  const mix = (Math.imul(i + 1, 2654435761) >>> 0).toString(16).padStart(8, "0");
  return [
    BigInt(i + 1),
    `user-${i}`,
    `user${i}@example.com`,
    (i % 1000) / 7,
    1_700_000_000_000n + BigInt(i) * 1000n,
    `note ${i % 97}: the quick brown fox ${mix} jumps over ${mix.slice(0, 4)}`,
  ];
}

export function bulkInsertSql(table: string): string {
  return `INSERT INTO "${table}" (${BULK_COLUMNS.join(", ")}) VALUES (${BULK_COLUMNS.map(() => "?").join(", ")})`;
}

/** Mixed-writers table (T2), with `seedRows` rows present on every node before marmot starts. */
export function mixedTableSql(table: string, seedRows: number): string {
  return (
    `CREATE TABLE "${table}" (id INTEGER PRIMARY KEY, v TEXT NOT NULL, by_node INTEGER NOT NULL, at INTEGER NOT NULL);\n` +
    `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${seedRows}) ` +
    `INSERT INTO "${table}" (id, v, by_node, at) SELECT x, 'seed', 0, 0 FROM c;`
  );
}

/** Latency table (L1): the writer stores the monotonic clock at its write; the reader on another node subtracts it. */
export function latencyTableSql(table: string): string {
  return `CREATE TABLE "${table}" (id INTEGER PRIMARY KEY, written_ns INTEGER NOT NULL, pad TEXT);`;
}

/** process.hrtime is CLOCK_MONOTONIC, one clock for every process on the machine. */
export function nowNs(): bigint {
  return process.hrtime.bigint();
}

/** Sleep the thread without spinning (for waits shorter than a timer tick). */
const sleeper = new Int32Array(new SharedArrayBuffer(4));
export function sleepSync(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

/** Block until the monotonic clock reaches `ns` (all processes of one workload start together). */
export async function waitUntil(ns: bigint): Promise<void> {
  for (;;) {
    const left = Number(ns - nowNs()) / 1e6;
    if (left <= 0) return;
    if (left > 5) await new Promise((r) => setTimeout(r, left - 3));
    else sleepSync(left);
  }
}

/** A child's result: one JSON line on stdout, bigints as strings. */
export function report(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
}
