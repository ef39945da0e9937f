// Publishes encoded batches to the shard streams and waits for JetStream's acknowledgement.

import type { JetStreamClient, JetStreamManager, StoredMsg } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { NatsError, PhantomDuplicateError } from "../errors.js";
import { findStoredMessage } from "./duplicate-window.js";
import type { ShardStream } from "./streams.js";

/**
 * When the origin published a message, in milliseconds since the epoch: a header beside the payload, so the codec
 * stays as it is, for the replication-latency histogram of the nodes that apply it.
 */
export const SENT_AT_HEADER = "Marmot-Sent-At";

/**
 * A place to publish batches: resolves with the stream sequence once the batch is stored (or was stored already),
 * rejects otherwise.
 */
export interface BatchPublisher {
  publish(shard: number, payload: Uint8Array, msgId: string): Promise<number>;
}

export class JetStreamPublisher implements BatchPublisher {
  private readonly shards = new Map<number, ShardStream>();

  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    streams: readonly ShardStream[],
    private readonly timeoutMs = 10_000,
  ) {
    for (const s of streams) this.shards.set(s.shard, s);
  }

  /** Where a message with this id was stored in the shard's stream since `sinceMs`, if it was (see duplicate-window.ts). */
  findStored(shard: number, msgId: string, sinceMs: number, signal: AbortSignal): Promise<number | undefined> {
    const target = this.shards.get(shard);
    if (!target) throw new Error(`no stream for shard ${shard}`);
    return findStoredMessage(this.js, this.jsm, target.stream, msgId, sinceMs, signal);
  }

  async publish(shard: number, payload: Uint8Array, msgId: string): Promise<number> {
    const target = this.shards.get(shard);
    if (!target) throw new Error(`no stream for shard ${shard}`);
    const { subject, stream } = target;
    try {
      // retries: 0 — the shipper retries with its own backoff and says why.
      const sentAt = headers();
      sentAt.set(SENT_AT_HEADER, String(Date.now()));
      const ack = await this.js.publish(subject, payload, { msgID: msgId, timeout: this.timeoutMs, retries: 0, headers: sentAt });
      if (ack.duplicate) await this.checkDuplicate(stream, ack.seq, msgId);
      return ack.seq;
    } catch (err) {
      if (err instanceof PhantomDuplicateError) throw err;
      const message = (err as Error).message ?? String(err);
      if (/jetstream is not enabled|no responders|503/i.test(message)) {
        throw new NatsError(`no JetStream stream accepts subject ${subject} (stream missing or JetStream unavailable): ${message}`, { cause: err });
      }
      throw err;
    }
  }

  /**
   * A duplicate answer is what a retry after a lost ack gets, and then the stream holds the message. But after a
   * network partition a server can answer so for a message id it only saw in a proposal that never reached the
   * stream (it led the stream, lost its quorum, and kept the id). The changes would then leave the change log
   * without being anywhere: so the stream must show this very message at the sequence given.
   */
  private async checkDuplicate(stream: string, seq: number, msgId: string): Promise<void> {
    let stored: StoredMsg | null;
    try {
      stored = await this.jsm.streams.getMessage(stream, { seq });
    } catch (err) {
      if (!/no message found/i.test((err as Error).message ?? "")) throw err;
      stored = null;
    }
    const found = stored?.header?.get("Nats-Msg-Id");
    if (found !== msgId) {
      throw new PhantomDuplicateError(
        `JetStream called message ${msgId} a duplicate of sequence ${seq} of ${stream}, which holds ${found ? `message ${found}` : "nothing"}`,
      );
    }
  }
}
