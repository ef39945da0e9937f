// The original Marmot's defaults, so a config that leaves a key out behaves as it always did.

import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Config } from "./types.js";

/** Where the original put its database when none was configured (Go's os.TempDir()). */
export function defaultDbPath(): string {
  return join(tmpdir(), "marmot.db");
}

/** The original kept its sequence map beside the database. */
export function defaultSeqMapPath(dbPath: string): string {
  return join(dirname(dbPath), "seq-map.cbor");
}

/**
 * The full default configuration. `nodeId` is left empty: it is derived from the machine
 * when the file does not set one (see node-id.ts), which needs I/O that defaults should not do.
 */
export function defaultConfig(): Config {
  const dbPath = defaultDbPath();
  return {
    configFile: "",
    dbPath,
    nodeId: "",
    seqMapPath: defaultSeqMapPath(dbPath),
    publish: true,
    replicate: true,
    scanMaxChanges: 512,
    cleanupInterval: 5000,
    sleepTimeout: 0,
    pollingInterval: 0,
    replicationLog: {
      shards: 1,
      maxEntries: 1024,
      replicas: 1,
      compress: true,
      updateExisting: false,
    },
    snapshot: {
      enabled: true,
      interval: 0,
      store: "nats",
      nats: { replicas: 1, bucket: "" },
      s3: { path: "", endpoint: "", accessKey: "", secret: "", sessionToken: "", bucket: "", useSsl: false },
      webdav: { url: "" },
      sftp: { url: "", keyFile: "", knownHostsFile: "" },
      file: { path: "" },
    },
    nats: {
      urls: [],
      subjectPrefix: "marmot-change-log",
      streamPrefix: "marmot-changes",
      serverConfig: "",
      seedFile: "",
      userName: "",
      userPassword: "",
      caFile: "",
      certFile: "",
      keyFile: "",
      // The original listened on ":-1" (every interface); an embedded server reachable from the
      // network by default is a surprise, so only loopback unless the user says otherwise.
      bindAddress: "127.0.0.1:-1",
      connectRetries: 5,
      reconnectWaitSeconds: 2,
    },
    tables: { include: [], exclude: [] },
    logging: { verbose: false, format: "console" },
    prometheus: { enable: false, bind: ":3010", namespace: "marmot", subsystem: "" },
  };
}
