// Waits, with a deadline, until this node has applied every stream up to where it ended when the wait began.

import type { Logger } from "../log.js";
import { sleep } from "../sleep.js";

/** A stream this node applies: where it ends now, and how far this node has applied it. */
export interface CatchUpStream {
  readonly stream: string;
  streamEnd(): Promise<number>;
  appliedSequence(): number;
}

export interface CatchUpOptions {
  /** give up when nothing moved (no message applied, no stream end read) for this long */
  stallMs: number;
  /** how often to look */
  pollMs?: number;
  /** how often to say that it still waits */
  reportMs?: number;
}

/**
 * Apply-to-the-end, as far as it goes. Resolves true once every stream is applied up to its end as read at the
 * start; false when it gave up: nothing progressed for `stallMs` (a consumer that cannot progress, a stream whose
 * end cannot be read). It then logs, once, which streams lag and why. Rejects only when `signal` aborts.
 */
export async function catchUp(streams: readonly CatchUpStream[], logger: Logger, signal: AbortSignal, options: CatchUpOptions): Promise<boolean> {
  const pollMs = options.pollMs ?? 100;
  const reportMs = options.reportMs ?? 30_000;
  let lastReport = Date.now();
  for (const s of streams) {
    let movedAt = Date.now();
    let end: number | undefined;
    let failure: string | undefined;
    let applied = s.appliedSequence();
    for (;;) {
      if (end === undefined) {
        try {
          end = await s.streamEnd();
          movedAt = Date.now();
        } catch (err) {
          if (signal.aborted) throw signal.reason;
          if (failure === undefined)
            logger.warn("cannot read where the stream ends; trying again", { stream: s.stream, reason: (err as Error).message });
          failure = (err as Error).message;
        }
      }
      const now = s.appliedSequence();
      if (end !== undefined && now >= end) break;
      if (now !== applied) {
        applied = now;
        movedAt = Date.now();
      }
      if (Date.now() - movedAt >= options.stallMs) {
        logger.error("gave up applying the streams to their end before publishing: nothing moved", {
          stream: s.stream,
          applied: now,
          until: end ?? "unknown (the stream's end could not be read)",
          waited_ms: options.stallMs,
          reason: failure ?? "the consumer delivers no messages",
        });
        return false;
      }
      if (Date.now() - lastReport >= reportMs) {
        lastReport = Date.now();
        logger.info("still applying before publishing", { stream: s.stream, applied: now, until: end ?? "unknown" });
      }
      await sleep(pollMs, signal);
    }
  }
  return true;
}
