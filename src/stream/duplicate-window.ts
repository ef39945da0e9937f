// How a publish retried after a lost ack is kept from landing twice: the streams' duplicate window, and for a retry
// that outlasts it, a look in the stream for the message id before sending again.
//
// JetStream drops a message whose id it stored within the stream's duplicate window. The shipper retries a batch
// with the same id until it is acknowledged, and an outage can last longer than any window; so the window only has
// to cover the time between two of the shipper's looks. Once a batch's first unchecked attempt is older than the
// window less a margin, the shipper reads the stream's message ids stored since then (headers only): found, the batch
// is stored and is not sent again; not found, none of those attempts landed, and a new window starts.

import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { scanHeaders } from "./header-scan.js";

/**
 * The duplicate window marmot sets on its streams. Longer costs the server memory (it keeps every id of the window);
 * five minutes leaves ample room over one attempt (a 10 s publish timeout and at most 5 s of backoff).
 */
export const DUPLICATE_WINDOW_MS = 5 * 60 * 1000;

/** How long before the window closes the shipper looks: a stored message's time is the server's, not ours. */
export function checkMarginMs(windowMs: number): number {
  return Math.min(60_000, Math.floor(windowMs / 4));
}

/**
 * The sequence of the message with id `msgId` stored in `stream` at or after `sinceMs` (epoch milliseconds), or
 * undefined when the stream holds none. Throws when the stream cannot be read to its end.
 */
export async function findStoredMessage(
  js: JetStreamClient,
  jsm: JetStreamManager,
  stream: string,
  msgId: string,
  sinceMs: number,
  signal: AbortSignal,
): Promise<number | undefined> {
  const end = (await jsm.streams.info(stream)).state.last_seq;
  if (end === 0) return undefined;
  const consumer = await js.consumers.get(stream, {
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: new Date(sinceMs).toISOString(),
    headers_only: true,
  });
  // Nothing stored since then: the consumer would deliver nothing, and waiting for it would prove nothing.
  if ((await consumer.info()).num_pending === 0) return undefined;
  let found: number | undefined;
  await scanHeaders(
    consumer,
    stream,
    end,
    (seq, headers) => {
      if (headers?.get("Nats-Msg-Id") === msgId) found = seq;
      return found !== undefined;
    },
    signal,
  );
  return found;
}
