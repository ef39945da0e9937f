// The original Marmot's command-line flags, parsed the way Go's flag package does, with "--" spellings too.

import { isUrlWithScheme, parseHostPort } from "../config/address.js";
import type { CliOptions } from "../config/types.js";
import { ConfigError } from "../errors.js";

type FlagKind = "string" | "boolean";

const FLAGS: Record<string, FlagKind> = {
  config: "string",
  cleanup: "boolean",
  "save-snapshot": "boolean",
  "cluster-addr": "string",
  "cluster-peers": "string",
  "leaf-servers": "string",
  help: "boolean",
  h: "boolean",
  version: "boolean",
  status: "boolean",
  parked: "boolean",
  retry: "boolean",
  discard: "boolean",
  yes: "boolean",
  // The original served Go's profiler here; there is nothing to serve, but its scripts may still pass it.
  pprof: "string",
};

const PEER_SCHEMES = ["nats", "nats-route", "tls"];
const LEAF_SCHEMES = ["nats", "nats-leaf", "tls", "ws", "wss"];

function usageError(text: string): ConfigError {
  return new ConfigError(`${text}; run marmot -help for the list of flags`);
}

function parseBoolean(flag: string, text: string): boolean {
  const lower = text.toLowerCase();
  if (["true", "t", "1"].includes(lower)) return true;
  if (["false", "f", "0"].includes(lower)) return false;
  throw usageError(`-${flag} takes true or false, got ${JSON.stringify(text)}`);
}

/** Comma separated, as in the original ("nats://a:4222/,nats://b:4222/"); blanks around and between are dropped. */
function parseUrlList(flag: string, text: string, schemes: string[]): string[] {
  const urls = text
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "");
  for (const url of urls) {
    if (!isUrlWithScheme(url, schemes)) {
      const allowed = schemes.map((s) => `${s}://`).join(", ");
      throw usageError(`-${flag}: ${JSON.stringify(url)} is not a URL with host and one of the schemes ${allowed}`);
    }
  }
  return urls;
}

/** Parses the arguments after the program name. Throws ConfigError naming the offending flag or value. */
export function parseArgs(argv: string[]): CliOptions {
  const options: CliOptions = {
    configPath: "",
    cleanup: false,
    saveSnapshot: false,
    clusterAddr: "",
    clusterPeers: [],
    leafServers: [],
    help: false,
    version: false,
    status: false,
    parked: false,
    retry: false,
    discard: false,
    yes: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      // Go's flag package stops at "--"; what follows would be positional, and marmot takes none.
      const rest = argv.slice(i + 1);
      if (rest.length > 0) throw usageError(`unexpected argument ${JSON.stringify(rest[0])}: marmot takes only flags`);
      break;
    }
    const match = /^--?([^=-][^=]*)(?:=(.*))?$/s.exec(arg);
    if (match === null) {
      throw usageError(`unexpected argument ${JSON.stringify(arg)}: marmot takes only flags`);
    }
    const name = match[1]!;
    const inlineValue = match[2];
    const kind = FLAGS[name];
    if (kind === undefined) throw usageError(`unknown flag ${arg.split("=")[0]}`);

    let value: string;
    if (kind === "boolean") {
      // Like Go's flag package: a bare boolean flag is true and never consumes the next argument.
      value = inlineValue ?? "true";
    } else if (inlineValue !== undefined) {
      value = inlineValue;
    } else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("-") && next.length > 1)) {
        throw usageError(`flag -${name} needs a value (-${name} VALUE or -${name}=VALUE)`);
      }
      value = next;
      i++;
    }

    switch (name) {
      case "config":
        if (value === "") throw usageError("flag -config needs a file path");
        options.configPath = value;
        break;
      case "cleanup":
        options.cleanup = parseBoolean(name, value);
        break;
      case "save-snapshot":
        options.saveSnapshot = parseBoolean(name, value);
        break;
      case "cluster-addr":
        if (parseHostPort(value) === undefined) {
          throw usageError(`-cluster-addr must be HOST:PORT with a port from 0 to 65535, got ${JSON.stringify(value)}`);
        }
        options.clusterAddr = value;
        break;
      case "cluster-peers":
        options.clusterPeers = parseUrlList(name, value, PEER_SCHEMES);
        break;
      case "leaf-servers":
        options.leafServers = parseUrlList(name, value, LEAF_SCHEMES);
        break;
      case "help":
      case "h":
        options.help = parseBoolean(name, value);
        break;
      case "version":
        options.version = parseBoolean(name, value);
        break;
      case "status":
      case "parked":
      case "retry":
      case "discard":
      case "yes":
        options[name] = parseBoolean(name, value);
        break;
      case "pprof":
        break;
    }
  }
  if ((options.retry || options.discard) && !options.parked) {
    throw usageError(
      `-${options.retry ? "retry" : "discard"} acts on parked changes: use it with -parked (marmot -config FILE -parked -${options.retry ? "retry" : "discard"})`,
    );
  }
  if (options.retry && options.discard) throw usageError("-retry and -discard exclude each other: choose one");
  if (options.status && options.parked) throw usageError("-status and -parked are separate commands: choose one");
  return options;
}
