// Snapshots end to end on real files: save into the file store and a real nats-server's object store, restore into
// empty and different databases, under a running app process, with pending changes, and refusal of bad objects.

import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync, truncateSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import type Database from "better-sqlite3";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { defaultConfig } from "../../src/config/defaults.js";
import type { Config } from "../../src/config/types.js";
import { SnapshotInvalidError, SnapshotStoreError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import { Metrics } from "../../src/metrics.js";
import { downloadSnapshot } from "../../src/snapshot/download.js";
import { fetchLatestManifest, MANIFEST_NAME } from "../../src/snapshot/manifest.js";
import { openSnapshotStore } from "../../src/snapshot/open-store.js";
import { restoreSnapshot } from "../../src/snapshot/restore.js";
import { saveSnapshot } from "../../src/snapshot/save.js";
import type { SnapshotStore } from "../../src/snapshot/store.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { removeCapture } from "../../src/sqlite/cleanup.js";
import { APPLIED_TABLE, changeLogTable, LOG_ID_COLUMN } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { quoteIdent } from "../../src/sqlite/quote.js";
import { NOT_MARKER } from "../../src/sqlite/trigger-sql.js";
import { tableDiff, waitFor } from "../helpers/marmot.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { spawnTracked, useProcessCleanup, waitForExit } from "../helpers/processes.js";
import { copyFixture, createDb, recordingLogger, removeTempDirs, sqlite3, sqlite3Async, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();
after(removeTempDirs);

const STREAM = "marmot-changes-1-1";

/** Tables with every kind of value and key, on top of the chinook fixture. */
const OWN_TABLES = `
CREATE TABLE kinds (id INTEGER PRIMARY KEY, big INTEGER, r REAL, t TEXT, b BLOB, n);
INSERT INTO kinds VALUES (1, 9223372036854775807, 1.5, 'quote '' double " newline
tab	 unicode é 😀', x'00ff10', NULL);
INSERT INTO kinds VALUES (2, -9223372036854775808, -0.0, '', x'', NULL);
INSERT INTO kinds VALUES (3, 1, 3.141592653589793, char(0) || 'after nul', zeroblob(3), 7);
INSERT INTO kinds VALUES (4, 2, 1e308, 'x', NULL, 'text in an untyped column');
CREATE TABLE nokey (a, b);
INSERT INTO nokey VALUES ('x', 1), ('y', 2), ('z', 3);
DELETE FROM nokey WHERE a = 'x';
CREATE TABLE composite (a TEXT, b INTEGER, v REAL, PRIMARY KEY (a, b)) WITHOUT ROWID;
INSERT INTO composite VALUES ('k', 1, 0.5), ('k', 2, NULL), ('', -1, 2.25);
CREATE TABLE auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
INSERT INTO auto (v) VALUES ('one'), ('two'), ('three');
DELETE FROM auto WHERE v = 'three';
CREATE TABLE gen (a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL);
INSERT INTO gen (a) VALUES (21);
CREATE INDEX kinds_t ON kinds (t);
CREATE VIEW kinds_text AS SELECT id, t FROM kinds;
CREATE TRIGGER nokey_touch AFTER INSERT ON nokey BEGIN UPDATE auto SET v = v WHERE 0; END;
`;

function configFor(dbPath: string, changes: Partial<Config["snapshot"]> = {}): Config {
  const config = defaultConfig();
  config.dbPath = dbPath;
  config.nodeId = "1";
  config.snapshot = { ...config.snapshot, ...changes };
  return config;
}

/** chinook plus OWN_TABLES, with marmot's capture installed and a sequence applied, as a running node has it. */
function sourceDatabase(): { path: string; db: Database.Database } {
  const path = copyFixture("chinook");
  sqlite3(path, OWN_TABLES);
  const db = openDatabase(path, silentLogger);
  installCapture(db, silentLogger);
  db.prepare(`INSERT INTO ${quoteIdent(APPLIED_TABLE)} (stream, seq) VALUES (?, ?)`).run(STREAM, 42n);
  return { path, db };
}

/** The user's part of sqlite_master, as the sqlite3 CLI reads it. */
function userSchema(path: string): string {
  return sqlite3(
    path,
    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE '\\_\\_marmot%' ESCAPE '\\' " +
      "AND tbl_name NOT LIKE '\\_\\_marmot%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_autoindex%' ESCAPE '\\' ORDER BY type, name",
  );
}

function userTables(path: string): string[] {
  return sqlite3(
    path,
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_\\_marmot%' ESCAPE '\\' AND name <> 'sqlite_sequence'",
  )
    .trim()
    .split("\n");
}

function userSequence(path: string): string {
  return sqlite3(path, "SELECT name, seq FROM sqlite_sequence WHERE name NOT LIKE '\\_\\_marmot%' ESCAPE '\\' ORDER BY name");
}

/** Same user schema, same rows in every user table (sqldiff --primarykey), same AUTOINCREMENT counters. */
function assertSameUserData(a: string, b: string): void {
  assert.equal(userSchema(b), userSchema(a));
  const tables = userTables(a);
  assert.ok(tables.length > 10, `expected the fixture's tables, got ${tables.join(",")}`);
  for (const table of tables) assert.equal(tableDiff(a, b, table), "", `table ${table} differs`);
  assert.equal(userSequence(b), userSequence(a));
}

function logRows(db: Database.Database, table: string): Record<string, unknown>[] {
  return db.prepare(`SELECT * FROM ${quoteIdent(changeLogTable(table))} WHERE ${NOT_MARKER} ORDER BY ${quoteIdent(LOG_ID_COLUMN)}`).all() as Record<
    string,
    unknown
  >[];
}

/** Save `db` into `store`, download the snapshot beside `targetPath` and restore it into marmot's connection there. */
async function roundTrip(db: Database.Database, config: Config, store: SnapshotStore, target: Database.Database, targetPath: string) {
  const saved = await saveSnapshot(db, { config, store, logger: silentLogger });
  const manifest = await fetchLatestManifest(store);
  assert.deepEqual(manifest, saved);
  const file = await downloadSnapshot(store, manifest!, configFor(targetPath), { dir: join(targetPath, "..") });
  try {
    return { saved, result: restoreSnapshot(target, file, { config: configFor(targetPath), logger: silentLogger }) };
  } finally {
    execFileSync("rm", ["-f", file]);
  }
}

describe("snapshot into the file store", () => {
  it("saves a consistent copy and restores it into an empty database with the same schema and rows", async () => {
    const source = sourceDatabase();
    const folder = join(tempDir(), "snapshots");
    const config = configFor(source.path, { store: "file", file: { path: folder } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const targetPath = join(tempDir(), "empty.sqlite");
    const target = openDatabase(targetPath, silentLogger);
    const metrics = new Metrics();
    const saved = await saveSnapshot(source.db, { config, store, logger: silentLogger, metrics });
    assert.equal(saved.streams[STREAM], 42);
    assert.equal(saved.shards, 1);
    assert.equal(saved.size, statSync(join(folder, saved.object)).size);
    assert.equal(metrics.snapshotSizeBytes.get(), saved.size);
    assert.match(saved.object, /^snapshot-\d{8}T\d{6}Z-[0-9a-f]{6}\.db$/);
    // The object is a plain SQLite file without marmot's objects, but with its own facts.
    const inside = sqlite3(join(folder, saved.object), "SELECT name FROM sqlite_master WHERE name LIKE '\\_\\_marmot%' ESCAPE '\\'").trim();
    assert.equal(inside, "__marmot__snapshot");

    const file = await downloadSnapshot(store, saved, configFor(targetPath), { dir: tempDir() });
    const result = restoreSnapshot(target, file, { config: configFor(targetPath), logger: silentLogger, metrics });
    // the schema stream too: 0, the file never applied a schema message
    assert.deepEqual(result.streams, { [STREAM]: 42, "marmot-changes-schema": 0 });
    assert.equal(result.tables, userTables(source.path).length);
    // The restored schema is the state schema changes are told from: the node sends none for the restore itself.
    const recorded = sqlite3(targetPath, "SELECT type || ' ' || name FROM __marmot__schema ORDER BY 1");
    assert.ok(
      userTables(source.path).every((t) => recorded.split("\n").includes(`table ${t}`)),
      recorded,
    );
    assert.equal(sqlite3(targetPath, "SELECT count(*) FROM __marmot__schema_outbox"), "0\n");
    assert.equal(metrics.snapshotRestores.get(), 1);
    assertSameUserData(source.path, targetPath);
    // Values come back with their exact storage class.
    assert.equal(
      sqlite3(targetPath, "SELECT id, typeof(big), big, typeof(r), quote(r), typeof(b), hex(b), typeof(n) FROM kinds ORDER BY id"),
      sqlite3(source.path, "SELECT id, typeof(big), big, typeof(r), quote(r), typeof(b), hex(b), typeof(n) FROM kinds ORDER BY id"),
    );
    assert.equal(sqlite3(targetPath, "SELECT rowid, a, b FROM nokey ORDER BY rowid"), "2|y|2\n3|z|3\n");
    assert.equal(sqlite3(targetPath, "SELECT a, b FROM gen"), "21|42\n");
    // The restored node applies from the snapshot's sequence, and captures the app's writes to restored tables.
    assert.equal(
      target
        .prepare(`SELECT seq FROM ${quoteIdent(APPLIED_TABLE)} WHERE stream = ?`)
        .pluck()
        .get(STREAM),
      42n,
    );
    sqlite3(targetPath, "INSERT INTO composite VALUES ('new', 9, 1.0); INSERT INTO nokey VALUES ('w', 4)");
    assert.equal(logRows(target, "composite").length, 1);
    assert.equal(logRows(target, "nokey").length, 1);
    // The source keeps running: its capture and rows are untouched by the save.
    assert.equal(logRows(source.db, "kinds").length, 0);
    source.db.close();
    target.close();
  });

  it("keeps the previous data object and removes older ones; a failed upload replaces nothing", async () => {
    const source = sourceDatabase();
    const folder = join(tempDir(), "snapshots");
    const config = configFor(source.path, { store: "file", file: { path: folder } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const first = await saveSnapshot(source.db, { config, store, logger: silentLogger });
    const second = await saveSnapshot(source.db, { config, store, logger: silentLogger });
    assert.equal(second.previous, first.object);
    const third = await saveSnapshot(source.db, { config, store, logger: silentLogger });
    const objects = readdirSync(folder).sort();
    assert.deepEqual(objects, [MANIFEST_NAME, second.object, third.object].sort());

    const aborted = new AbortController();
    await assert.rejects(
      saveSnapshot(source.db, {
        config,
        store,
        logger: silentLogger,
        signal: aborted.signal,
        onProgress: (p) => {
          if (p.bytes > 0) aborted.abort(new Error("stopped by the test"));
        },
      }),
    );
    assert.deepEqual(await fetchLatestManifest(store), third);
    assert.deepEqual(readdirSync(folder).sort(), [MANIFEST_NAME, second.object, third.object].sort());
    // No temporary copy is left beside the database; one a crashed run left long ago goes at the next save.
    assert.deepEqual(
      readdirSync(join(source.path, "..")).filter((n) => n.includes(".tmp")),
      [],
    );
    const abandoned = join(source.path, "..", ".chinook.sqlite.snapshot-0badc0de.tmp");
    const recent = join(source.path, "..", ".chinook.sqlite.download-0badf00d.tmp");
    writeFileSync(abandoned, "half a copy");
    writeFileSync(recent, "a download in progress");
    utimesSync(abandoned, new Date(Date.now() - 7 * 3600_000), new Date(Date.now() - 7 * 3600_000));
    await saveSnapshot(source.db, { config, store, logger: silentLogger });
    assert.deepEqual(
      readdirSync(join(source.path, "..")).filter((n) => n.includes(".tmp")),
      [".chinook.sqlite.download-0badf00d.tmp"],
    );
    source.db.close();
  });
});

describe("snapshot into a NATS object store", () => {
  let server: TestNatsServer;
  let nc: NatsConnection;
  before(async () => {
    server = await startNatsServer();
    nc = await connect({ servers: server.url });
  });
  after(async () => {
    await nc?.close();
    await server?.stop();
  });

  it("round-trips into a database that had another schema, and a failed put leaves the previous object readable", async () => {
    const source = sourceDatabase();
    const config = configFor(source.path);
    const store = openSnapshotStore(config, { nc, logger: silentLogger });
    assert.equal(store.description, "NATS object store marmot-changes-snapshot-store");
    const targetPath = createDb(
      join(tempDir(), "other.sqlite"),
      "CREATE TABLE kinds (x TEXT); INSERT INTO kinds VALUES ('old');" +
        "CREATE TABLE unrelated (y); INSERT INTO unrelated VALUES (1);" +
        "CREATE VIEW old_view AS SELECT * FROM unrelated; CREATE INDEX unrelated_y ON unrelated (y);" +
        "CREATE TABLE Album (AlbumId INTEGER PRIMARY KEY, Title TEXT); INSERT INTO Album VALUES (999, 'not in the snapshot');",
    );
    const target = openDatabase(targetPath, silentLogger);
    installCapture(target, silentLogger);
    const { saved } = await roundTrip(source.db, config, store, target, targetPath);
    assertSameUserData(source.path, targetPath);
    assert.equal(sqlite3(targetPath, "SELECT count(*) FROM sqlite_master WHERE name IN ('unrelated', 'old_view')"), "0\n");

    // A put that fails half-way: the object of that name stays the previous one, whole.
    const other = join(tempDir(), "other.bin");
    writeFileSync(other, Buffer.alloc(2 * 1024 * 1024, 7));
    const abort = new AbortController();
    await assert.rejects(
      store.upload(saved.object, other, {
        signal: abort.signal,
        onProgress: (p) => {
          if (p.bytes >= 512 * 1024) abort.abort(new Error("stopped by the test"));
        },
      }),
    );
    const file = await downloadSnapshot(store, saved, config, { dir: tempDir() });
    assert.equal(statSync(file).size, saved.size);
    source.db.close();
    target.close();
  });
});

describe("snapshot stores that cannot be used", () => {
  it("a NATS server without JetStream is a SnapshotStoreError saying what is missing", async () => {
    const server = await startNatsServer({ jetstream: false });
    const nc = await connect({ servers: server.url });
    try {
      const store = openSnapshotStore(configFor("/nonexistent/db"), { nc, logger: silentLogger });
      await assert.rejects(store.readSmall(MANIFEST_NAME), (err: Error) => {
        assert.ok(err instanceof SnapshotStoreError, String(err));
        assert.match(err.message, /marmot-changes-snapshot-store/);
        assert.match(err.message, /JetStream/);
        return true;
      });
    } finally {
      await nc.close();
      await server.stop();
    }
  });

  it("a virtual table in the snapshot is left out with a warning; the other tables restore", async () => {
    const source = sourceDatabase();
    sqlite3(source.path, "CREATE VIRTUAL TABLE docs USING fts5(title, body); INSERT INTO docs VALUES ('marmots', 'burrowing rodents');");
    const config = configFor(source.path, { store: "file", file: { path: join(tempDir(), "store") } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const saved = await saveSnapshot(source.db, { config, store, logger: silentLogger });
    const targetPath = join(tempDir(), "target.sqlite");
    const target = openDatabase(targetPath, silentLogger);
    const file = await downloadSnapshot(store, saved, configFor(targetPath), { dir: tempDir() });
    const lines = recordingLogger();
    restoreSnapshot(target, file, { config: configFor(targetPath), logger: lines });
    assert.ok(lines.lines.some((l) => l.level === "warn" && /virtual table/.test(l.message) && l.fields?.table === "docs"));
    for (const table of ["Album", "kinds", "nokey", "composite", "auto"]) assert.equal(tableDiff(source.path, targetPath, table), "", table);
    source.db.close();
    target.close();
  });
});

describe("snapshot files of another page size or journal mode", () => {
  it("restore into a database of another page size, from a file left in WAL mode", async () => {
    const dir = tempDir();
    const sourcePath = createDb(join(dir, "large-pages.sqlite"), `PRAGMA page_size = 65536; ${OWN_TABLES}`);
    const source = openDatabase(sourcePath, silentLogger);
    installCapture(source, silentLogger);
    const config = configFor(sourcePath, { store: "file", file: { path: join(dir, "store") } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const saved = await saveSnapshot(source, { config, store, logger: silentLogger });
    source.close();
    const file = join(dir, "snapshot-in-wal.db");
    execFileSync("cp", [join(dir, "store", saved.object), file]);
    assert.equal(sqlite3(file, "PRAGMA page_size; PRAGMA journal_mode = WAL;"), "65536\nwal\n");
    const targetPath = createDb(join(dir, "small-pages.sqlite"), "PRAGMA page_size = 1024; CREATE TABLE kinds (x);");
    const target = openDatabase(targetPath, silentLogger);
    restoreSnapshot(target, file, { config: configFor(targetPath), logger: silentLogger });
    target.close();
    assert.equal(sqlite3(targetPath, "PRAGMA page_size"), "1024\n");
    for (const table of ["kinds", "nokey", "composite", "auto", "gen"]) assert.equal(tableDiff(sourcePath, targetPath, table), "", table);
    assert.equal(userSchema(targetPath), userSchema(sourcePath));
  });
});

describe("restore while an app reads and writes the database", () => {
  it("the app sees the state before or after, gets no error but busy, and its writes after the commit are captured", async () => {
    const dir = tempDir();
    // The snapshot: the same tables as the app's database, more rows in big.
    const snapshotSource = createDb(
      join(dir, "source.sqlite"),
      "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);" +
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) INSERT INTO accounts SELECT i, 100 FROM n;" +
        "CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT);" +
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) INSERT INTO big SELECT i, printf('%0100d', i) FROM n;" +
        "CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT);",
    );
    const source = openDatabase(snapshotSource, silentLogger);
    installCapture(source, silentLogger);
    const config = configFor(snapshotSource, { store: "file", file: { path: join(dir, "store") } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const saved = await saveSnapshot(source, { config, store, logger: silentLogger });
    source.close();

    const appPath = createDb(
      join(dir, "app.sqlite"),
      "PRAGMA journal_mode = WAL;" +
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);" +
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) INSERT INTO accounts SELECT i, 100 FROM n;" +
        "CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT);" +
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) INSERT INTO big SELECT i, 'x' FROM n;" +
        "CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT);",
    );
    const target = openDatabase(appPath, silentLogger);
    installCapture(target, silentLogger);
    const file = await downloadSnapshot(store, saved, configFor(appPath), { dir });

    const stopFile = join(dir, "stop");
    const app = spawnTracked(
      process.execPath,
      [fileURLToPath(new URL("../helpers/ledger-app.js", import.meta.url)), appPath, stopFile, "1000,200000"],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let output = "";
    app.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    app.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    await waitFor(
      () => output.includes("ready"),
      30_000,
      () => `the app did not start: ${output}`,
    );
    // Some loops before the restore, so that its writes to the captured tables are pending in the change logs.
    await waitFor(
      () => logRows(target, "events").length >= 20,
      30_000,
      () => "the app made no writes",
    );
    const pendingBefore = logRows(target, "events").length;

    const result = restoreSnapshot(target, file, { config: configFor(appPath), logger: silentLogger });
    assert.equal(result.rows, 200010);
    await waitFor(
      () => output.includes("restored"),
      30_000,
      () => `the app never saw the restored state: ${output}`,
    );
    await waitFor(
      () => logRows(target, "events").length >= pendingBefore + 20,
      30_000,
      () => "the app stopped writing",
    );
    writeFileSync(stopFile, "");
    assert.ok(await waitForExit(app.pid!, 30_000), "the app did not stop");
    const summary = JSON.parse(output.trim().split("\n").at(-1)!) as {
      loops: number;
      busy: number;
      errors: string[];
      torn: string[];
      notesAfterRestore: string[];
    };
    assert.deepEqual(summary.errors, []);
    assert.deepEqual(summary.torn, []);
    assert.ok(summary.notesAfterRestore.length > 0);
    // Every write the app made after the restore committed is in the change log (its key), waiting to be published.
    const logged = new Set(
      target
        .prepare("SELECT note FROM events WHERE id IN (SELECT v_id FROM __marmot__events_change_log WHERE __marmot_op = 'upsert')")
        .pluck(true)
        .all() as string[],
    );
    const missing = summary.notesAfterRestore.filter((note) => !logged.has(note));
    assert.deepEqual(missing, []);
    // The writes from before the restore were the app's own pending changes: they survive it too.
    assert.ok(logged.size >= pendingBefore);
    assert.equal(sqlite3(appPath, "SELECT sum(balance) FROM accounts"), "1000\n");
    target.close();
  });
});

describe("the app's own triggers in a snapshot", () => {
  it("are saved with the app's text, not marmot's guard, and guarded again once restored", async () => {
    const source = sourceDatabase();
    const trigger = "CREATE TRIGGER kinds_audit /* the app's */ AFTER UPDATE ON kinds WHEN NEW.t <> OLD.t BEGIN UPDATE auto SET v = 'changed'; END";
    sqlite3(source.path, `${trigger};`);
    installCapture(source.db, silentLogger);
    const triggerSql = (path: string) => sqlite3(path, "SELECT sql FROM sqlite_master WHERE name = 'kinds_audit'").trim();
    assert.match(triggerSql(source.path), /__marmot__applying/, "guarded while marmot manages the file");
    const folder = join(tempDir(), "snapshots");
    const config = configFor(source.path, { store: "file", file: { path: folder } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const saved = await saveSnapshot(source.db, { config, store, logger: silentLogger });
    assert.equal(triggerSql(join(folder, saved.object)), trigger);

    const targetPath = join(tempDir(), "empty.sqlite");
    const target = openDatabase(targetPath, silentLogger);
    const file = await downloadSnapshot(store, saved, configFor(targetPath), { dir: tempDir() });
    restoreSnapshot(target, file, { config: configFor(targetPath), logger: silentLogger });
    assert.match(triggerSql(targetPath), /__marmot__applying/, "guarded on the node that restored it");
    removeCapture(target, silentLogger);
    assert.equal(triggerSql(targetPath), trigger);
    source.db.close();
    target.close();
  });
});

describe("this node's own pending changes", () => {
  it("are on the restored tables and still in the change log after the restore", async () => {
    const source = sourceDatabase();
    const config = configFor(source.path, { store: "file", file: { path: join(tempDir(), "store") } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const targetPath = createDb(join(tempDir(), "node.sqlite"), OWN_TABLES);
    const target = openDatabase(targetPath, silentLogger);
    installCapture(target, silentLogger);
    // The app writes while the node is away: these never reached the streams.
    await sqlite3Async(
      targetPath,
      "UPDATE kinds SET t = 'written here' WHERE id = 1; UPDATE kinds SET t = 'newest' WHERE id = 1;" +
        "INSERT INTO kinds (id, big, t) VALUES (100, 123456789012345678, 'new here'); DELETE FROM kinds WHERE id = 2;" +
        "INSERT INTO composite VALUES ('here', 5, 9.5); INSERT INTO nokey VALUES ('local', 10);",
    );
    const kindsLog = logRows(target, "kinds");
    const nokeyLog = logRows(target, "nokey");
    assert.equal(kindsLog.length, 4);
    // The snapshot holds different rows: the source changed row 1 and 2 and row 4 after these tables were made.
    sqlite3(source.path, "UPDATE kinds SET t = 'from the cluster', r = 2.5 WHERE id IN (1, 2, 4)");
    await roundTrip(source.db, config, store, target, targetPath);
    assert.equal(sqlite3(targetPath, "SELECT t, r FROM kinds WHERE id = 1"), "newest|1.5\n");
    assert.equal(sqlite3(targetPath, "SELECT big, t FROM kinds WHERE id = 100"), "123456789012345678|new here\n");
    assert.equal(sqlite3(targetPath, "SELECT count(*) FROM kinds WHERE id = 2"), "0\n");
    assert.equal(sqlite3(targetPath, "SELECT t, r FROM kinds WHERE id = 4"), "from the cluster|2.5\n");
    assert.equal(sqlite3(targetPath, "SELECT v FROM composite WHERE a = 'here' AND b = 5"), "9.5\n");
    const nokeyRowid = nokeyLog[0]!.__marmot_rowid as bigint;
    assert.equal(sqlite3(targetPath, `SELECT a, b FROM nokey WHERE rowid = ${nokeyRowid}`), "local|10\n");
    assert.deepEqual(logRows(target, "kinds"), kindsLog);
    assert.deepEqual(logRows(target, "nokey"), nokeyLog);
    source.db.close();
    target.close();
  });
});

describe("bad snapshots are refused and change nothing", () => {
  async function savedInFolder() {
    const source = sourceDatabase();
    const folder = join(tempDir(), "store");
    const config = configFor(source.path, { store: "file", file: { path: folder } });
    const store = openSnapshotStore(config, { logger: silentLogger });
    const manifest = await saveSnapshot(source.db, { config, store, logger: silentLogger });
    source.db.close();
    return { config, store, manifest, object: join(folder, manifest.object), folder };
  }

  it("a corrupted or truncated object names the store and the object and leaves no file", async () => {
    const { config, store, manifest, object, folder } = await savedInFolder();
    const dir = tempDir();
    const bytes = readFileSync(object);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    writeFileSync(object, bytes);
    await assert.rejects(downloadSnapshot(store, manifest, config, { dir }), (err: Error) => {
      assert.ok(err instanceof SnapshotInvalidError);
      assert.match(err.message, /checksum/);
      assert.ok(err.message.includes(manifest.object) && err.message.includes(folder), err.message);
      return true;
    });
    truncateSync(object, manifest.size - 4096);
    await assert.rejects(downloadSnapshot(store, manifest, config, { dir }), /truncated/);
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a snapshot made for another stream_prefix or shard count is refused, saying which setting differs", async () => {
    const { config, store, manifest } = await savedInFolder();
    const otherPrefix = structuredClone(config);
    otherPrefix.nats.streamPrefix = "elsewhere";
    await assert.rejects(downloadSnapshot(store, manifest, otherPrefix, { dir: tempDir() }), /stream_prefix/);
    const otherShards = structuredClone(config);
    otherShards.replicationLog.shards = 4;
    await assert.rejects(downloadSnapshot(store, manifest, otherShards, { dir: tempDir() }), /shards/);
  });

  it("a missing manifest is null; a damaged one is a clear error", async () => {
    const folder = join(tempDir(), "empty-store");
    const store = openSnapshotStore(configFor("/nonexistent/db", { store: "file", file: { path: folder } }), { logger: silentLogger });
    assert.equal(await fetchLatestManifest(store), null);
    await store.writeSmall(MANIFEST_NAME, new TextEncoder().encode("{ not json"));
    await assert.rejects(fetchLatestManifest(store), (err: Error) => err instanceof SnapshotInvalidError && /latest\.json/.test(err.message));
    await store.writeSmall(MANIFEST_NAME, new TextEncoder().encode('{"format": 1}'));
    await assert.rejects(fetchLatestManifest(store), /has no text field "object"/);
  });

  it("a full disk during the restore rolls it back: the database is untouched", async (t) => {
    const mountPoint = tempDir();
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mountPoint], { stdio: "ignore" });
    } catch {
      t.skip("cannot mount a tmpfs here (needs root)");
      return;
    }
    try {
      const dir = tempDir();
      const big = createDb(
        join(dir, "big.sqlite"),
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);" +
          "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 800) INSERT INTO blobs SELECT i, randomblob(8000) FROM n;",
      );
      const source = openDatabase(big, silentLogger);
      const config = configFor(big, { store: "file", file: { path: join(dir, "store") } });
      const store = openSnapshotStore(config, { logger: silentLogger });
      const manifest = await saveSnapshot(source, { config, store, logger: silentLogger });
      source.close();
      const file = await downloadSnapshot(store, manifest, config, { dir });

      const targetPath = createDb(
        join(mountPoint, "small.sqlite"),
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB); INSERT INTO blobs VALUES (1, x'01');",
      );
      const target = openDatabase(targetPath, silentLogger);
      try {
        installCapture(target, silentLogger);
        const before = sqlite3(targetPath, ".dump");
        assert.throws(
          () => restoreSnapshot(target, file, { config: configFor(targetPath), logger: silentLogger }),
          (err: Error) => {
            assert.match(String((err as { code?: string }).code), /SQLITE_FULL/);
            return true;
          },
        );
        assert.equal(sqlite3(targetPath, ".dump"), before);
        // The same connection goes on working: the restore left no transaction or attached file behind.
        sqlite3(targetPath, "INSERT INTO blobs VALUES (2, x'02')");
        assert.equal(target.prepare("SELECT count(*) FROM blobs").pluck().get(), 2n);
      } finally {
        target.close();
      }
    } finally {
      // Lazily: a process that still has a file open there must not leave the mount behind.
      execFileSync("umount", ["-l", mountPoint]);
    }
  });
});
