// Counters and gauges in Prometheus' text format, with the original Marmot's metric names.

type Labels = Record<string, string | number>;

interface Series {
  labels: Labels;
  value: number;
}

function renderLabels(labels: Labels): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}="${String(v).replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")}"`)
    .join(",");
}

class Metric {
  private readonly series = new Map<string, Series>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge",
  ) {}

  private entry(labels: Labels): Series {
    const key = JSON.stringify(labels);
    let s = this.series.get(key);
    if (!s) {
      s = { labels, value: 0 };
      this.series.set(key, s);
    }
    return s;
  }

  inc(by = 1, labels: Labels = {}): void {
    this.entry(labels).value += by;
  }

  set(value: number, labels: Labels = {}): void {
    this.entry(labels).value = value;
  }

  get(labels: Labels = {}): number {
    return this.series.get(JSON.stringify(labels))?.value ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`];
    if (this.series.size === 0) lines.push(`${this.name} 0`);
    for (const s of this.series.values()) {
      const labels = renderLabels(s.labels);
      lines.push(`${this.name}${labels ? `{${labels}}` : ""} ${s.value}`);
    }
    return lines.join("\n");
  }
}

/** A Prometheus histogram without labels: cumulative buckets, a sum and a count. */
class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  constructor(
    readonly name: string,
    readonly help: string,
    /** upper bounds, ascending */
    readonly buckets: readonly number[],
  ) {
    this.counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) this.counts[i]!++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [i, le] of this.buckets.entries()) lines.push(`${this.name}_bucket{${renderLabels({ le })}} ${this.counts[i]}`);
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${this.sum}`, `${this.name}_count ${this.count}`);
    return lines.join("\n");
  }
}

export class Metrics {
  /** changes JetStream acknowledged */
  readonly published: Metric;
  /** changes waiting in the change logs */
  readonly pendingPublish: Metric;
  /** changes read from the change logs */
  readonly countChanges: Metric;
  /** scans of the change logs */
  readonly scanChanges: Metric;
  /** replicated changes applied to this database */
  readonly applied: Metric;
  /** replicated changes set aside (unknown table/column, undecodable) */
  readonly parked: Metric;
  /** per shard: messages in the stream this node has not applied yet */
  readonly shardLag: Metric;
  /** size of the last snapshot this node saved */
  readonly snapshotSizeBytes: Metric;
  /** unix seconds the last snapshot this node saved or restored was taken */
  readonly snapshotTime: Metric;
  readonly snapshotSaveSeconds: Metric;
  readonly snapshotRestoreSeconds: Metric;
  readonly snapshotRestores: Metric;
  /** seconds from a batch's publication by its origin to its apply here */
  readonly replicationLatency: Histogram;
  /** how late the event loop ran what was due, over the last few seconds (quantile label: 0.5, 0.99, 1) */
  readonly eventLoopLag: Metric;
  private readonly all: (Metric | Histogram)[];
  /** seconds since the stored snapshot was made, as a node last read its manifest */
  readonly snapshotAgeSeconds: Metric;
  /** per stream: messages the stream dropped before this node applied them (the node diverged) */
  readonly missedMessages: Metric;
  /** rows of this node JetStream stored that it has not applied back yet (the own-writes record) */
  readonly storedUnapplied: Metric;
  /** (table, shard, other node) whose digest differs from this node's at the same stream sequence */
  readonly digestMismatches: Metric;
  /** the process's resident memory and the JavaScript heap in use, read when the metrics are rendered */
  readonly residentMemory: Metric;
  readonly heapUsed: Metric;

  constructor(namespace = "marmot", subsystem = "") {
    const name = (n: string) => [namespace, subsystem, n].filter((p) => p !== "").join("_");
    this.published = new Metric(name("published"), "Changes published to JetStream and acknowledged.", "counter");
    this.pendingPublish = new Metric(name("pending_publish"), "Changes waiting in the change logs to be published.", "gauge");
    this.countChanges = new Metric(name("count_changes"), "Changes read from the change logs.", "counter");
    this.scanChanges = new Metric(name("scan_changes"), "Scans of the change logs.", "counter");
    this.applied = new Metric(name("applied"), "Replicated changes applied to the local database.", "counter");
    this.parked = new Metric(name("parked"), "Replicated changes set aside because this node cannot apply them yet.", "counter");
    this.shardLag = new Metric(name("shard_lag"), "Messages in the shard's stream not yet applied by this node.", "gauge");
    this.snapshotSizeBytes = new Metric(name("snapshot_size_bytes"), "Size of the last snapshot saved by this node.", "gauge");
    this.snapshotTime = new Metric(name("snapshot_timestamp_seconds"), "Unix time the last snapshot this node saved or restored was taken.", "gauge");
    this.snapshotSaveSeconds = new Metric(name("snapshot_save_seconds"), "Duration of the last snapshot save.", "gauge");
    this.snapshotRestoreSeconds = new Metric(name("snapshot_restore_seconds"), "Duration of the last snapshot restore.", "gauge");
    this.snapshotRestores = new Metric(name("snapshot_restores"), "Snapshots restored into the local database.", "counter");
    this.replicationLatency = new Histogram(
      name("replication_latency_seconds"),
      "Seconds from the moment the origin node published a batch of changes to JetStream (its Marmot-Sent-At header, " +
        "the origin's clock) to the moment this node committed it; the time a change waited in the origin's change log " +
        "before publication is not included. Clocks of different machines add their difference.",
      [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    );
    this.eventLoopLag = new Metric(name("event_loop_lag_seconds"), "How late the event loop ran what was due, over the last few seconds.", "gauge");
    this.snapshotAgeSeconds = new Metric(name("snapshot_age_seconds"), "Seconds since the stored snapshot was made.", "gauge");
    this.missedMessages = new Metric(name("missed_messages"), "Messages the stream dropped before this node applied them: it diverged.", "counter");
    this.storedUnapplied = new Metric(name("stored_unapplied_rows"), "Rows of this node stored in JetStream and not yet applied back here.", "gauge");
    this.digestMismatches = new Metric(
      name("digest_mismatches"),
      "Tables of a shard whose rows differ from another node's at the same stream sequence.",
      "gauge",
    );
    this.residentMemory = new Metric(name("resident_memory_bytes"), "Resident memory of the marmot process.", "gauge");
    this.heapUsed = new Metric(name("heap_used_bytes"), "JavaScript heap in use by the marmot process.", "gauge");
    this.all = [
      this.published,
      this.pendingPublish,
      this.countChanges,
      this.scanChanges,
      this.applied,
      this.parked,
      this.shardLag,
      this.snapshotSizeBytes,
      this.snapshotTime,
      this.snapshotSaveSeconds,
      this.snapshotRestoreSeconds,
      this.snapshotRestores,
      this.replicationLatency,
      this.eventLoopLag,
      this.snapshotAgeSeconds,
      this.missedMessages,
      this.storedUnapplied,
      this.digestMismatches,
      this.residentMemory,
      this.heapUsed,
    ];
  }

  render(): string {
    const memory = process.memoryUsage();
    this.residentMemory.set(memory.rss);
    this.heapUsed.set(memory.heapUsed);
    return this.all.map((m) => m.render()).join("\n") + "\n";
  }
}
