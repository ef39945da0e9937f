// Checks beyond types: names NATS accepts, addresses, and files the config points at, with what to do about each.

import { accessSync, closeSync, constants, openSync, readSync, statSync, type Stats } from "node:fs";
import { dirname } from "node:path";
import { ConfigError } from "../errors.js";
import { isUrlWithScheme, parseHostPort } from "./address.js";
import type { Problems } from "./reader.js";
import type { NatsConfig, SnapshotConfig } from "./types.js";

const SQLITE_HEADER = Buffer.from("SQLite format 3\0", "latin1");

/** Stream and subject names end up in JetStream stream names, which cannot hold ".", "*", ">" or spaces. */
export function natsNameProblem(value: string): string | undefined {
  if (/^[A-Za-z0-9_-]+$/.test(value)) return undefined;
  return "must be non-empty and contain only letters, digits, '_' and '-' (it becomes part of a NATS stream name)";
}

export function natsUrlProblem(value: string): string | undefined {
  const ok = value.includes("://")
    ? isUrlWithScheme(value, ["nats", "tls", "ws", "wss"])
    : parseHostPort(value, { hostRequired: true }) !== undefined;
  return ok ? undefined : "must be a NATS server address such as nats://host:4222, tls://host:4222, ws://host:8080 or host:4222";
}

/** Listen addresses may leave the host empty (every interface); `anyPort` admits -1 (a free port). */
export function listenAddressProblem(anyPort: boolean): (value: string) => string | undefined {
  return (value) =>
    parseHostPort(value, { anyPort }) !== undefined
      ? undefined
      : `must be "host:port" with a port from ${anyPort ? "-1 (any free port)" : "0"} to 65535 and an optional host (e.g. "127.0.0.1:4222")`;
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

/** Every file [nats] points at must be there now, rather than failing later on the first connection. */
export function checkNatsFiles(nats: NatsConfig, problems: Problems): void {
  const files: Array<[string, string]> = [
    ["nats.server_config", nats.serverConfig],
    ["nats.seed_file", nats.seedFile],
    ["nats.ca_file", nats.caFile],
    ["nats.cert_file", nats.certFile],
    ["nats.key_file", nats.keyFile],
  ];
  for (const [key, path] of files) {
    if (path === "") continue;
    const stats = statOrUndefined(path);
    if (stats === undefined) problems.error(key, `${path} does not exist`);
    else if (!stats.isFile()) problems.error(key, `${path} is not a regular file`);
    else {
      try {
        accessSync(path, constants.R_OK);
      } catch {
        problems.error(key, `${path} cannot be read by this user: fix its permissions`);
      }
    }
  }
  if ((nats.certFile === "") !== (nats.keyFile === "")) {
    const missing = nats.certFile === "" ? "nats.cert_file" : "nats.key_file";
    problems.error("nats.cert_file", `and nats.key_file must be given together for a TLS client certificate: ${missing} is missing`);
  }
}

/**
 * Marmot replicates an existing database and never creates one: an empty path or a typo
 * would otherwise start a node that silently replicates nothing.
 */
export function checkDatabaseFile(dbPath: string): void {
  const stats = statOrUndefined(dbPath);
  if (stats === undefined) {
    throw new ConfigError(
      `db_path ${dbPath} does not exist: marmot replicates an existing SQLite database; create it first (e.g. sqlite3 ${dbPath} 'VACUUM')`,
    );
  }
  if (stats.isDirectory()) {
    throw new ConfigError(`db_path ${dbPath} is a directory: set db_path to the SQLite database file`);
  }
  if (!stats.isFile()) {
    throw new ConfigError(`db_path ${dbPath} is not a regular file: set db_path to the SQLite database file`);
  }
  try {
    accessSync(dbPath, constants.R_OK | constants.W_OK);
  } catch {
    throw new ConfigError(`db_path ${dbPath} is not readable and writable by this user: fix its owner or permissions`);
  }
  try {
    accessSync(dirname(dbPath), constants.W_OK);
  } catch {
    throw new ConfigError(
      `the directory of db_path ${dbPath} is not writable by this user: SQLite creates its -wal and -shm files beside the database`,
    );
  }
  if (stats.size === 0) return; // SQLite treats an empty file as a new, empty database
  const header = Buffer.alloc(SQLITE_HEADER.length);
  const fd = openSync(dbPath, "r");
  let length: number;
  try {
    length = readSync(fd, header, 0, header.length, 0);
  } finally {
    closeSync(fd);
  }
  if (length < header.length || !header.equals(SQLITE_HEADER)) {
    throw new ConfigError(`db_path ${dbPath} is not a SQLite database (bad header): check that db_path names the database file itself`);
  }
}

/**
 * The key the chosen snapshot store cannot do without, so that a missing one stops marmot at start; the store
 * checks the rest (credentials, key files) when it opens.
 */
export function checkSnapshotStoreKeys(snapshot: SnapshotConfig, problems: Problems): void {
  if (snapshot.store === "s3" && snapshot.s3.bucket === "") {
    problems.error("snapshot.s3.bucket", 'is empty: name the bucket that holds the snapshots (store = "s3")');
  }
  if (snapshot.store === "webdav" && !isUrlWithScheme(snapshot.webdav.url, ["http", "https"])) {
    problems.error(
      "snapshot.webdav.url",
      'must be the server\'s address, e.g. "https://host/path?dir=/snapshots&login=user&secret=pass" (store = "webdav")',
    );
  }
  if (snapshot.store === "sftp" && !isUrlWithScheme(snapshot.sftp.url, ["sftp"])) {
    problems.error(
      "snapshot.sftp.url",
      'must be "sftp://user[:password]@host[:port]/path", e.g. "sftp://marmot@backup.example.com/srv/snapshots" (store = "sftp")',
    );
  }
}
