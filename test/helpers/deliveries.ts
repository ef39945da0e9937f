// Reads the JSON debug logs of a test cluster's marmots and tells, for a cluster that did not converge, whether the
// nodes were served different messages at the same stream sequence (the streams' replicas disagree) or were served
// the same messages and applied them differently (a fault in marmot).
//
// Needs `[logging] verbose = true, format = "json"` on every node: the shipper logs "batch stored" with the sequence
// JetStream acknowledged for each message id, and the consumer logs "applied message" with the id it applied.

import { readFileSync } from "node:fs";
import type { MarmotProcess } from "./marmot.js";

/** The logging section that makes a node's log usable here. */
export const DELIVERY_LOGGING_TOML = '[logging]\nverbose = true\nformat = "json"';

interface Delivery {
  /** stream name → sequence → message id applied there */
  applied: Map<string, Map<number, string>>;
  /** shard → sequence → message id JetStream acknowledged there */
  stored: Map<number, Map<number, string>>;
}

function read(logPath: string): Delivery {
  const delivery: Delivery = { applied: new Map(), stored: new Map() };
  for (const line of readFileSync(logPath, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    let entry: { msg?: string; stream?: string; shard?: number; seq?: number; msg_id?: string };
    try {
      entry = JSON.parse(line);
    } catch {
      continue;
    }
    if (entry.seq === undefined || entry.msg_id === undefined) continue;
    if (entry.msg === "applied message" && entry.stream !== undefined) {
      const bySeq = delivery.applied.get(entry.stream) ?? new Map<number, string>();
      delivery.applied.set(entry.stream, bySeq);
      bySeq.set(entry.seq, entry.msg_id);
    } else if (entry.msg === "batch stored" && entry.shard !== undefined) {
      const bySeq = delivery.stored.get(entry.shard) ?? new Map<number, string>();
      delivery.stored.set(entry.shard, bySeq);
      bySeq.set(entry.seq, entry.msg_id);
    }
  }
  return delivery;
}

/** The shard of a stream named `<prefix>-<shards>-<shard>`. */
function shardOf(stream: string): number {
  return Number(stream.slice(stream.lastIndexOf("-") + 1));
}

/**
 * Lines that describe every disagreement: a sequence where two nodes applied different messages, and a message
 * JetStream acknowledged at a sequence where a node applied another one (or that no node applied). Empty when every
 * node applied the same message at every sequence it applied, and every acknowledged message where it was stored.
 */
export function compareDeliveries(nodes: readonly MarmotProcess[], limit = 20): string[] {
  const logs = nodes.map((n) => ({ id: n.spec.id, ...read(n.spec.logPath) }));
  const problems: string[] = [];
  const streams = new Set(logs.flatMap((l) => [...l.applied.keys()]));
  for (const stream of [...streams].sort()) {
    const shard = shardOf(stream);
    const seqs = new Set(logs.flatMap((l) => [...(l.applied.get(stream)?.keys() ?? [])]));
    for (const l of logs) for (const seq of l.stored.get(shard)?.keys() ?? []) seqs.add(seq);
    for (const seq of [...seqs].sort((a, b) => a - b)) {
      const seen = logs.map((l) => ({ id: l.id, applied: l.applied.get(stream)?.get(seq), stored: l.stored.get(shard)?.get(seq) }));
      const ids = new Set(seen.flatMap((s) => [s.applied, s.stored]).filter((id): id is string => id !== undefined));
      const appliedEverywhere = seen.every((s) => s.applied !== undefined);
      if (ids.size <= 1 && appliedEverywhere) continue;
      const parts = seen.map(
        (s) => `node ${s.id} applied ${s.applied ?? "nothing"}${s.stored !== undefined ? `, was acknowledged ${s.stored}` : ""}`,
      );
      problems.push(`${stream} seq ${seq}: ${parts.join("; ")}`);
      if (problems.length >= limit) return [...problems, "(more left out)"];
    }
  }
  return problems;
}
