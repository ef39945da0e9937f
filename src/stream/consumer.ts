// Consumes one shard's stream with this node's durable consumer and hands every message, in order, to the applier.

import { AckPolicy, type ConsumerNotification, DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import type { ApplyResult, StreamMessage } from "../sqlite/applier.js";
import { sleep } from "../sleep.js";
import { decodeReference } from "../wire/codec.js";
import { DecodeError } from "../errors.js";
import type { JetStreamLargeBatches } from "./large-objects.js";
import { withWriteLock } from "../sqlite/busy.js";
import { readOwnMessages } from "./own-messages.js";
import { SENT_AT_HEADER } from "./publisher.js";
import type { ShardStream } from "./streams.js";

/** A place to apply messages: records each applied stream sequence in the same transaction. */
export interface MessageApplier {
  appliedSequence(stream: string): number;
  applyMessage(stream: string, seq: number, data: Uint8Array): ApplyResult;
  /** Several messages in one transaction that records the last sequence. */
  applyMessages(stream: string, messages: readonly StreamMessage[]): ApplyResult[];
  /** This node's message stored at `seq` and not applied yet (see recallOwnMessages); returns its row count. */
  noteStoredMessage(stream: string, seq: number, data: Uint8Array): number;
  /** Moves past dropped messages `from`..`to` when they were all this node's own (see Applier.passOwnGap). */
  passOwnGap(stream: string, from: number, to: number): boolean;
}

/** Messages already delivered that are applied together at most: bounds how long one transaction holds the write lock. */
const MAX_BATCH_MESSAGES = 64;
const MAX_BATCH_BYTES = 256 * 1024;

/**
 * How long one pull request lives. A pull lost with a server or a consumer leader (a node crash, a leadership change)
 * is only noticed after two missed idle heartbeats, half of this each: with the client's default of 30 s, the node
 * stopped applying for 30 s after every such event.
 */
const PULL_EXPIRES_MS = 5000;

/**
 * A consumer that delivers nothing for this long while the stream's leader reports messages this node has not
 * applied is started again: after a partition a consumer can stay on a replica that lacks the stream's last messages.
 */
const STALL_MS = 15_000;

export interface ShardConsumerOptions {
  /** durable consumer name, the same for every shard of this node */
  durableName: string;
  /** messages fetched ahead of the applier */
  prefetch?: number;
  /** reads the batch a large-change reference stands for (see JetStreamLargeBatches) */
  largeBatches?: Pick<JetStreamLargeBatches, "read" | "batchBytes">;
  /**
   * Told when the stream no longer holds messages this node has not applied; the consumer then stops (run() returns)
   * instead of applying past them, and the node restores from a snapshot. Without it, it logs and applies on.
   */
  onGap?: (gap: StreamGap) => void;
}

export interface StreamGap {
  stream: string;
  /** first and last sequence the stream dropped before this node applied them */
  missedFrom: number;
  missedTo: number;
}

/**
 * Why the durable is recreated at every start: the database, not the consumer, knows what was applied.
 * A consumer left with unacknowledged messages by a crash would redeliver them after newer ones; starting it
 * again right after the recorded sequence keeps the stream's order and skips nothing.
 *
 * So the consumer holds no state worth keeping: it lives on one server, in memory, and takes no acks. Nothing is
 * replicated per message but the stream's own entry (an R3 consumer with acks cost every server a Raft entry for
 * each node's ack of each message: half of the servers' CPU at a steady 50 writes a second, and a millisecond of
 * latency). Pull requests bound what it delivers ahead. When its server goes away, the pulls fail or stall, and
 * the consumer is created again, on a server that is up, after the last applied sequence.
 */
export class ShardConsumer {
  private lastLag = -1;
  private lastEnd = -1;
  /** the running consume() call, to stop when it stalls */
  private current?: { stop(): void };
  private progress = { applied: -1, at: Date.now() };
  /** the stream dropped messages this node needs: the consumer stops (see ShardConsumerOptions.onGap) */
  private gapReported = false;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly shard: ShardStream,
    private readonly applier: MessageApplier,
    private readonly options: ShardConsumerOptions,
    private readonly logger: Logger,
    private readonly metrics?: Metrics,
  ) {}

  async run(signal: AbortSignal): Promise<void> {
    let attempt = 0;
    while (!signal.aborted) {
      try {
        await this.consumeOnce(signal);
        attempt = 0;
      } catch (err) {
        if (signal.aborted || this.gapReported) break;
        attempt++;
        const level = attempt === 1 ? "warn" : "debug";
        this.logger[level]("consumer interrupted; starting it again after the last applied message", {
          stream: this.shard.stream,
          applied: this.applier.appliedSequence(this.shard.stream),
          reason: (err as Error).message ?? String(err),
        });
      }
      await sleep(Math.min(250 * 2 ** Math.min(attempt, 4), 5000), signal).catch(() => undefined);
    }
  }

  get stream(): string {
    return this.shard.stream;
  }

  appliedSequence(): number {
    return this.applier.appliedSequence(this.shard.stream);
  }

  /**
   * At start, before anything is applied: finds this node's own messages between the applied sequence and
   * `lastStored` (by their message id, `msgIdPrefix...`, reading headers only) and hands each to the applier, which
   * keeps their rows from being set back by older changes meanwhile. The shipper's record of them was in the
   * memory of the run that ended. Returns how many messages were found.
   */
  async recallOwnMessages(msgIdPrefix: string, lastStored: number, signal: AbortSignal): Promise<number> {
    const note = this.applier.noteStoredMessage.bind(this.applier);
    const { stream } = this.shard;
    const applied = this.appliedSequence();
    // Only as far as the last run recorded storing a message whose changes then left the change log (one still in
    // the log is kept by the log itself), and never past the stream's end.
    if (lastStored <= applied) return 0;
    const upTo = Math.min(lastStored, await this.streamEnd());
    const found: StreamMessage[] = [];
    const count = await readOwnMessages(
      this.js,
      this.jsm,
      { stream, after: applied, upTo, msgIdPrefix },
      (seq, data) => found.push({ seq, data }),
      signal,
    );
    // A large change's rows are kept as well: its reference is read back to the batch it stands for.
    for (const { seq, data } of found) note(stream, seq, (await this.options.largeBatches?.batchBytes(data)) ?? data);
    return count;
  }

  /** The stream's last sequence now. */
  async streamEnd(): Promise<number> {
    return (await this.jsm.streams.info(this.shard.stream)).state.last_seq;
  }

  /** Messages in the stream this node has not applied (for the lag metric and the status). */
  async lag(): Promise<number> {
    const lastSeq = await this.streamEnd();
    const applied = this.appliedSequence();
    this.lastEnd = lastSeq;
    const lag = Math.max(0, lastSeq - applied);
    this.metrics?.shardLag.set(lag, { shard: this.shard.shard, stream: this.shard.stream });
    this.lastLag = lag;
    this.watchForStall(applied, lag, lastSeq);
    return lag;
  }

  /** Called with each lag reading (every few seconds): restarts a consumer that stopped delivering. */
  private watchForStall(applied: number, lag: number, lastSeq: number): void {
    const now = Date.now();
    if (lag === 0 || applied !== this.progress.applied) {
      this.progress = { applied, at: now };
      return;
    }
    if (now - this.progress.at < STALL_MS || this.current === undefined) return;
    this.logger.warn("the stream has messages this node is not getting; starting its consumer again", {
      stream: this.shard.stream,
      applied,
      last_seq: lastSeq,
      stalled_seconds: Math.round((now - this.progress.at) / 1000),
    });
    this.progress = { applied, at: now };
    this.current.stop();
  }

  /**
   * Start the consumer again now, after the last applied message: the client reconnected, possibly to another
   * server, and the consumer may have lived on the one it left (see the class comment).
   */
  restart(reason: string): void {
    if (this.current === undefined) return;
    this.logger.info("starting the consumer again", { stream: this.shard.stream, reason });
    this.current.stop();
  }

  get lastKnownLag(): number {
    return this.lastLag;
  }

  /** The stream's last sequence at the last lag reading (-1 before the first). */
  get lastKnownEnd(): number {
    return this.lastEnd;
  }

  private async recreateDurable(startAfter: number): Promise<void> {
    const { stream } = this.shard;
    await this.jsm.consumers.delete(stream, this.options.durableName).catch(() => undefined);
    await this.jsm.consumers.add(stream, {
      durable_name: this.options.durableName,
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: startAfter + 1,
      num_replicas: 1,
      mem_storage: true,
    });
  }

  private async consumeOnce(signal: AbortSignal): Promise<void> {
    const { stream } = this.shard;
    const startAfter = this.applier.appliedSequence(stream);
    await this.recreateDurable(startAfter);
    this.logger.info("consuming stream", { stream, after_seq: startAfter });
    const consumer = await this.js.consumers.get(stream, this.options.durableName);
    const messages = await consumer.consume({ max_messages: this.options.prefetch ?? 256, expires: PULL_EXPIRES_MS });
    this.current = messages;
    void this.stopWhenLost(messages);
    const onAbort = () => void messages.stop();
    signal.addEventListener("abort", onAbort, { once: true });
    // A stop that came while the consumer was being set up fired before this listener existed.
    if (signal.aborted) onAbort();
    try {
      let batch: JsMsg[] = [];
      let batchBytes = 0;
      for await (const m of messages) {
        batch.push(m);
        // A reference stands for a large batch: it is applied in a transaction of its own, not with others.
        const ref = this.referenceIn(m.data);
        batchBytes += ref === undefined ? m.data.length : MAX_BATCH_BYTES;
        // More messages are already here: take them into the same transaction rather than commit each one.
        // Nothing waits for a message that has not arrived. Counted as received minus yielded: getPending() also
        // counts the client's queued pull requests, so it can stay above 0 with no message left and stall the batch.
        const queued = messages.getReceived() - messages.getProcessed();
        if (queued > 0 && batch.length < MAX_BATCH_MESSAGES && batchBytes < MAX_BATCH_BYTES) continue;
        const goOn = await this.handleBatch(batch, signal);
        batch = [];
        batchBytes = 0;
        if (!goOn) break;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.current = undefined;
      messages.stop();
    }
    if (!signal.aborted) throw new Error("consumer stopped delivering");
  }

  /**
   * The consumer lives on one server (see the class comment): when that server goes away, the client only hears
   * that the consumer is gone or that its heartbeats stopped, and would keep pulling from nothing. Stopping ends
   * consumeOnce, and run() creates the consumer again, on a server that is up, after the last applied message.
   */
  private async stopWhenLost(messages: { status(): AsyncIterable<ConsumerNotification>; stop(): void }): Promise<void> {
    for await (const event of messages.status()) {
      const lost =
        event.type === "consumer_deleted" || event.type === "consumer_not_found" || (event.type === "heartbeats_missed" && event.count >= 2);
      if (!lost) continue;
      this.logger.warn("this node's consumer is gone (its server may be down); creating it again", {
        stream: this.shard.stream,
        reason: event.type,
      });
      messages.stop();
      return;
    }
  }

  /**
   * Apply messages that continue the stream in one transaction; anything unusual (a gap) takes
   * the one-at-a-time path. False when the consumer must be started again.
   */
  private async handleBatch(batch: JsMsg[], signal: AbortSignal): Promise<boolean> {
    const { stream } = this.shard;
    let expected = this.applier.appliedSequence(stream) + 1;
    const contiguous = batch.every((m) => {
      const ok = m.seq <= expected;
      expected = Math.max(expected, m.seq + 1);
      return ok;
    });
    if (batch.length === 1 || !contiguous) {
      for (const m of batch) if (!(await this.handle(m, signal))) return false;
      return true;
    }
    const messages: StreamMessage[] = [];
    for (const m of batch) messages.push({ seq: m.seq, data: await this.resolvedData(m.seq, m.data) });
    const results = await withWriteLock(() => this.applier.applyMessages(stream, messages), `applying ${stream}`, this.logger, signal);
    for (const [i, result] of results.entries()) this.record(batch[i]!, result);
    return true;
  }

  /** The reference in a message, if it is one; a malformed one is left to the applier, which parks it. */
  private referenceIn(data: Uint8Array): ReturnType<typeof decodeReference> {
    try {
      return decodeReference(data);
    } catch (err) {
      if (err instanceof DecodeError) return undefined;
      throw err;
    }
  }

  /**
   * The batch bytes a message carries: its data, or for a reference, the object it stands for, read whole and
   * checked before anything is applied. A missing or corrupt object cannot get better: the reference itself goes
   * to the applier, which parks it as a message it cannot decode. Failing to reach JetStream throws, and the
   * consumer starts again after the last applied message.
   */
  private async resolvedData(seq: number, data: Uint8Array): Promise<Uint8Array> {
    const ref = this.referenceIn(data);
    if (ref === undefined) return data;
    const store = this.options.largeBatches;
    if (store === undefined) return data;
    const read = await store.read(ref);
    if (read.data !== undefined) return read.data;
    this.logger.error("a large change's object cannot be read; its message is set aside", {
      stream: this.shard.stream,
      seq,
      object: ref.object,
      reason: read.problem,
      fix: "the row stays as it was on this node; write it again on any node to send it anew",
    });
    return data;
  }

  private record(m: JsMsg, result: ApplyResult): void {
    if (result.outcome === "duplicate") return;
    this.metrics?.applied.inc(result.applied);
    const sentAt = Number(m.headers?.get(SENT_AT_HEADER));
    if (sentAt > 0 && result.applied > 0) this.metrics?.replicationLatency.observe(Math.max(0, Date.now() - sentAt) / 1000);
    if (result.parked > 0) this.metrics?.parked.inc(result.parked);
    this.logger.debug("applied message", {
      stream: this.shard.stream,
      seq: m.seq,
      msg_id: m.headers?.get("Nats-Msg-Id"),
      outcome: result.outcome,
      changes: result.applied,
      parked: result.parked,
    });
  }

  /** Apply one message; false when the consumer must be started again to keep the order. */
  private async handle(m: JsMsg, signal: AbortSignal): Promise<boolean> {
    const { stream } = this.shard;
    const applied = this.applier.appliedSequence(stream);
    if (m.seq > applied + 1) {
      const info = await this.jsm.streams.info(stream);
      if (info.state.first_seq > applied + 1 && this.applier.passOwnGap(stream, applied + 1, info.state.first_seq - 1)) {
        this.logger.info("the stream dropped messages of this node before it applied them back; they came from this database, nothing is missing", {
          stream,
          from: applied + 1,
          to: info.state.first_seq - 1,
        });
        // Anything between the dropped messages and this one is fetched again, in order.
        if (m.seq > info.state.first_seq) return false;
      } else if (info.state.first_seq > applied + 1) {
        const missed = info.state.first_seq - 1 - applied;
        this.metrics?.missedMessages.inc(missed, { stream });
        this.logger.error("this node missed changes: the stream dropped them before they were applied here (max_entries)", {
          stream,
          missed_from: applied + 1,
          missed_to: info.state.first_seq - 1,
          fix: this.options.onGap ? "restoring from a snapshot" : "restore this node from a snapshot, or raise [replication_log] max_entries",
        });
        if (this.options.onGap) {
          this.gapReported = true;
          this.options.onGap({ stream, missedFrom: applied + 1, missedTo: info.state.first_seq - 1 });
          return false;
        }
      } else {
        this.logger.warn("message out of order; restarting the consumer after the last applied message", { stream, applied, got: m.seq });
        return false;
      }
    }
    const data = await this.resolvedData(m.seq, m.data);
    const result = await withWriteLock(() => this.applier.applyMessage(stream, m.seq, data), `applying ${stream}`, this.logger, signal);
    this.record(m, result);
    return true;
  }
}
