// The configuration marmot runs with: the original Marmot's TOML keys, parsed and validated.

export type SnapshotStoreKind = "nats" | "s3" | "webdav" | "sftp" | "file";

export interface ReplicationLogConfig {
  shards: number;
  maxEntries: number;
  replicas: number;
  compress: boolean;
  updateExisting: boolean;
}

export interface SnapshotConfig {
  enabled: boolean;
  /** milliseconds; 0 = never on a timer */
  interval: number;
  store: SnapshotStoreKind;
  nats: { replicas: number; bucket: string };
  s3: { path: string; endpoint: string; accessKey: string; secret: string; sessionToken: string; bucket: string; useSsl: boolean };
  webdav: { url: string };
  /** `sftp://user[:password]@host[:port]/path`; a private key file and a known-hosts file are marmot's own keys */
  sftp: { url: string; keyFile: string; knownHostsFile: string };
  /** a folder (a shared mount, say); marmot's own store, the original had none */
  file: { path: string };
}

export interface NatsConfig {
  /** empty: start and supervise an embedded nats-server */
  urls: string[];
  subjectPrefix: string;
  streamPrefix: string;
  serverConfig: string;
  seedFile: string;
  userName: string;
  userPassword: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  /** client listen address of the embedded server, "host:port"; port -1 = any free port */
  bindAddress: string;
  connectRetries: number;
  reconnectWaitSeconds: number;
}

/** Which tables marmot captures (marmot's own extension; the original captured every table). */
export interface TablesConfig {
  /** when not empty, only these tables */
  include: string[];
  /** never these tables */
  exclude: string[];
}

export interface LoggingConfig {
  verbose: boolean;
  format: "console" | "json";
}

export interface PrometheusConfig {
  enable: boolean;
  bind: string;
  namespace: string;
  subsystem: string;
}

export interface Config {
  /** absolute path of the file the config came from ("" when none) */
  configFile: string;
  dbPath: string;
  /** decimal string: the original allows any uint64 */
  nodeId: string;
  seqMapPath: string;
  publish: boolean;
  replicate: boolean;
  scanMaxChanges: number;
  /** milliseconds */
  cleanupInterval: number;
  /** milliseconds; 0 = never */
  sleepTimeout: number;
  /** milliseconds; 0 = file watching only (plus a slow safety poll) */
  pollingInterval: number;
  replicationLog: ReplicationLogConfig;
  snapshot: SnapshotConfig;
  nats: NatsConfig;
  tables: TablesConfig;
  logging: LoggingConfig;
  prometheus: PrometheusConfig;
}

/** What the command line adds on top of the file. */
export interface CliOptions {
  configPath: string;
  cleanup: boolean;
  saveSnapshot: boolean;
  clusterAddr: string;
  clusterPeers: string[];
  leafServers: string[];
  help: boolean;
  version: boolean;
  /** print the cluster's status and exit (0 when every node is ready and agrees) */
  status: boolean;
  /** list the parked changes (with retry or discard: act on them) and exit */
  parked: boolean;
  retry: boolean;
  discard: boolean;
  /** answer yes to the confirmation of -discard */
  yes: boolean;
}
