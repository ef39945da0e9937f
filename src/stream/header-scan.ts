// Reads the message headers of a stretch of a stream, bodies left on the server: the one way marmot looks for message
// ids (its own messages at start, a lost ack's message after a long retry).

import type { Consumer } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";

/** How long the read waits for the next header before it gives up on the stretch. */
const IDLE_MS = 5000;

/**
 * Hands the headers of every message `consumer` (created with `headers_only`) delivers to `visit`, in stream order,
 * until `visit` returns true or the message at `upTo` was seen. Throws when the stretch could not be read that far
 * (the server went quiet for IDLE_MS) or `signal` aborted.
 */
export async function scanHeaders(
  consumer: Consumer,
  what: string,
  upTo: number,
  visit: (seq: number, headers: MsgHdrs | undefined) => boolean,
  signal: AbortSignal,
): Promise<void> {
  const messages = await consumer.consume({ max_messages: 1024 });
  let idle: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => void messages.close(), IDLE_MS);
  };
  const onAbort = () => void messages.close();
  signal.addEventListener("abort", onAbort, { once: true });
  arm();
  let reached = 0;
  let done = false;
  try {
    for await (const m of messages) {
      arm();
      reached = m.seq;
      done = visit(m.seq, m.headers) || m.seq >= upTo;
      if (done) break;
    }
  } finally {
    clearTimeout(idle);
    signal.removeEventListener("abort", onAbort);
    await messages.close().catch(() => undefined);
  }
  if (signal.aborted) throw signal.reason ?? new Error("stopped");
  if (!done) throw new Error(`read the headers of ${what} only to sequence ${reached} of ${upTo}`);
}
