// Runs a marmot node inside an app's own process: the library face of what `marmot -config FILE` does.

import type { TomlTable, TomlValue } from "smol-toml";
import { parseArgs } from "./cli/args.js";
import { loadConfig } from "./config/load.js";
import type { CliOptions } from "./config/types.js";
import { checkDatabaseFile } from "./config/validate.js";
import { ConfigError } from "./errors.js";
import type { Logger } from "./log.js";
import { createLogger } from "./logger.js";
import type { NodeStatus } from "./cluster/status-model.js";
import { MarmotNode } from "./node.js";

/** A setting's value as config.toml has it; whole numbers stand for TOML integers. */
export type SettingValue = string | number | bigint | boolean | SettingValue[] | Settings;
/** Settings with the keys and sections of config.toml, e.g. `{ db_path: "app.db", nats: { urls: [...] } }`. */
export interface Settings {
  [key: string]: SettingValue;
}

export interface MarmotOptions {
  /** a config.toml, as `marmot -config` takes it */
  configPath?: string;
  /** settings laid over the file's (or the defaults when there is no file), checked as the file's are */
  config?: Settings;
  /** where marmot logs; default: its own logger on stderr, as configured by [logging] */
  logger?: Logger;
  /** what the command line's -cluster-addr, -cluster-peers and -leaf-servers give the embedded nats-server */
  cluster?: { addr?: string; peers?: string[]; leafServers?: string[] };
}

export type MarmotStatus = NodeStatus;

export interface Marmot {
  /** the node's id, state, the sequence it has applied in each stream and its changes not yet sent */
  status(): MarmotStatus;
  /** finishes in-flight work and closes NATS, the embedded nats-server and marmot's database connection */
  stop(): Promise<void>;
  /** resolves after stop(); rejects when the node had to stop on its own (its nats-server died, say) */
  readonly done: Promise<void>;
}

/**
 * Starts a node beside the app's own database connection and resolves once it ships and applies changes. The app
 * keeps writing through its own connection; marmot captures with triggers as it does as a sidecar. Rejects with a
 * ConfigError for bad settings (before touching the database), a SchemaError for a database it cannot use. Signals
 * are the app's: call stop() on SIGTERM.
 */
export async function startMarmot(options: MarmotOptions = {}): Promise<Marmot> {
  const source = "startMarmot's config";
  const overrides = options.config === undefined ? undefined : { table: toToml(options.config, "", source), source };
  const { config, warnings } = loadConfig(options.configPath, overrides);
  checkDatabaseFile(config.dbPath);
  const logger = options.logger ?? createLogger(config.logging);
  for (const w of warnings) logger.warn(w);
  const cli: CliOptions = {
    ...parseArgs([]),
    configPath: options.configPath ?? "",
    clusterAddr: options.cluster?.addr ?? "",
    clusterPeers: options.cluster?.peers ?? [],
    leafServers: options.cluster?.leafServers ?? [],
  };
  const node = await MarmotNode.start(config, cli, logger);
  return { status: () => node.status(), stop: () => node.stop(), done: node.done };
}

/** The settings as the TOML parser would give them: whole numbers become integers (bigint), as in the file. */
function toToml(settings: Settings, prefix: string, source: string): TomlTable {
  const table: TomlTable = {};
  for (const [key, value] of Object.entries(settings)) {
    if (value === undefined) continue;
    table[key] = toTomlValue(value, prefix === "" ? key : `${prefix}.${key}`, source);
  }
  return table;
}

function toTomlValue(value: SettingValue, key: string, source: string): TomlValue {
  if (typeof value === "number") return Number.isInteger(value) ? BigInt(value) : value;
  if (Array.isArray(value)) return value.map((v) => toTomlValue(v, key, source));
  if (typeof value === "object" && value !== null) return toToml(value, key, source);
  if (typeof value === "string" || typeof value === "bigint" || typeof value === "boolean") return value;
  throw new ConfigError(
    `${source}: ${key} is ${value === null ? "null" : typeof value}, which config.toml cannot hold: give a string, number, boolean, array or section`,
  );
}
