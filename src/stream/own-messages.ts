// Finds this node's own messages in a stretch of a shard stream: by their message id, reading headers only, then
// fetching just those messages. Used at start, to learn what the last run stored but did not finish with.

import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { scanHeaders } from "./header-scan.js";

export interface OwnMessagesRange {
  stream: string;
  /** the stretch read: sequences after `after`, up to and including `upTo` */
  after: number;
  upTo: number;
  /** how this node's message ids begin (see msgIdPrefix) */
  msgIdPrefix: string;
}

/**
 * Hands each of this node's messages in the stretch to `onMessage`, in stream order; returns how many there were.
 * Throws when the stretch could not be read to its end (the caller decides whether that matters).
 */
export async function readOwnMessages(
  js: JetStreamClient,
  jsm: JetStreamManager,
  range: OwnMessagesRange,
  onMessage: (seq: number, data: Uint8Array) => void,
  signal: AbortSignal,
): Promise<number> {
  const { stream, after, upTo, msgIdPrefix } = range;
  if (upTo <= after) return 0;
  const own: number[] = [];
  const consumer = await js.consumers.get(stream, { opt_start_seq: after + 1, deliver_policy: DeliverPolicy.StartSequence, headers_only: true });
  await scanHeaders(
    consumer,
    stream,
    upTo,
    (seq, headers) => {
      if (seq <= upTo && headers?.get("Nats-Msg-Id")?.startsWith(msgIdPrefix)) own.push(seq);
      return false;
    },
    signal,
  );
  for (const seq of own) {
    const stored = await jsm.streams.getMessage(stream, { seq });
    if (stored) onMessage(seq, stored.data);
  }
  return own.length;
}
