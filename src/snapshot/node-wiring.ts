// Builds a node's NodeSnapshots from the engine's functions, the configured store and the lease bucket.

import { dirname } from "node:path";
import type Database from "better-sqlite3";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../config/types.js";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import { sleep } from "../sleep.js";
import { isInternalName } from "../sqlite/names.js";
import type { ShardStream } from "../stream/streams.js";
import { downloadSnapshot } from "./download.js";
import { openLeaseBucket, SnapshotLease, type LeaseStore } from "./lease.js";
import { fetchLatestManifest, type SnapshotManifest } from "./manifest.js";
import { NodeSnapshots, type RestoreFacts, type SnapshotEngine } from "./node-snapshots.js";
import { openSnapshotStore } from "./open-store.js";
import { restoreSnapshot } from "./restore.js";
import { saveSnapshot } from "./save.js";

export interface NodeWiring {
  config: Config;
  db: Database.Database;
  nc: NatsConnection;
  jsm: JetStreamManager;
  streams: readonly ShardStream[];
  appliedSequence: (stream: string) => number;
  onRestored: (result: RestoreFacts) => void;
  /** the latest stored snapshot: when it was taken and how large it is */
  onSnapshotSeen?: (takenAt: number, sizeBytes: number) => void;
  metrics: Metrics;
  signal: AbortSignal;
  logger: Logger;
}

export async function openNodeSnapshots(w: NodeWiring): Promise<NodeSnapshots> {
  const { config, db, logger, metrics } = w;
  const store = openSnapshotStore(config, { nc: w.nc, logger });
  const engine: SnapshotEngine = {
    description: store.description,
    latestManifest: () => fetchLatestManifest(store),
    save: (signal) => saveSnapshot(db, { config, store, logger, signal, metrics }),
    // The manifest handed back is always one latestManifest() returned.
    download: (manifest, signal) => downloadSnapshot(store, manifest as SnapshotManifest, config, { dir: dirname(config.dbPath), signal }),
    restore: (file) => restoreSnapshot(db, file, { config, logger, metrics }),
  };
  const leaseStore = await openLease(w);
  return new NodeSnapshots({
    config,
    nc: w.nc,
    jsm: w.jsm,
    streams: w.streams,
    engine,
    lease: new SnapshotLease(leaseStore, `node ${config.nodeId}`, logger),
    appliedSequence: w.appliedSequence,
    hasUserTables: () => hasUserTables(db),
    onRestored: w.onRestored,
    reportSnapshot: (manifest) => {
      const takenAt = Date.parse(manifest.createdAt);
      metrics.snapshotAgeSeconds.set(Math.max(0, Math.round((Date.now() - takenAt) / 1000)));
      w.onSnapshotSeen?.(takenAt, manifest.size);
    },
    signal: w.signal,
    logger,
  });
}

/** The lease bucket lives in JetStream, which answers by now (the streams exist); a cluster may still be settling. */
async function openLease(w: NodeWiring): Promise<LeaseStore> {
  let waitMs = 500;
  let logged = false;
  for (;;) {
    try {
      return await openLeaseBucket(w.nc, w.config.nats.streamPrefix, w.config.replicationLog.replicas);
    } catch (err) {
      if (w.signal.aborted) throw err;
      if (!logged) w.logger.warn("waiting for JetStream to create the snapshot lease bucket", { reason: (err as Error).message });
      logged = true;
    }
    await sleep(waitMs, w.signal);
    waitMs = Math.min(waitMs * 2, 5000);
  }
}

function hasUserTables(db: Database.Database): boolean {
  const names = db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").pluck(true).all() as string[];
  return names.some((name) => !isInternalName(name) && !name.startsWith("sqlite_"));
}
