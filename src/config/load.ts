// Turns a config.toml (or no file at all) into a validated Config, failing with every problem listed at once.

import { readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { parse, TomlError, type TomlTable } from "smol-toml";
import { ConfigError } from "../errors.js";
import { defaultConfig, defaultSeqMapPath } from "./defaults.js";
import { deriveNodeId, NODE_ID_RULE, readNodeId } from "./node-id.js";
import { describe, Problems, TableReader } from "./reader.js";
import type { Config, SnapshotStoreKind } from "./types.js";
import { checkNatsFiles, checkSnapshotStoreKeys, listenAddressProblem, natsNameProblem, natsUrlProblem } from "./validate.js";

export interface LoadedConfig {
  config: Config;
  /** things worth telling the user that do not stop marmot (unknown keys, ignored settings) */
  warnings: string[];
}

// setTimeout fires at once for delays above 2^31-1 ms, which would turn a long interval into a busy loop.
const MAX_TIMER_MS = 2 ** 31 - 1;
const SNAPSHOT_STORES: readonly SnapshotStoreKind[] = ["nats", "s3", "webdav", "sftp", "file"];

export const SEQ_MAP_PATH_WARNING = "seq_map_path is accepted for compatibility and not used: marmot records applied positions inside the database";

/** The original resolved relative paths against the working directory, not the config file; so do we. */
function absolutePath(path: string): string {
  return path === "" ? "" : resolve(path);
}

function readFile(path: string): string {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(path).isDirectory();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new ConfigError(`config file ${path} does not exist: check the -config path`);
    }
    throw new ConfigError(`cannot read config file ${path}: ${(error as Error).message}`, { cause: error });
  }
  if (isDirectory) throw new ConfigError(`config file ${path} is a directory: give -config the path of a TOML file`);
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    throw new ConfigError(`cannot read config file ${path}: ${(error as Error).message}`, { cause: error });
  }
}

function parseToml(text: string, file: string): TomlTable {
  try {
    // Integers as bigint: node_id needs all 64 bits, and it tells 5 apart from 5.0.
    return parse(text, { integersAsBigInt: true });
  } catch (error) {
    if (error instanceof TomlError) {
      const reason = error.message.split("\n")[0]!.replace(/^Invalid TOML document: /, "");
      throw new ConfigError(`${file}:${error.line}:${error.column}: ${reason}\n${error.codeblock}`.trimEnd(), {
        cause: error,
      });
    }
    throw error;
  }
}

function readConfig(root: TableReader, problems: Problems, file: string): Config {
  const d = defaultConfig();

  const dbPath = absolutePath(root.string("db_path", d.dbPath, (v) => (v === "" ? "must not be empty" : undefined)));
  if (root.has("seq_map_path")) problems.warnings.push(SEQ_MAP_PATH_WARNING);
  const seqMapPath = root.has("seq_map_path") ? absolutePath(root.string("seq_map_path", "")) : defaultSeqMapPath(dbPath);

  let nodeId = "";
  const nodeIdValue = root.value("node_id");
  if (nodeIdValue !== undefined) {
    const setting = readNodeId(nodeIdValue);
    if (setting.kind === "invalid") root.fail("node_id", `${NODE_ID_RULE}, got ${describe(nodeIdValue)}`);
    if (setting.kind === "given") nodeId = setting.nodeId;
  }

  const log = root.section("replication_log");
  const snap = root.section("snapshot");
  const snapNats = snap.section("nats");
  const s3 = snap.section("s3");
  const sftp = snap.section("sftp");
  const nats = root.section("nats");
  const tables = root.section("tables");
  const logging = root.section("logging");
  const prometheus = root.section("prometheus");
  const ms = "milliseconds";

  const config: Config = {
    configFile: file,
    dbPath,
    nodeId: nodeId === "" ? deriveNodeId() : nodeId,
    seqMapPath,
    publish: root.boolean("publish", d.publish),
    replicate: root.boolean("replicate", d.replicate),
    scanMaxChanges: root.integer("scan_max_changes", d.scanMaxChanges, 1, Number.MAX_SAFE_INTEGER),
    cleanupInterval: root.integer("cleanup_interval", d.cleanupInterval, 0, MAX_TIMER_MS, ms),
    sleepTimeout: root.integer("sleep_timeout", d.sleepTimeout, 0, MAX_TIMER_MS, ms),
    pollingInterval: root.integer("polling_interval", d.pollingInterval, 0, MAX_TIMER_MS, ms),
    replicationLog: {
      shards: log.integer("shards", d.replicationLog.shards, 1, 1024),
      maxEntries: log.integer("max_entries", d.replicationLog.maxEntries, 1, Number.MAX_SAFE_INTEGER),
      replicas: log.integer("replicas", d.replicationLog.replicas, 1, 5),
      compress: log.boolean("compress", d.replicationLog.compress),
      updateExisting: log.boolean("update_existing", d.replicationLog.updateExisting),
    },
    snapshot: {
      enabled: snap.boolean("enabled", d.snapshot.enabled),
      interval: snap.integer("interval", d.snapshot.interval, 0, MAX_TIMER_MS, ms),
      store: snap.choice("store", d.snapshot.store, SNAPSHOT_STORES),
      nats: {
        replicas: snapNats.integer("replicas", d.snapshot.nats.replicas, 1, 5),
        // The bucket becomes the stream OBJ_<bucket>; empty means "<stream_prefix>-snapshot-store".
        bucket: snapNats.string("bucket", d.snapshot.nats.bucket, (v) => (v === "" ? undefined : natsNameProblem(v))),
      },
      s3: {
        path: s3.string("path", d.snapshot.s3.path),
        endpoint: s3.string("endpoint", d.snapshot.s3.endpoint),
        accessKey: s3.string("access_key", d.snapshot.s3.accessKey),
        secret: s3.string("secret", d.snapshot.s3.secret),
        sessionToken: s3.string("session_token", d.snapshot.s3.sessionToken),
        bucket: s3.string("bucket", d.snapshot.s3.bucket),
        useSsl: s3.boolean("use_ssl", d.snapshot.s3.useSsl),
      },
      webdav: { url: snap.section("webdav").string("url", d.snapshot.webdav.url) },
      sftp: {
        url: sftp.string("url", d.snapshot.sftp.url),
        keyFile: absolutePath(sftp.string("key_file", d.snapshot.sftp.keyFile)),
        knownHostsFile: absolutePath(sftp.string("known_hosts_file", d.snapshot.sftp.knownHostsFile)),
      },
      file: { path: absolutePath(snap.section("file").string("path", d.snapshot.file.path)) },
    },
    nats: {
      urls: nats.stringList("urls", d.nats.urls, natsUrlProblem),
      subjectPrefix: nats.string("subject_prefix", d.nats.subjectPrefix, natsNameProblem),
      streamPrefix: nats.string("stream_prefix", d.nats.streamPrefix, natsNameProblem),
      serverConfig: absolutePath(nats.string("server_config", d.nats.serverConfig)),
      seedFile: absolutePath(nats.string("seed_file", d.nats.seedFile)),
      userName: nats.string("user_name", d.nats.userName),
      userPassword: nats.string("user_password", d.nats.userPassword),
      caFile: absolutePath(nats.string("ca_file", d.nats.caFile)),
      certFile: absolutePath(nats.string("cert_file", d.nats.certFile)),
      keyFile: absolutePath(nats.string("key_file", d.nats.keyFile)),
      bindAddress: nats.string("bind_address", d.nats.bindAddress, listenAddressProblem(true)),
      connectRetries: nats.integer("connect_retries", d.nats.connectRetries, 0, Number.MAX_SAFE_INTEGER),
      reconnectWaitSeconds: nats.integer("reconnect_wait_seconds", d.nats.reconnectWaitSeconds, 0, Math.floor(MAX_TIMER_MS / 1000), "seconds"),
    },
    tables: {
      include: tables.stringList("include", d.tables.include),
      exclude: tables.stringList("exclude", d.tables.exclude),
    },
    logging: {
      verbose: logging.boolean("verbose", d.logging.verbose),
      format: logging.choice("format", d.logging.format, ["console", "json"] as const),
    },
    prometheus: {
      enable: prometheus.boolean("enable", d.prometheus.enable),
      bind: prometheus.string("bind", d.prometheus.bind, listenAddressProblem(false)),
      namespace: prometheus.string("namespace", d.prometheus.namespace),
      subsystem: prometheus.string("subsystem", d.prometheus.subsystem),
    },
  };
  checkNatsFiles(config.nats, problems);
  checkSnapshotStoreKeys(config.snapshot, problems);
  return config;
}

/** Settings shaped like config.toml (its keys and sections) laid over the file's: from a program embedding marmot. */
export interface ConfigOverrides {
  table: TomlTable;
  /** names them in error messages, as a file name would */
  source: string;
}

/** `over` on top of `base`: sections merge key by key, any other value replaces the base's. */
function overlay(base: TomlTable, over: TomlTable): TomlTable {
  const isSection = (v: unknown): v is TomlTable => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
  const merged: TomlTable = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const below = merged[key];
    merged[key] = isSection(value) && isSection(below) ? overlay(below, value) : value;
  }
  return merged;
}

/**
 * Loads the config file at `path`, or the defaults when there is none ("" counts as none, as an unset
 * -config flag does). Throws ConfigError listing every problem, one a line, each naming the file and the dotted key.
 */
export function loadConfig(path: string | undefined, overrides?: ConfigOverrides): LoadedConfig {
  const noFile = path === undefined || path === "";
  if (noFile && overrides === undefined) {
    const config = defaultConfig();
    config.nodeId = deriveNodeId();
    return { config, warnings: [] };
  }
  const file = noFile ? "" : resolve(path);
  let table = noFile ? {} : parseToml(readFile(file), file);
  if (overrides !== undefined) table = overlay(table, overrides.table);
  const source = overrides === undefined ? file : noFile ? overrides.source : `${file} (with ${overrides.source})`;
  const problems = new Problems(source);
  const config = readConfig(new TableReader(table, "", problems), problems, file);
  if (problems.errors.length > 0) throw new ConfigError(problems.errors.join("\n"));
  problems.warnUnknownKeys();
  return { config, warnings: problems.warnings };
}
