// Config loading: the original's keys and defaults, and error messages that name the file and key.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import { loadConfig, SEQ_MAP_PATH_WARNING } from "../../src/config/load.js";
import { deriveNodeId, fnv1Hash64 } from "../../src/config/node-id.js";
import { checkDatabaseFile } from "../../src/config/validate.js";
import { ConfigError } from "../../src/errors.js";

const dir = mkdtempSync(join(tmpdir(), "marmot-config-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let counter = 0;
function writeConfig(text: string): string {
  const path = join(dir, `config-${++counter}.toml`);
  writeFileSync(path, text);
  return path;
}

/** Loads `text` expecting a ConfigError, and returns its message. */
function configError(text: string): string {
  const path = writeConfig(text);
  try {
    loadConfig(path);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${String(error)}`);
    assert.ok(error.message.includes(path), `message should name the file: ${error.message}`);
    return error.message;
  }
  assert.fail(`expected a ConfigError for:\n${text}`);
}

describe("loadConfig", () => {
  test("no file gives the original's defaults", () => {
    const { config, warnings } = loadConfig(undefined);
    assert.deepEqual(warnings, []);
    assert.equal(config.configFile, "");
    assert.equal(config.dbPath, join(tmpdir(), "marmot.db"));
    assert.equal(config.seqMapPath, join(tmpdir(), "seq-map.cbor"));
    assert.match(config.nodeId, /^[1-9][0-9]*$/);
    assert.equal(config.publish, true);
    assert.equal(config.replicate, true);
    assert.equal(config.scanMaxChanges, 512);
    assert.equal(config.cleanupInterval, 5000);
    assert.equal(config.sleepTimeout, 0);
    assert.equal(config.pollingInterval, 0);
    assert.deepEqual(config.replicationLog, { shards: 1, maxEntries: 1024, replicas: 1, compress: true, updateExisting: false });
    assert.equal(config.snapshot.enabled, true);
    assert.equal(config.snapshot.interval, 0);
    assert.equal(config.snapshot.store, "nats");
    assert.deepEqual(config.snapshot.nats, { replicas: 1, bucket: "" });
    assert.equal(config.snapshot.s3.useSsl, false);
    assert.deepEqual(config.nats.urls, []);
    assert.equal(config.nats.subjectPrefix, "marmot-change-log");
    assert.equal(config.nats.streamPrefix, "marmot-changes");
    assert.equal(config.nats.bindAddress, "127.0.0.1:-1");
    assert.equal(config.nats.connectRetries, 5);
    assert.equal(config.nats.reconnectWaitSeconds, 2);
    assert.deepEqual(config.logging, { verbose: false, format: "console" });
    assert.deepEqual(config.prometheus, { enable: false, bind: ":3010", namespace: "marmot", subsystem: "" });
  });

  test("an empty path, as an unset -config gives, means no file", () => {
    const { config } = loadConfig("");
    assert.equal(config.configFile, "");
    assert.equal(config.dbPath, join(tmpdir(), "marmot.db"));
  });

  test("an empty file gives the defaults and records where it came from", () => {
    const path = writeConfig("");
    const { config, warnings } = loadConfig(path);
    assert.deepEqual(warnings, []);
    assert.equal(config.configFile, path);
    assert.equal(config.dbPath, join(tmpdir(), "marmot.db"));
    assert.equal(config.replicationLog.shards, 1);
  });

  test("the original's typical example loads without errors", () => {
    const path = writeConfig(['db_path="/tmp/marmot-1.db"', "node_id=1", 'seq_map_path="/tmp/marmot-1.cbor"', ""].join("\n"));
    const { config, warnings } = loadConfig(path);
    assert.equal(config.dbPath, "/tmp/marmot-1.db");
    assert.equal(config.nodeId, "1");
    assert.equal(config.seqMapPath, "/tmp/marmot-1.cbor");
    assert.deepEqual(warnings, [SEQ_MAP_PATH_WARNING]);
  });

  test("every key is read with its value", () => {
    const files = join(dir, "tls");
    mkdirSync(files, { recursive: true });
    for (const name of ["server.conf", "user.nk", "ca.pem", "cert.pem", "key.pem"]) writeFileSync(join(files, name), "x");
    const path = writeConfig(`
seq_map_path = "/var/lib/marmot/seq-map.cbor"
db_path = "/var/lib/app/app.db"
node_id = 7
publish = false
replicate = false
scan_max_changes = 100
cleanup_interval = 60000
sleep_timeout = 15000
polling_interval = 250

[replication_log]
shards = 4
max_entries = 9007199254740991
replicas = 3
compress = false
update_existing = true

[snapshot]
enabled = false
interval = 3600000
store = "s3"

[snapshot.nats]
replicas = 2
bucket = "snaps"

[snapshot.s3]
path = "marmot/snapshots"
endpoint = "s3.example.com"
access_key = "AK"
secret = "SK"
session_token = "TOKEN"
bucket = "backups"
use_ssl = true

[snapshot.webdav]
url = "https://dav.example.com/marmot?dir=/snapshots"

[snapshot.sftp]
url = "sftp://user:pass@sftp.example.com:22/snapshots"

[nats]
urls = ["nats://a.example.com:4222", "tls://b.example.com:4443", "ws://c.example.com:8080", "d.example.com:4222"]
subject_prefix = "app-change-log"
stream_prefix = "app_changes"
server_config = "${files}/server.conf"
seed_file = "${files}/user.nk"
user_name = "marmot"
user_password = "secret"
ca_file = "${files}/ca.pem"
cert_file = "${files}/cert.pem"
key_file = "${files}/key.pem"
bind_address = "0.0.0.0:4222"
connect_retries = 10
reconnect_wait_seconds = 7

[logging]
verbose = true
format = "json"

[prometheus]
enable = true
bind = "0.0.0.0:9090"
namespace = "app"
subsystem = "replication"
`);
    const { config, warnings } = loadConfig(path);
    assert.deepEqual(warnings, [SEQ_MAP_PATH_WARNING]);
    assert.deepEqual(config, {
      configFile: path,
      dbPath: "/var/lib/app/app.db",
      nodeId: "7",
      seqMapPath: "/var/lib/marmot/seq-map.cbor",
      publish: false,
      replicate: false,
      scanMaxChanges: 100,
      cleanupInterval: 60000,
      sleepTimeout: 15000,
      pollingInterval: 250,
      replicationLog: { shards: 4, maxEntries: 9007199254740991, replicas: 3, compress: false, updateExisting: true },
      snapshot: {
        enabled: false,
        interval: 3600000,
        store: "s3",
        nats: { replicas: 2, bucket: "snaps" },
        s3: {
          path: "marmot/snapshots",
          endpoint: "s3.example.com",
          accessKey: "AK",
          secret: "SK",
          sessionToken: "TOKEN",
          bucket: "backups",
          useSsl: true,
        },
        webdav: { url: "https://dav.example.com/marmot?dir=/snapshots" },
        sftp: { url: "sftp://user:pass@sftp.example.com:22/snapshots", keyFile: "", knownHostsFile: "" },
        file: { path: "" },
      },
      nats: {
        urls: ["nats://a.example.com:4222", "tls://b.example.com:4443", "ws://c.example.com:8080", "d.example.com:4222"],
        subjectPrefix: "app-change-log",
        streamPrefix: "app_changes",
        serverConfig: join(files, "server.conf"),
        seedFile: join(files, "user.nk"),
        userName: "marmot",
        userPassword: "secret",
        caFile: join(files, "ca.pem"),
        certFile: join(files, "cert.pem"),
        keyFile: join(files, "key.pem"),
        bindAddress: "0.0.0.0:4222",
        connectRetries: 10,
        reconnectWaitSeconds: 7,
      },
      tables: { include: [], exclude: [] },
      logging: { verbose: true, format: "json" },
      prometheus: { enable: true, bind: "0.0.0.0:9090", namespace: "app", subsystem: "replication" },
    });
  });

  test("relative paths resolve against the working directory, and seq_map_path defaults beside db_path", () => {
    const work = join(dir, "cwd");
    mkdirSync(join(work, "data"), { recursive: true });
    writeFileSync(join(work, "ca.pem"), "x");
    const path = writeConfig('db_path = "data/app.db"\n[nats]\nca_file = "ca.pem"\n');
    const previous = process.cwd();
    process.chdir(work);
    try {
      const { config, warnings } = loadConfig(path);
      assert.equal(config.dbPath, join(work, "data", "app.db"));
      assert.equal(config.seqMapPath, join(work, "data", "seq-map.cbor"));
      assert.equal(config.nats.caFile, join(work, "ca.pem"));
      assert.equal(config.nats.certFile, "");
      assert.deepEqual(warnings, [], "seq_map_path was not set, so no warning");
    } finally {
      process.chdir(previous);
    }
  });

  test("unknown keys at any level give one warning each, naming the dotted key and the file", () => {
    const path = writeConfig('colour = "blue"\n[nats]\nfoo = 1\n[snapshot.s3]\nregion = "eu"\n[metrics]\nx = 1\n');
    const { warnings } = loadConfig(path);
    assert.deepEqual(warnings.sort(), [
      `unknown key colour in ${path} (ignored)`,
      `unknown key metrics in ${path} (ignored)`,
      `unknown key nats.foo in ${path} (ignored)`,
      `unknown key snapshot.s3.region in ${path} (ignored)`,
    ]);
  });

  test("a TOML syntax error names file:line:column", () => {
    const path = writeConfig('db_path = "/tmp/a.db"\nnode_id = = 2\n');
    assert.throws(
      () => loadConfig(path),
      (error: unknown) => error instanceof ConfigError && error.message.startsWith(`${path}:2:11: `),
    );
  });

  test("a wrong type names the key, the expected type and the value given", () => {
    const message = configError('[replication_log]\ncompress = "yes"\n');
    assert.match(message, /replication_log\.compress must be a boolean.*got string "yes"/);
  });

  test("shards out of range is an error naming the key and the range", () => {
    assert.match(configError("[replication_log]\nshards = 0\n"), /replication_log\.shards must be an integer from 1 to 1024, got 0/);
    assert.match(configError("[replication_log]\nshards = -1\n"), /replication_log\.shards must be an integer from 1 to 1024, got -1/);
    assert.match(configError("[replication_log]\nshards = 1025\n"), /replication_log\.shards .* got 1025/);
    assert.match(configError("[replication_log]\nshards = 2.5\n"), /replication_log\.shards .* got float 2\.5/);
  });

  test("an unknown snapshot store lists the allowed ones", () => {
    const message = configError('[snapshot]\nstore = "ftp"\n');
    assert.match(message, /snapshot\.store must be one of "nats", "s3", "webdav", "sftp", "file", got "ftp"/);
  });

  test("an unknown logging format is an error", () => {
    assert.match(configError('[logging]\nformat = "xml"\n'), /logging\.format must be one of "console", "json", got "xml"/);
  });

  test("prefixes that cannot be part of a stream name are errors", () => {
    assert.match(configError('[nats]\nstream_prefix = "marmot.changes"\n'), /nats\.stream_prefix must be non-empty/);
    assert.match(configError('[nats]\nsubject_prefix = ""\n'), /nats\.subject_prefix must be non-empty/);
    assert.match(configError('[nats]\nstream_prefix = "a b"\n'), /nats\.stream_prefix .* got "a b"/);
    assert.match(configError('[snapshot.nats]\nbucket = "my.bucket"\n'), /snapshot\.nats\.bucket must be non-empty .* got "my\.bucket"/);
  });

  test("bad addresses and URLs are errors naming the key", () => {
    assert.match(configError('[nats]\nbind_address = "localhost"\n'), /nats\.bind_address must be "host:port"/);
    assert.match(configError('[nats]\nbind_address = "0.0.0.0:70000"\n'), /nats\.bind_address/);
    assert.match(configError('[nats]\nurls = ["http://a:80"]\n'), /nats\.urls\[0\] must be a NATS server address/);
    assert.match(configError('[nats]\nurls = "nats://a:4222"\n'), /nats\.urls must be an array of strings/);
    assert.match(configError('[prometheus]\nbind = "nowhere"\n'), /prometheus\.bind must be "host:port"/);
  });

  test("files the config points at must exist, and cert_file needs key_file", () => {
    const missing = join(dir, "no-such-ca.pem");
    assert.match(configError(`[nats]\nca_file = "${missing}"\n`), new RegExp(`nats\\.ca_file ${missing} does not exist`));
    assert.match(configError(`[nats]\nserver_config = "${dir}"\n`), /nats\.server_config .* is not a regular file/);
    const cert = join(dir, "only-cert.pem");
    writeFileSync(cert, "x");
    assert.match(configError(`[nats]\ncert_file = "${cert}"\n`), /nats\.key_file is missing/);
  });

  test("a section given as a value is an error", () => {
    assert.match(configError("nats = 5\n"), /nats must be a table/);
  });

  test("all errors are reported together, one a line", () => {
    const message = configError('publish = "no"\n[replication_log]\nshards = 0\n[logging]\nformat = "xml"\n');
    const lines = message.split("\n");
    assert.equal(lines.length, 3);
    assert.ok(lines[0]!.includes("publish"));
    assert.ok(lines[1]!.includes("replication_log.shards"));
    assert.ok(lines[2]!.includes("logging.format"));
  });

  test("a missing config file is an error naming it", () => {
    const path = join(dir, "absent.toml");
    assert.throws(() => loadConfig(path), { name: "ConfigError", message: new RegExp(`config file ${path} does not exist`) });
  });

  test("a directory as config file is an error", () => {
    assert.throws(() => loadConfig(dir), { name: "ConfigError", message: /is a directory/ });
  });
});

describe("node_id", () => {
  test("the largest uint64, as a string, is kept exactly", () => {
    const { config } = loadConfig(writeConfig('node_id = "18446744073709551615"\n'));
    assert.equal(config.nodeId, "18446744073709551615");
  });

  test("the largest TOML integer is kept exactly", () => {
    const { config } = loadConfig(writeConfig("node_id = 9223372036854775807\n"));
    assert.equal(config.nodeId, "9223372036854775807");
  });

  test("out of range or malformed ids are errors", () => {
    assert.match(configError('node_id = "18446744073709551616"\n'), /node_id must be/);
    assert.match(configError("node_id = -3\n"), /node_id must be .* got integer -3/);
    assert.match(configError('node_id = "12a"\n'), /node_id must be/);
    assert.match(configError("node_id = 1.5\n"), /node_id must be/);
  });

  test("0 means derive it from the machine", () => {
    const { config } = loadConfig(writeConfig("node_id = 0\n"));
    assert.match(config.nodeId, /^[1-9][0-9]*$/);
  });

  test("FNV-1 64 matches the published test vectors", () => {
    const bytes = (text: string) => new TextEncoder().encode(text);
    assert.equal(fnv1Hash64(bytes("")), 0xcbf29ce484222325n);
    assert.equal(fnv1Hash64(bytes("a")), 0xaf63bd4c8601b7ben);
    assert.equal(fnv1Hash64(bytes("foobar")), 0x340d8765a4dda9c2n);
  });

  test("the derived id is the FNV-1 hash of the trimmed machine id, stable across calls", () => {
    const machineId = join(dir, "machine-id");
    writeFileSync(machineId, "0123456789abcdef0123456789abcdef\n");
    const expected = fnv1Hash64(new TextEncoder().encode("0123456789abcdef0123456789abcdef")).toString();
    assert.equal(deriveNodeId(machineId), expected);
    assert.equal(deriveNodeId(machineId), expected);
  });

  test("without a machine id the derived id is random", () => {
    const absent = join(dir, "no-machine-id");
    const first = deriveNodeId(absent);
    assert.match(first, /^[1-9][0-9]*$/);
    assert.notEqual(deriveNodeId(absent), first);
  });
});

describe("checkDatabaseFile", () => {
  test("a missing database says how to create one", () => {
    const path = join(dir, "missing.db");
    assert.throws(() => checkDatabaseFile(path), {
      name: "ConfigError",
      message: `db_path ${path} does not exist: marmot replicates an existing SQLite database; create it first (e.g. sqlite3 ${path} 'VACUUM')`,
    });
  });

  test("a directory is refused", () => {
    assert.throws(() => checkDatabaseFile(dir), { name: "ConfigError", message: /is a directory/ });
  });

  test("a text file is not a SQLite database", () => {
    const path = join(dir, "notes.txt");
    writeFileSync(path, "these are not the tables you are looking for\n");
    assert.throws(() => checkDatabaseFile(path), { name: "ConfigError", message: /is not a SQLite database \(bad header\)/ });
  });

  test("a file shorter than the header is not a SQLite database", () => {
    const path = join(dir, "short.db");
    writeFileSync(path, "SQLite");
    assert.throws(() => checkDatabaseFile(path), { name: "ConfigError", message: /bad header/ });
  });

  test("a real SQLite database passes", () => {
    const path = join(dir, "real.db");
    const db = new Database(path);
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t (name) VALUES ('a')");
    db.close();
    assert.doesNotThrow(() => checkDatabaseFile(path));
  });

  test("an empty file passes: SQLite treats it as an empty database", () => {
    const path = join(dir, "empty.db");
    writeFileSync(path, "");
    assert.doesNotThrow(() => checkDatabaseFile(path));
  });
});

test("[tables] include and exclude name the tables to capture", () => {
  const dir = mkdtempSync(join(tmpdir(), "marmot-tables-"));
  try {
    const file = join(dir, "c.toml");
    writeFileSync(file, '[tables]\ninclude = ["Books", "authors"]\nexclude = ["sessions"]\n');
    const { config, warnings } = loadConfig(file);
    assert.deepEqual(config.tables, { include: ["Books", "authors"], exclude: ["sessions"] });
    assert.deepEqual(warnings, []);
    writeFileSync(file, "[tables]\nexclude = 3\n");
    assert.throws(() => loadConfig(file), /tables\.exclude/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
