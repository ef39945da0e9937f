// Moves changes from the change logs to JetStream in rounds: read, keep each row's last change, shard, batch,
// publish them all at once, and remove them from the logs only after every batch of the round was acknowledged.
//
// Why rounds: a row appears in at most one batch of a round, and a round starts only after the previous one was
// fully acknowledged, so a row's changes reach its stream in the order the app made them, even when batches of
// one round are retried and land out of order.
//
// A table whose rows clash on a UNIQUE value besides their key is different: the app's INSERT OR REPLACE removes
// the row it clashes with, and no trigger sees that removal; other nodes make it when they apply the change, as a
// clash again. That holds only if they apply every change of the table in the app's order: none is folded into a
// later change of its row (a round takes such a table's changes up to a row's second one), and its batches of a
// round are published one after the other.

import { createHash } from "node:crypto";
import { PhantomDuplicateError } from "./errors.js";
import type { Logger } from "./log.js";
import type { Metrics } from "./metrics.js";
import type { ChangeLogReader, PendingChange } from "./sqlite/change-log.js";
import { batchOrigin, encodeBatch, encodeReference } from "./wire/codec.js";
import type { LargeBatchStore } from "./stream/large-objects.js";
import type { BatchPublisher } from "./stream/publisher.js";
import { orAbort, sleep } from "./sleep.js";
import { checkMarginMs } from "./stream/duplicate-window.js";
import { withWriteLock } from "./sqlite/busy.js";
import { rowKeyBytes, rowKeyString, shardOfRow } from "./wire/shard.js";

export interface ShipperOptions {
  /** this node's id */
  origin: string;
  /** changes from before a cleanup must not share message ids with changes after it */
  epoch: string;
  shards: number;
  /** changes per message at most (scan_max_changes) */
  batchMaxChanges: number;
  /** the server's max_payload */
  maxPayload: () => number;
  compress: boolean;
  /** messages of one round in flight at once */
  maxInFlight?: number;
  /** bytes of changes read in one round at most */
  roundMaxBytes?: number;
  /** told of each batch JetStream stored: its shard, its sequence there, and the row keys it holds */
  onStored?: (shard: number, seq: number, rowKeys: readonly string[]) => void;
  /**
   * The stream of a shard: with it, the highest sequence a round's messages were stored at in each stream is
   * recorded as their changes leave the change log (see ChangeLogReader.lastStoredSeq).
   */
  streamOf?: (shard: number) => string;
  /**
   * Where a change too large for one message goes: its batch is stored as an object, and a small reference
   * message takes its place in the stream. Without it, such a change stays in the change log, unsent.
   */
  largeBatches?: LargeBatchStore;
  /** Keeps a retry that outlasts the streams' duplicate window from storing a batch twice (see duplicate-window.ts). */
  duplicates: {
    windowMs: number;
    /** the sequence at which the shard's stream stored a message with this id since `sinceMs`, if it did */
    findStored(shard: number, msgId: string, sinceMs: number, signal: AbortSignal): Promise<number | undefined>;
  };
}

interface Batch {
  shard: number;
  changes: PendingChange[];
  /** rowKey of each change (see rowKeyString) */
  rowKeys: string[];
  /** holds changes of a table whose rows clash: published in order, after the previous such batch was stored */
  ordered: boolean;
}

/** Room left in a message for the header and the encoding's own bytes, when packing by the size estimate. */
const PAYLOAD_MARGIN = 8 * 1024;
/** Room left for the message's NATS headers (the message id) when deciding on the exact encoded size. */
const HEADER_ROOM = 1024;
/** A stored object older than this is put again before its reference goes out (see publishLarge). */
const REUPLOAD_AFTER_MS = 60 * 60 * 1000;

/** How the JetStream message id of every batch of this node and epoch begins. */
export function msgIdPrefix(origin: string, epoch: string): string {
  return `${origin}-${epoch}-`;
}

export class ChangeShipper {
  /** per stream, the highest sequence this round's messages were stored at */
  private readonly storedInRound = new Map<string, number>();
  /** row key -> the change too large for one message that stays in the change log for that row */
  private readonly oversize = new Map<string, { table: string; changeId: number }>();
  private outageSince = 0;
  private lastOutageLog = 0;

  constructor(
    private readonly reader: ChangeLogReader,
    private readonly publisher: BatchPublisher,
    private readonly options: ShipperOptions,
    private readonly logger: Logger,
    private readonly metrics?: Metrics,
  ) {}

  /**
   * Ship one round. Returns the number of changes read (0: the logs are empty).
   * Retries failed publishes until they succeed or `signal` aborts; on abort the round's changes stay in the logs.
   */
  async shipRound(signal: AbortSignal): Promise<number> {
    // 16 x scan_max_changes a round: measured as fast as 64 on a loaded 3-node cluster, with a quarter less peak memory.
    const maxInFlight = this.options.maxInFlight ?? 16;
    const changes = this.reader.read(this.options.batchMaxChanges * maxInFlight, this.options.roundMaxBytes ?? 16 * 1024 * 1024);
    this.metrics?.scanChanges.inc();
    if (changes.length === 0) return 0;
    this.metrics?.countChanges.inc(changes.length);

    const upTo = new Map<string, number>();
    const latest = new Map<string, { change: PendingChange; shard: number; rowKey: string }>();
    /** tables whose rows clash, cut at a row's second change: the rest waits for the next round */
    const cut = new Set<string>();
    let taken = 0;
    for (const change of changes) {
      if (cut.has(change.wireTable.name)) continue;
      const keyBytes = rowKeyBytes(change.wireTable.name, change.key);
      const rowKey = rowKeyString(keyBytes);
      if (change.wholeTableShard && latest.has(rowKey)) {
        cut.add(change.wireTable.name);
        continue;
      }
      taken++;
      // Only the row's last change of the round travels: it carries the row's whole state.
      latest.delete(rowKey);
      latest.set(rowKey, { change, shard: shardOfRow(change.wireTable.name, keyBytes, this.options.shards, change.wholeTableShard), rowKey });
      upTo.set(change.wireTable.name, Math.max(upTo.get(change.wireTable.name) ?? 0, change.changeId));
    }

    for (const table of cut) this.reader.rewindTable(table, upTo.get(table) ?? 0);
    const batches = this.cutBatches(latest.values());
    this.storedInRound.clear();
    await this.publishAll(batches, maxInFlight, signal);
    const kept = this.keptIds();
    await withWriteLock(
      () => this.reader.removeUpTo(upTo, kept, this.storedInRound),
      "removing shipped changes from the change log",
      this.logger,
      signal,
    );
    this.metrics?.published.inc(taken);
    return taken;
  }

  private keptIds(): Map<string, Set<number>> {
    const kept = new Map<string, Set<number>>();
    for (const { table, changeId } of this.oversize.values()) {
      if (!kept.has(table)) kept.set(table, new Set());
      kept.get(table)!.add(changeId);
    }
    return kept;
  }

  private cutBatches(entries: Iterable<{ change: PendingChange; shard: number; rowKey: string }>): Batch[] {
    const limit = this.options.maxPayload() - PAYLOAD_MARGIN;
    const open = new Map<string, { batch: Batch; bytes: number }>();
    const batches: Batch[] = [];
    for (const { change, shard, rowKey } of entries) {
      // A later change of the row supersedes a change that was too large: that one may now leave the log.
      const stale = this.oversize.get(rowKey);
      if (stale && stale.changeId < change.changeId) this.oversize.delete(rowKey);
      // The estimate only plans the packing (it counts text at 3 bytes a character): a change it puts over the limit
      // goes in a message of its own, and the exact encoded size decides how that travels (see publishWithRetry).
      if (change.size > limit) {
        batches.push({ shard, changes: [change], rowKeys: [rowKey], ordered: change.wholeTableShard });
        continue;
      }
      const ordered = change.wholeTableShard;
      const slot = `${shard}${ordered ? "o" : ""}`;
      let current = open.get(slot);
      if (current && (current.batch.changes.length >= this.options.batchMaxChanges || current.bytes + change.size > limit)) {
        current = undefined;
      }
      if (!current) {
        current = { batch: { shard, changes: [], rowKeys: [], ordered }, bytes: 0 };
        open.set(slot, current);
        batches.push(current.batch);
      }
      current.batch.changes.push(change);
      current.batch.rowKeys.push(rowKey);
      current.bytes += change.size;
    }
    return batches;
  }

  private keepOversize(change: PendingChange, rowKey: string, bytes: number): void {
    if (this.oversize.get(rowKey)?.changeId === change.changeId) return;
    this.oversize.set(rowKey, { table: change.wireTable.name, changeId: change.changeId });
    this.logger.error("a change is larger than one NATS message and stays in the change log, unsent", {
      table: change.wireTable.name,
      change_id: change.changeId,
      bytes,
      max_payload: this.options.maxPayload(),
      fix: "raise max_payload in the nats-server config ([nats] server_config) on every server",
    });
  }

  private encode(batch: Batch): { payload: Buffer; msgId: string } {
    const payload = encodeBatch(
      {
        origin: batchOrigin(this.options.origin, this.options.epoch),
        changes: batch.changes.map((c) => ({ table: c.wireTable, op: c.op, changeId: c.changeId, values: c.values })),
      },
      { compress: this.options.compress },
    );
    // The id names exactly which changes the message holds, so a retry of the same batch is dropped as a duplicate.
    const hash = createHash("sha1");
    for (const c of batch.changes) hash.update(`${c.wireTable.name}\u0000${c.changeId}\u0000`);
    return { payload, msgId: `${msgIdPrefix(this.options.origin, this.options.epoch)}${hash.digest("hex")}` };
  }

  private async publishAll(batches: Batch[], maxInFlight: number, signal: AbortSignal): Promise<void> {
    const ordered = batches.filter((b) => b.ordered);
    const spread = batches.filter((b) => !b.ordered);
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (next < spread.length && failure === undefined) {
        const batch = spread[next++]!;
        try {
          await this.publishWithRetry(batch, signal);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    // One after the other, in the app's order (see the top).
    const inOrder = async () => {
      for (const batch of ordered) {
        if (failure !== undefined) return;
        try {
          await this.publishWithRetry(batch, signal);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all([inOrder(), ...Array.from({ length: Math.min(maxInFlight, spread.length) }, worker)]);
    if (failure !== undefined) throw failure;
  }

  private async publishWithRetry(batch: Batch, signal: AbortSignal): Promise<void> {
    const encoded = this.encode(batch);
    const bytes = encoded.payload.length;
    // Fit is decided here, on the exact bytes: the estimate that packed the batch is only an estimate.
    if (bytes > this.options.maxPayload() - HEADER_ROOM) {
      if (batch.changes.length > 1) {
        const half = Math.ceil(batch.changes.length / 2);
        await this.publishWithRetry({ ...batch, changes: batch.changes.slice(0, half), rowKeys: batch.rowKeys.slice(0, half) }, signal);
        await this.publishWithRetry({ ...batch, changes: batch.changes.slice(half), rowKeys: batch.rowKeys.slice(half) }, signal);
        return;
      }
      // One change that does not fit: halving cannot help.
      const store = this.options.largeBatches;
      if (store === undefined) {
        this.keepOversize(batch.changes[0]!, batch.rowKeys[0]!, bytes);
        return;
      }
      await this.publishLarge(batch, encoded, store, signal);
      return;
    }
    await this.publishEncoded(batch, encoded, signal);
  }

  /**
   * A batch too large for one message: stored whole as an object first, then a small reference message goes into
   * the row's stream, whose position there is the change's position. A crash before the reference is stored leaves
   * the change in the change log, to go again; no node ever sees a reference to an object not fully stored.
   */
  private async publishLarge(batch: Batch, encoded: { payload: Buffer; msgId: string }, store: LargeBatchStore, signal: AbortSignal): Promise<void> {
    const object = encoded.msgId;
    const sha256 = createHash("sha256").update(encoded.payload).digest();
    const size = encoded.payload.length;
    let uploadedAt = 0;
    const upload = async () => {
      // Put again when the first put is old: the cleanup takes unreferenced objects away after a while.
      if (Date.now() - uploadedAt < REUPLOAD_AFTER_MS) return;
      await this.retrying(() => store.put(object, encoded.payload, { stream: this.options.streamOf?.(batch.shard) ?? "" }), batch.shard, signal);
      uploadedAt = Date.now();
    };
    this.logger.info("storing a change too large for one message as an object", { shard: batch.shard, object, bytes: size });
    await upload();
    const seq = await this.publishEncoded(batch, { payload: encodeReference({ object, size, sha256 }), msgId: encoded.msgId }, signal, upload);
    // Tells the cleanup which stream position the object belongs to; best effort (see LargeBatchStore.referenced).
    await store.referenced(object, seq).catch((err: unknown) =>
      this.logger.warn("could not record where a large change's reference is; its object is removed later by age", {
        object,
        reason: (err as Error).message ?? String(err),
      }),
    );
  }

  /** Retries `work` with backoff until it succeeds or `signal` aborts, reporting the outage. */
  private async retrying(work: () => Promise<void>, shard: number, signal: AbortSignal): Promise<void> {
    let attempt = 0;
    for (;;) {
      try {
        await orAbort(work(), signal);
        return;
      } catch (err) {
        if (signal.aborted) throw signal.reason ?? err;
        attempt++;
        this.reportOutage(err, shard);
        await sleep(Math.min(100 * 2 ** Math.min(attempt, 6), 5000), signal);
      }
    }
  }

  /** Publish until stored; `beforeAttempt` runs before each try. Returns the sequence the message was stored at. */
  private async publishEncoded(
    batch: Batch,
    encoded: { payload: Buffer; msgId: string },
    signal: AbortSignal,
    beforeAttempt?: () => Promise<void>,
  ): Promise<number> {
    let attempt = 0;
    let reissued = 0;
    // When the first attempt not yet looked for in the stream was made: JetStream drops a repeat of its id only
    // within the duplicate window, so past that a lost ack must be found by looking.
    let uncheckedSince = Date.now();
    const { windowMs, findStored } = this.options.duplicates;
    for (;;) {
      try {
        // A stop does not wait for the ack: the next start applies the streams before it publishes, so a batch
        // stored meanwhile leaves the change log then instead of going out twice.
        await beforeAttempt?.();
        let seq: number | undefined;
        if (attempt > 0 && Date.now() - uncheckedSince > windowMs - checkMarginMs(windowMs)) {
          const lookedAt = Date.now();
          seq = await orAbort(findStored(batch.shard, encoded.msgId, uncheckedSince - checkMarginMs(windowMs), signal), signal);
          uncheckedSince = lookedAt;
          this.logger.info(
            seq === undefined
              ? "a batch retried longer than the duplicate window is not in the stream; sending it again"
              : "a batch retried longer than the duplicate window was stored already; its ack was lost",
            { shard: batch.shard, msg_id: encoded.msgId, seq },
          );
        }
        seq ??= await orAbort(this.publisher.publish(batch.shard, encoded.payload, encoded.msgId), signal);
        this.options.onStored?.(batch.shard, seq, batch.rowKeys);
        const stream = this.options.streamOf?.(batch.shard);
        if (stream !== undefined) this.storedInRound.set(stream, Math.max(this.storedInRound.get(stream) ?? 0, seq));
        this.logger.debug("batch stored", { shard: batch.shard, seq, msg_id: encoded.msgId, changes: batch.changes.length });
        if (this.outageSince !== 0) {
          this.logger.info("JetStream accepts changes again", { after_seconds: Math.round((Date.now() - this.outageSince) / 1000) });
          this.outageSince = 0;
        }
        return seq;
      } catch (err) {
        if (signal.aborted) throw signal.reason ?? err;
        if (err instanceof PhantomDuplicateError) {
          // The id is burnt on that server: the same changes go out under a new one.
          reissued++;
          this.logger.warn("JetStream reported a batch as a duplicate of a message it does not hold; sending it again under a new id", {
            shard: batch.shard,
            reason: err.message,
          });
          encoded.msgId = `${encoded.msgId.replace(/~\d+$/, "")}~${reissued}`;
          continue;
        }
        attempt++;
        this.reportOutage(err, batch.shard);
        await sleep(Math.min(100 * 2 ** Math.min(attempt, 6), 5000), signal);
      }
    }
  }

  private reportOutage(err: unknown, shard: number): void {
    const now = Date.now();
    if (this.outageSince === 0) this.outageSince = now;
    if (now - this.lastOutageLog < 30_000) return;
    this.lastOutageLog = now;
    this.logger.warn("waiting for JetStream to accept changes; they stay in the change log meanwhile", {
      shard,
      reason: (err as Error).message ?? String(err),
      pending: this.reader.pendingCount(),
    });
  }
}
