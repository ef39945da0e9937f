// One JetStream stream per shard: names, subjects, and creating or updating them to match the config.

import { DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig, type StreamInfo } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import type { Logger } from "../log.js";
import type { Config } from "../config/types.js";
import { DUPLICATE_WINDOW_MS } from "./duplicate-window.js";

export interface ShardStream {
  shard: number;
  stream: string;
  subject: string;
}

/** The shard count is part of the names: a row hashes differently under another count, so its history must not mix. */
export function shardStreams(config: Pick<Config, "nats" | "replicationLog">): ShardStream[] {
  const { shards } = config.replicationLog;
  const out: ShardStream[] = [];
  for (let shard = 1; shard <= shards; shard++) {
    out.push({
      shard,
      stream: `${config.nats.streamPrefix}-${shards}-${shard}`,
      subject: `${config.nats.subjectPrefix}-${shards}-${shard}`,
    });
  }
  return out;
}

/**
 * The one stream that orders every schema change of the cluster (see sqlite/schema-sync.ts). Not per shard count:
 * a schema change does not hash onto a shard. Shard 0 stands for it where a shard number is asked.
 */
export function schemaStream(config: Pick<Config, "nats">): ShardStream {
  return { shard: 0, stream: `${config.nats.streamPrefix}-schema`, subject: `${config.nats.subjectPrefix}-schema` };
}

/**
 * Why a replicated stream wants nats-server 2.10 or newer: on 2.9, after a network partition, the replicas of a
 * stream were seen holding different messages at the same sequence, so nodes reading from different replicas
 * applied changes in different orders and ended apart. Undefined when the version is fine (or unknown).
 */
export function serverVersionRisk(version: string | undefined, replicas: number): string | undefined {
  const match = /^v?(\d+)\.(\d+)\./.exec(version ?? "");
  if (!match || replicas < 2) return undefined;
  const [major, minor] = [Number(match[1]), Number(match[2])];
  if (major > 2 || (major === 2 && minor >= 10)) return undefined;
  return (
    `nats-server ${version} is older than 2.10: after a network partition, the replicas of a stream can hold ` +
    "different messages at the same sequence, and the nodes then end apart. Upgrade nats-server to 2.10 or newer"
  );
}

function wantedConfig(s: ShardStream, config: Config, duplicateWindowMs: number): Partial<StreamConfig> & { name: string } {
  return {
    duplicate_window: nanos(duplicateWindowMs),
    name: s.stream,
    subjects: [s.subject],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_msgs: config.replicationLog.maxEntries,
    num_replicas: config.replicationLog.replicas,
  };
}

function differences(current: StreamConfig, wanted: Partial<StreamConfig>): string[] {
  const diffs: string[] = [];
  if (current.max_msgs !== wanted.max_msgs) diffs.push(`max_msgs ${current.max_msgs} (config: ${wanted.max_msgs})`);
  if (current.num_replicas !== wanted.num_replicas) diffs.push(`replicas ${current.num_replicas} (config: ${wanted.num_replicas})`);
  if (JSON.stringify(current.subjects) !== JSON.stringify(wanted.subjects)) diffs.push(`subjects ${JSON.stringify(current.subjects)}`);
  return diffs;
}

const STUCK_PLACEMENT_MS = 30_000;

/**
 * What may be wrong when JetStream has refused to place a stream for a long time with no reason given: every server
 * it lists is fit, but the meta group lists fewer than the stream needs.
 */
export function placementHint(err: unknown, replicas: number, waitedMs: number, stuckAfterMs = STUCK_PLACEMENT_MS): string | undefined {
  const message = err instanceof Error ? err.message : String(err);
  if (replicas < 2 || waitedMs < stuckAfterMs || message.trim() !== "no suitable peers for placement") {
    return undefined;
  }
  return (
    `JetStream's meta group lists fewer than ${replicas} servers. If ${replicas} or more are up, one was left out ` +
    "of the group: nats-server 2.10.27 does that now and then when the servers of a new cluster start together, " +
    "and it lasts until that server restarts. Restart the server missing from the meta group's replicas in the " +
    "meta leader's /jsz, or use a newer nats-server (scripts/setup.sh installs 2.15.1)"
  );
}

function isNotFound(err: unknown): boolean {
  const e = err as { code?: number; name?: string; message?: string };
  return e?.code === 10059 || e?.name === "StreamNotFoundError" || /stream not found/i.test(e?.message ?? "");
}

/**
 * Create each shard's stream and the schema stream, or update them when `update_existing` is set; retries while the cluster cannot yet
 * place it (an R3 stream needs three servers up), saying what it waits for.
 */
export async function ensureStreams(
  jsm: JetStreamManager,
  config: Config,
  logger: Logger,
  signal?: AbortSignal,
  stuckAfterMs = STUCK_PLACEMENT_MS,
  duplicateWindowMs = DUPLICATE_WINDOW_MS,
): Promise<ShardStream[]> {
  const streams = shardStreams(config);
  for (const s of [...streams, schemaStream(config)]) {
    const wanted = wantedConfig(s, config, duplicateWindowMs);
    let attempt = 0;
    let lastLog = 0;
    let waitingSince = 0;
    let hinted = false;
    for (;;) {
      try {
        let info: StreamInfo | undefined;
        try {
          info = await jsm.streams.info(s.stream);
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
        if (!info) {
          await jsm.streams.add(wanted);
          logger.info("created stream", { stream: s.stream, subject: s.subject, replicas: wanted.num_replicas, max_entries: wanted.max_msgs });
        } else {
          const diffs = differences(info.config, wanted);
          // Never shorter than the stream has: a longer window, set by hand, only adds safety.
          const window = Math.max(info.config.duplicate_window ?? 0, wanted.duplicate_window!);
          if (diffs.length > 0 && config.replicationLog.updateExisting) {
            await jsm.streams.update(s.stream, { ...info.config, ...wanted, duplicate_window: window });
            logger.info("updated stream to match the config", { stream: s.stream, changed: diffs.join("; ") });
          } else {
            if (diffs.length > 0) {
              logger.warn("stream differs from the config; set [replication_log] update_existing = true to update it", {
                stream: s.stream,
                differences: diffs.join("; "),
              });
            }
            // Not a setting of the user's but what marmot's retries rely on (see duplicate-window.ts): a stream an
            // older marmot created gets it whatever update_existing says. It changes no message the stream holds.
            if ((info.config.duplicate_window ?? 0) < window) {
              await jsm.streams.update(s.stream, { ...info.config, duplicate_window: window });
              logger.info("set the stream's duplicate window, so that a publish retried after a lost ack is not stored twice", {
                stream: s.stream,
                duplicate_window_seconds: window / 1e9,
                was_seconds: (info.config.duplicate_window ?? 0) / 1e9,
              });
            }
          }
        }
        break;
      } catch (err) {
        if (signal?.aborted) throw err;
        attempt++;
        const now = Date.now();
        if (attempt === 1) waitingSince = now;
        const replicas = wanted.num_replicas ?? 1;
        const hint = placementHint(err, replicas, now - waitingSince, stuckAfterMs);
        if (attempt === 1 || now - lastLog > 15_000 || (hint !== undefined && !hinted)) {
          lastLog = now;
          hinted ||= hint !== undefined;
          const fields: Record<string, unknown> = { stream: s.stream, replicas, reason: (err as Error).message };
          if (hint !== undefined) fields["hint"] = hint;
          const servers = replicas === 1 ? "a server" : `${replicas} servers`;
          logger.warn(`waiting for JetStream to place the stream (an R${replicas} stream needs ${servers} up)`, fields);
        }
        await new Promise((r) => setTimeout(r, Math.min(250 * attempt, 2000)));
      }
    }
  }
  return streams;
}
