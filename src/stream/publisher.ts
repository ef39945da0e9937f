// Publishes encoded batches to the shard streams and waits for JetStream's acknowledgement.

import type { JetStreamClient } from "@nats-io/jetstream";
import { NatsError } from "../errors.js";
import type { ShardStream } from "./streams.js";

/**
 * A place to publish batches: resolves with the stream sequence once the batch is stored (or was stored already),
 * rejects otherwise.
 */
export interface BatchPublisher {
  publish(shard: number, payload: Uint8Array, msgId: string): Promise<number>;
}

export class JetStreamPublisher implements BatchPublisher {
  private readonly subjects = new Map<number, string>();

  constructor(
    private readonly js: JetStreamClient,
    streams: readonly ShardStream[],
    private readonly timeoutMs = 10_000,
  ) {
    for (const s of streams) this.subjects.set(s.shard, s.subject);
  }

  async publish(shard: number, payload: Uint8Array, msgId: string): Promise<number> {
    const subject = this.subjects.get(shard);
    if (!subject) throw new Error(`no stream for shard ${shard}`);
    try {
      // retries: 0 — the shipper retries with its own backoff and says why.
      const ack = await this.js.publish(subject, payload, { msgID: msgId, timeout: this.timeoutMs, retries: 0 });
      return ack.seq;
    } catch (err) {
      const message = (err as Error).message ?? String(err);
      if (/jetstream is not enabled|no responders|503/i.test(message)) {
        throw new NatsError(`no JetStream stream accepts subject ${subject} (stream missing or JetStream unavailable): ${message}`, { cause: err });
      }
      throw err;
    }
  }
}
