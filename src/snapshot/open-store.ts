// Picks and builds the snapshot store the config names ([snapshot] store).

import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../config/types.js";
import { ConfigError } from "../errors.js";
import type { Logger } from "../log.js";
import type { SnapshotStore } from "./store.js";
import { FileSnapshotStore } from "./stores/file.js";
import { defaultSnapshotBucket, NatsSnapshotStore } from "./stores/nats.js";
import { createS3Store } from "./stores/s3.js";
import { createSftpStore } from "./stores/sftp.js";
import { createWebDavStore } from "./stores/webdav.js";

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
    case "s3":
      return createS3Store(snapshot.s3, deps.logger);
    case "webdav":
      return createWebDavStore(snapshot.webdav, deps.logger);
    case "sftp":
      return createSftpStore(snapshot.sftp, deps.logger);
  }
}
