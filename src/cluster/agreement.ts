// Whether this node holds the same rows as the others: digests of quiet shards, shared in a NATS KV bucket, compared
// at the same stream sequence.
//
// A digest of a shard's rows means something only at a point where the rows are exactly what the stream's first
// `seq` messages made them: nothing of the app waits in the change logs, and nothing this node stored in the stream
// waits to be applied back. Both are read in the same read transaction as the rows (a connection of its own, in
// WAL mode, so neither the app nor the applier waits for it). Two digests of a shard's table taken at the same
// sequence must then be equal on every node; when they differ, the nodes have diverged.

import Database from "better-sqlite3";
import { createHash } from "node:crypto";
import type { KV } from "@nats-io/kv";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import { orAbort, sleep } from "../sleep.js";
import { APPLIED_TABLE, changeLogTable, lastStoredSeqKey, META_TABLE } from "../sqlite/names.js";
import { BUSY_TIMEOUT_MS } from "../sqlite/open.js";
import { quoteIdent } from "../sqlite/quote.js";
import type { TableInfo } from "../sqlite/table.js";
import { NOT_MARKER } from "../sqlite/trigger-sql.js";
import { digestTable } from "./digest.js";

export interface Mismatch {
  table: string;
  shard: number;
  /** the stream sequence both digests were taken at */
  seq: number;
  /** this node, then the other one */
  nodes: [string, string];
  rows: [number, number];
}

export interface AgreementSummary {
  /** agree: every comparison so far matched; disagree: some did not; unknown: nothing compared yet */
  state: "agree" | "disagree" | "unknown";
  mismatches: Mismatch[];
}

/** One node's digest of one table on one shard, as it is stored in the bucket. */
interface DigestRecord {
  node: string;
  table: string;
  shard: number;
  stream: string;
  seq: number;
  rows: number;
  hash: string;
}

export interface AgreementOptions {
  dbPath: string;
  nodeId: string;
  shards: number;
  streams: readonly { shard: number; stream: string }[];
  /** the captured tables */
  tables: () => readonly TableInfo[];
  /** how far this node applied a stream */
  appliedSequence: (stream: string) => number;
  /** whether the shard's stream held nothing this node had not applied, at the last look */
  caughtUp: (shard: number) => boolean;
  /** the digest bucket, created when missing */
  openBucket: () => Promise<KV>;
  /** how long a shard stays unchanged before its rows are digested */
  quietMs?: number;
  /** how often the shards are looked at */
  checkMs?: number;
  /** a quiet shard is digested again after this long at least (the app could change rows behind marmot's back) */
  redigestMs?: number;
}

/** The KV bucket of the digests: one per stream prefix, so clusters sharing a server stay apart. */
export function digestBucketName(streamPrefix: string): string {
  return `${streamPrefix.replace(/[^-\w]/g, "_")}-digests`;
}

const tableToken = (table: string) => createHash("sha1").update(table).digest("hex").slice(0, 16);

export class Agreement {
  private readonly quietMs: number;
  private readonly checkMs: number;
  private readonly minRedigestMs: number;
  /** per shard: the applied sequence last seen, and since when */
  private readonly seen = new Map<number, { seq: number; since: number }>();
  /** per shard: when and at which sequence it was last digested */
  private readonly digested = new Map<number, { seq: number; at: number }>();
  /** this node's latest digests, by "<shard>.<table token>" */
  private readonly mine = new Map<string, DigestRecord>();
  /** the other nodes' latest digests, by bucket key */
  private readonly theirs = new Map<string, DigestRecord>();
  /** per "<shard>.<table token>.<other node>": the last comparison at equal sequences */
  private readonly results = new Map<string, Mismatch | "agree">();
  private reader: Database.Database | undefined;
  /** how long the last digest took: a shard is digested again only 50 times that long after it */
  private lastCostMs = 0;
  /** why the last check did not digest ("" when it did) */
  private waitingFor = "";
  private lastState: AgreementSummary["state"] = "unknown";

  constructor(
    private readonly options: AgreementOptions,
    private readonly logger: Logger,
    private readonly metrics?: Metrics,
  ) {
    this.quietMs = options.quietMs ?? 3000;
    this.checkMs = options.checkMs ?? 2000;
    this.minRedigestMs = options.redigestMs ?? 20_000;
  }

  summary(): AgreementSummary {
    const mismatches = [...this.results.values()].filter((r): r is Mismatch => r !== "agree");
    const state = mismatches.length > 0 ? "disagree" : this.results.size > 0 ? "agree" : "unknown";
    return { state, mismatches };
  }

  /** Per shard, what this node's comparisons say: "differ" when one table differs, "agree" when all compared agree. */
  byShard(): Record<number, "agree" | "differ" | "unknown"> {
    const shards: Record<number, "agree" | "differ" | "unknown"> = {};
    for (const [key, result] of this.results) {
      const shard = Number(key.slice(0, key.indexOf(".")));
      if (result !== "agree") shards[shard] = "differ";
      else if (shards[shard] === undefined) shards[shard] = "agree";
    }
    return shards;
  }

  /** Looks at the shards every few seconds until `signal` aborts; never throws. */
  async run(signal: AbortSignal): Promise<void> {
    let bucket: KV | undefined;
    let watching: Promise<void> | undefined;
    let failure = "";
    try {
      while (!signal.aborted) {
        await sleep(this.checkMs, signal).catch(() => undefined);
        if (signal.aborted) break;
        try {
          if (bucket === undefined) bucket = await orAbort(this.options.openBucket(), signal);
          // (Re)started when it ended: without it, no other node's digest is seen.
          if (watching === undefined) {
            watching = this.watch(bucket, signal).finally(() => (watching = undefined));
          }
          await this.check(bucket, signal);
          failure = "";
        } catch (err) {
          if (signal.aborted) break;
          const reason = (err as Error).message;
          // Logged once per distinct reason: the check runs every few seconds.
          if (reason !== failure) this.logger.warn("cannot compare this node's rows with the other nodes' now; trying again", { reason });
          failure = reason;
        }
      }
    } finally {
      await watching;
      this.reader?.close();
    }
  }

  /**
   * Keeps the other nodes' digests as they come, and compares each with this node's at the same sequence. Ends
   * (never rejects) when the signal aborts or the watch fails.
   */
  private async watch(bucket: KV, signal: AbortSignal): Promise<void> {
    let stop = () => {};
    try {
      const entries = await orAbort(bucket.watch({ key: ">" }), signal);
      stop = () => entries.stop();
      signal.addEventListener("abort", stop, { once: true });
      for await (const entry of entries) {
        if (entry.operation !== "PUT") continue;
        let record: DigestRecord;
        try {
          record = entry.json<DigestRecord>();
        } catch {
          continue;
        }
        if (record.node === this.options.nodeId) continue;
        this.theirs.set(entry.key, record);
        const mine = this.mine.get(`${record.shard}.${tableToken(record.table)}`);
        if (mine !== undefined) this.compare(mine, record);
      }
    } catch (err) {
      if (!signal.aborted) this.logger.warn("stopped reading the other nodes' digests", { reason: (err as Error).message });
    } finally {
      signal.removeEventListener("abort", stop);
    }
  }

  /** Digest the shards that are due, publish, compare. */
  private async check(bucket: KV, signal: AbortSignal): Promise<void> {
    const now = Date.now();
    const due: { shard: number; stream: string }[] = [];
    for (const s of this.options.streams) {
      const seq = this.options.appliedSequence(s.stream);
      const seen = this.seen.get(s.shard);
      if (seen === undefined || seen.seq !== seq) {
        this.seen.set(s.shard, { seq, since: now });
        continue;
      }
      if (now - seen.since < this.quietMs || !this.options.caughtUp(s.shard)) continue;
      const last = this.digested.get(s.shard);
      // At most a fiftieth of the time goes to digests, however often the shard goes quiet at a new sequence.
      const gap = now - (last?.at ?? 0);
      if (gap < 50 * this.lastCostMs) continue;
      if (last === undefined || last.seq !== seq || gap >= this.minRedigestMs) due.push(s);
    }
    if (due.length === 0) return;

    this.reader ??= this.openReader();
    const reader = this.reader;
    const tables = this.options.tables();
    const started = Date.now();
    const records: DigestRecord[] = [];
    reader.prepare("BEGIN").run();
    try {
      // Read in the same transaction as the rows: what was applied, and whether anything of this node waits.
      const applied = new Map(
        (reader.prepare(`SELECT stream, seq FROM ${quoteIdent(APPLIED_TABLE)}`).all() as { stream: string; seq: bigint }[]).map((r) => [
          r.stream,
          Number(r.seq),
        ]),
      );
      const pending = tables.some(
        (t) =>
          reader
            .prepare(`SELECT EXISTS (SELECT 1 FROM ${quoteIdent(changeLogTable(t.name))} WHERE ${NOT_MARKER})`)
            .pluck(true)
            .get() === 1n,
      );
      if (pending) return this.waiting("changes of this node wait in the change logs");
      const storedUpTo = reader.prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).pluck(true);
      const ready = due.filter((s) => Number(storedUpTo.get(lastStoredSeqKey(s.stream)) ?? 0) <= (applied.get(s.stream) ?? 0));
      if (ready.length === 0) return this.waiting("changes of this node are in the stream and not applied back yet");
      this.waitingFor = "";
      for (const table of tables) {
        const digests = await digestTable(reader, table, this.options.shards, signal);
        for (const s of ready) {
          const d = digests[s.shard - 1]!;
          records.push({ node: this.options.nodeId, table: table.name, shard: s.shard, stream: s.stream, seq: applied.get(s.stream) ?? 0, ...d });
        }
      }
      for (const s of ready) this.digested.set(s.shard, { seq: applied.get(s.stream) ?? 0, at: Date.now() });
    } finally {
      if (reader.inTransaction) reader.prepare("COMMIT").run();
    }
    this.lastCostMs = Date.now() - started;

    for (const record of records) {
      const token = `${record.shard}.${tableToken(record.table)}`;
      const previous = this.mine.get(token);
      this.mine.set(token, record);
      if (previous?.seq !== record.seq || previous.hash !== record.hash || previous.rows !== record.rows) {
        await orAbort(bucket.put(`${this.options.shards}-${token}.${this.options.nodeId.replace(/[^-\w]/g, "_")}`, JSON.stringify(record)), signal);
      }
      for (const other of this.theirs.values()) {
        if (other.shard === record.shard && other.table === record.table) this.compare(record, other);
      }
    }
    this.logger.debug("digested quiet shards", { shards: records.map((r) => r.shard).join(","), tables: tables.length, ms: Date.now() - started });
  }

  /** Says once (until the next digest) why a quiet shard is not digested now. */
  private waiting(reason: string): void {
    if (reason !== this.waitingFor) this.logger.debug("not digesting yet: the rows are not what the stream made them", { reason });
    this.waitingFor = reason;
  }

  private compare(mine: DigestRecord, other: DigestRecord): void {
    if (mine.seq !== other.seq || mine.stream !== other.stream) return;
    const key = `${mine.shard}.${tableToken(mine.table)}.${other.node}`;
    const before = this.results.get(key);
    if (mine.hash === other.hash && mine.rows === other.rows) {
      this.results.set(key, "agree");
      if (before !== undefined && before !== "agree") {
        this.logger.info("nodes agree again on a table", {
          table: mine.table,
          shard: mine.shard,
          nodes: `${mine.node},${other.node}`,
          seq: mine.seq,
        });
      }
    } else {
      const mismatch: Mismatch = {
        table: mine.table,
        shard: mine.shard,
        seq: mine.seq,
        nodes: [mine.node, other.node],
        rows: [mine.rows, other.rows],
      };
      this.results.set(key, mismatch);
      if (before === undefined || before === "agree" || before.seq !== mine.seq) {
        this.logger.error("nodes disagree: a table holds different rows on two nodes that applied the same changes", {
          table: mine.table,
          shard: mine.shard,
          stream: mine.stream,
          seq: mine.seq,
          nodes: `${mine.node},${other.node}`,
          rows: `${mine.rows},${other.rows}`,
          fix: "compare the table on these nodes (sqldiff); restore the node that is wrong from a snapshot of another",
        });
      }
    }
    const summary = this.summary();
    this.metrics?.digestMismatches.set(summary.mismatches.length);
    if (summary.state !== this.lastState) {
      if (summary.state === "agree")
        this.logger.info("this node agrees with the other nodes on every table compared", { compared: this.results.size });
      this.lastState = summary.state;
    }
  }

  private openReader(): Database.Database {
    const reader = new Database(this.options.dbPath, { readonly: true, fileMustExist: true, timeout: BUSY_TIMEOUT_MS });
    reader.defaultSafeIntegers(true);
    return reader;
  }
}
