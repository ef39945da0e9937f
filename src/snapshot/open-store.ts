// Picks and builds the snapshot store the config names ([snapshot] store).

import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../config/types.js";
import { ConfigError } from "../errors.js";
import type { Logger } from "../log.js";
import type { SnapshotStore } from "./store.js";
import { FileSnapshotStore } from "./stores/file.js";
import { defaultSnapshotBucket, NatsSnapshotStore } from "./stores/nats.js";

export interface SnapshotStoreDeps {
  /** marmot's NATS connection; the nats store needs it */
  nc?: NatsConnection;
  logger: Logger;
}

export function openSnapshotStore(config: Config, deps: SnapshotStoreDeps): SnapshotStore {
  const { snapshot } = config;
  switch (snapshot.store) {
    case "nats": {
      if (deps.nc === undefined) throw new ConfigError('[snapshot] store = "nats" needs marmot\'s NATS connection, which is not open yet');
      const bucket = snapshot.nats.bucket || defaultSnapshotBucket(config.nats.streamPrefix);
      return new NatsSnapshotStore(deps.nc, { bucket, replicas: snapshot.nats.replicas }, deps.logger);
    }
    case "file":
      return new FileSnapshotStore(snapshot.file.path);
    // The s3, webdav and sftp stores (src/snapshot/stores/{s3,webdav,sftp}.ts) are wired in here.
    case "s3":
    case "webdav":
    case "sftp":
      throw new ConfigError(`[snapshot] store "${snapshot.store}" is not available in this version of marmot; use "nats" or "file"`);
  }
}
