// Noticing a database that never applied anything meeting streams that already hold changes from before it existed.

import type { JetStreamManager } from "@nats-io/jetstream";
import type { Logger } from "../log.js";
import type { ShardStream } from "./streams.js";

/**
 * A node with no applied sequence (a fresh database, or one restored without marmot's tables) whose streams hold
 * messages older than this start will apply them all. That is right for a node joining a running cluster; it is
 * wrong when the cluster was meant to start afresh and the streams are an earlier run's, replayed from a JetStream
 * store left behind (the original Marmot kept its store in $TMPDIR/nats; this one keeps it beside the database).
 * Marmot cannot tell the two apart, so it says so, once, with what to do.
 */
export async function warnAboutEarlierStreams(
  jsm: JetStreamManager,
  streams: readonly ShardStream[],
  appliedSequence: (stream: string) => number,
  startedAt: number,
  storeDir: string | undefined,
  logger: Logger,
): Promise<void> {
  if (streams.some((s) => appliedSequence(s.stream) > 0)) return;
  let messages = 0;
  let oldest = Number.POSITIVE_INFINITY;
  for (const { stream } of streams) {
    const { state } = await jsm.streams.info(stream);
    if (state.messages === 0) continue;
    const firstAt = Date.parse(state.first_ts);
    if (Number.isFinite(firstAt) && firstAt >= startedAt) continue;
    messages += state.messages;
    if (Number.isFinite(firstAt)) oldest = Math.min(oldest, firstAt);
  }
  if (messages === 0) return;
  const reset = storeDir
    ? `stop every node and remove each node's JetStream store (here: ${storeDir}) as well as the databases`
    : "stop every node and delete the streams from the NATS servers (or their JetStream stores)";
  logger.warn(
    "this database has never applied a replicated change, but the streams already hold changes from before this start: " +
      "they are applied here now. That is right when this node joins a running cluster. If you meant to start a new " +
      `cluster, these are an earlier cluster's changes: ${reset}, then start again`,
    { messages, oldest: Number.isFinite(oldest) ? new Date(oldest).toISOString() : "unknown", streams: streams.map((s) => s.stream).join(",") },
  );
}
