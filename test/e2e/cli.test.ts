// The marmot command as a user runs it: flags, config and database errors, refusals, and -cleanup on a real database.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { loadConfig } from "../../src/config/load.js";
import { silentLogger } from "../../src/log.js";
import { downloadSnapshot } from "../../src/snapshot/download.js";
import { fetchLatestManifest } from "../../src/snapshot/manifest.js";
import { openSnapshotStore } from "../../src/snapshot/open-store.js";
import { restoreSnapshot } from "../../src/snapshot/restore.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { MarmotProcess, repoRoot, runMarmotCommand, tableDiff, TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { freePorts } from "../helpers/ports.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { copyFixture, createDb, sqldiff, sqlite3, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();

function sha1(path: string): string {
  return createHash("sha1").update(readFileSync(path)).digest("hex");
}

function marmotObjects(db: string): string {
  return sqlite3(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_\\_marmot%' ESCAPE '\\'").trim();
}

describe("marmot on the command line", () => {
  let server: TestNatsServer;
  let nextPrefix = 0;

  before(async () => {
    server = await startNatsServer();
  });
  after(async () => {
    await server?.stop();
  });

  /** A config for `dbPath` on the test's nats-server, with streams of its own so tests do not see each other. */
  function config(dir: string, dbPath: string, extra = ""): string {
    const prefix = `cli${++nextPrefix}`;
    const path = join(dir, "marmot.toml");
    writeFileSync(
      path,
      [
        `db_path = ${JSON.stringify(dbPath)}`,
        "node_id = 1",
        extra,
        "[nats]",
        `urls = [${JSON.stringify(server.url)}]`,
        `stream_prefix = "${prefix}"`,
        `subject_prefix = "${prefix}-log"`,
        "",
      ].join("\n"),
    );
    return path;
  }

  function runningMarmot(dir: string, dbPath: string, configPath: string): MarmotProcess {
    return new MarmotProcess({
      id: 1,
      dbPath,
      configPath,
      storeDir: join(dir, "no-embedded-server"),
      logPath: join(dir, "marmot.log"),
      args: ["-config", configPath],
    });
  }

  test("-help and --help print the usage and exit 0", async () => {
    for (const flag of ["-help", "--help", "-h"]) {
      const run = await runMarmotCommand([flag]);
      assert.equal(run.code, 0, flag);
      assert.match(run.stdout, /^Usage: marmot -config FILE/, flag);
      for (const listed of ["-config", "-cleanup", "-save-snapshot", "-cluster-addr", "-cluster-peers", "-leaf-servers"]) {
        assert.ok(run.stdout.includes(listed), `${flag} lists ${listed}`);
      }
    }
  });

  test("-version prints the version and exits 0", async () => {
    const version = (JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { version: string }).version;
    for (const flag of ["-version", "--version"]) {
      const run = await runMarmotCommand([flag]);
      assert.equal(run.code, 0);
      assert.equal(run.stdout.trim(), `marmot ${version}`);
    }
  });

  test("an unknown flag is refused with a hint", async () => {
    const run = await runMarmotCommand(["-confg", "x.toml"]);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /unknown flag -confg.*marmot -help/);
  });

  test("a -config path that does not exist exits non-zero naming it", async () => {
    const missing = join(tempDir(), "nowhere", "marmot.toml");
    const run = await runMarmotCommand(["-config", missing]);
    assert.notEqual(run.code, 0);
    assert.ok(run.stderr.includes(missing), run.stderr);
    assert.match(run.stderr, /does not exist/);
  });

  test("shards = 0 exits non-zero naming replication_log.shards and leaves the database untouched", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');");
    const hash = sha1(db);
    const cfg = config(dir, db, "[replication_log]\nshards = 0\n");
    const run = await runMarmotCommand(["-config", cfg]);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /replication_log\.shards must be an integer from 1 to 1024, got 0/);
    assert.ok(run.stderr.includes(cfg), "the message names the config file");
    assert.equal(sha1(db), hash, "not a byte of the database changed");
    assert.equal(marmotObjects(db), "0");
    assert.equal(sqlite3(db, "PRAGMA journal_mode").trim(), "delete");
    assert.equal(existsSync(`${db}-wal`), false);
  });

  test("a TOML syntax error names the file, line and column", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY);");
    const cfg = join(dir, "broken.toml");
    writeFileSync(cfg, `db_path = ${JSON.stringify(db)}\nnode_id = 1\nscan_max_changes = = 5\n`);
    const run = await runMarmotCommand(["-config", cfg]);
    assert.notEqual(run.code, 0);
    assert.ok(run.stderr.includes(`${cfg}:3:20:`), run.stderr);
    assert.equal(marmotObjects(db), "0");
  });

  test("a db_path that is missing, a directory or a text file is a clear error", async () => {
    const dir = tempDir();
    const missing = join(dir, "missing.db");
    const directory = join(dir, "a-directory");
    mkdirSync(directory);
    const text = join(dir, "notes.txt");
    writeFileSync(text, "these are my notes, not a database\n".repeat(20));
    const cases: [string, RegExp][] = [
      [missing, /does not exist/],
      [directory, /is a directory/],
      [text, /is not a SQLite database/],
    ];
    for (const [dbPath, reason] of cases) {
      const run = await runMarmotCommand(["-config", config(dir, dbPath)]);
      assert.notEqual(run.code, 0, dbPath);
      assert.ok(run.stderr.includes(`db_path ${dbPath}`), run.stderr);
      assert.match(run.stderr, reason);
    }
    assert.equal(existsSync(missing), false, "marmot did not create the missing database");
    assert.equal(readFileSync(text, "utf8"), "these are my notes, not a database\n".repeat(20));
  });

  test("an unknown key is a warning and marmot still runs", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    const marmot = runningMarmot(dir, db, config(dir, db, "mystery_setting = 42\n"));
    marmot.start();
    try {
      await marmot.waitRunning();
      assert.match(marmot.output, /WARN.*mystery_setting/);
    } finally {
      assert.equal(await marmot.stop(), 0);
    }
  });

  test("SIGTERM the moment marmot says it is running stops it cleanly, every time", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    for (let round = 1; round <= 10; round++) {
      // Streams of its own each round: marmot's start is then busiest (creating the stream and the consumer).
      const marmot = runningMarmot(dir, db, config(dir, db));
      marmot.start();
      try {
        await marmot.waitRunning();
      } finally {
        assert.equal(await marmot.stop(), 0, `round ${round}: marmot exits 0 after SIGTERM`);
      }
      assert.match(marmot.output, /INFO\s+stopped/, `round ${round}`);
    }
  });

  test("SIGTERM while marmot still waits for NATS stops it cleanly, and leaves no nats-server behind", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    // An external server that is not there, and an embedded one whose cluster peers are not there (an R3 stream
    // cannot be placed): both waits go on until the signal.
    const [nobody, clusterPort, peerA, peerB] = await freePorts(4);
    const external = readFileSync(config(dir, db), "utf8").replace(JSON.stringify(server.url), JSON.stringify(`nats://127.0.0.1:${nobody}`));
    writeFileSync(join(dir, "external.toml"), external);
    writeFileSync(
      join(dir, "embedded.toml"),
      `db_path = ${JSON.stringify(db)}\nnode_id = 1\n[replication_log]\nreplicas = 3\n[nats]\nbind_address = "127.0.0.1:-1"\n`,
    );
    const cases: [string, string[], RegExp][] = [
      ["external", ["-config", join(dir, "external.toml")], /waiting for NATS/],
      [
        "embedded",
        [
          "-config",
          join(dir, "embedded.toml"),
          "-cluster-addr",
          `127.0.0.1:${clusterPort}`,
          "-cluster-peers",
          `nats://127.0.0.1:${peerA}/,nats://127.0.0.1:${peerB}/`,
        ],
        /waiting for JetStream/,
      ],
    ];
    for (const [name, args, waiting] of cases) {
      const marmot = new MarmotProcess({
        id: 1,
        dbPath: db,
        configPath: args[1]!,
        storeDir: join(dir, `marmot-nats-1`),
        logPath: join(dir, `${name}.log`),
        args,
      });
      marmot.start();
      try {
        await marmot.waitForLog(waiting, 60_000);
      } finally {
        assert.equal(await marmot.stop(), 0, `${name}: marmot exits 0 after SIGTERM:\n${marmot.tail()}`);
      }
      // (stop() also fails when marmot left its nats-server running)
      assert.match(marmot.output, /INFO\s+stopped/, name);
    }
  });

  test("a user table with marmot's reserved prefix is refused by name", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE __marmot_users (id INTEGER PRIMARY KEY); CREATE TABLE t (id INTEGER PRIMARY KEY);");
    const run = await runMarmotCommand(["-config", config(dir, db)]);
    assert.notEqual(run.code, 0);
    const output = run.stdout + run.stderr;
    assert.match(output, /table "__marmot_users" uses marmot's reserved prefix/);
    assert.match(output, /rename it/);
    assert.equal(sqlite3(db, "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master ORDER BY name)").trim(), "__marmot_users,t");
  });

  test("-save-snapshot into the file store exits 0, says what, where and how large, and the object restores", async () => {
    const dir = tempDir();
    const db = copyFixture("chinook", dir);
    sqlite3(db, "CREATE TABLE wide (id INTEGER PRIMARY KEY, big INTEGER, b BLOB); INSERT INTO wide VALUES (1, 9223372036854775807, x'00ff');");
    const folder = join(dir, "snapshots");
    const configPath = config(dir, db, `[snapshot]\nstore = "file"\n[snapshot.file]\npath = ${JSON.stringify(folder)}\n`);
    const run = await runMarmotCommand(["-config", configPath, "-save-snapshot"]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    const match = /saved snapshot (snapshot-\S+\.db) to folder (\S+): [\d.]+ [KMG]iB \((\d+) bytes\), (\d+) tables/.exec(run.stdout);
    assert.ok(match, run.stdout);
    assert.equal(match[2], `${folder}`);
    assert.equal(Number(match[3]), statSync(join(folder, match[1]!)).size);
    assert.equal(Number(match[4]), 12);

    const target = join(tempDir(), "restored.db");
    const loaded = loadConfig(configPath).config;
    loaded.dbPath = target;
    const store = openSnapshotStore(loaded, { logger: silentLogger });
    const manifest = await fetchLatestManifest(store);
    assert.equal(manifest?.object, match[1]);
    const file = await downloadSnapshot(store, manifest!, loaded, { dir: join(target, "..") });
    const targetDb = openDatabase(target, silentLogger);
    try {
      restoreSnapshot(targetDb, file, { config: loaded, logger: silentLogger });
    } finally {
      targetDb.close();
    }
    for (const table of ["Album", "Artist", "Invoice", "InvoiceLine", "Track", "wide"]) assert.equal(tableDiff(db, target, table), "", table);
  });

  test("-save-snapshot with the embedded server refuses while the node's marmot runs, and saves once it stopped", async () => {
    const dir = tempDir();
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one');");
    const configPath = join(dir, "embedded.toml");
    writeFileSync(configPath, `db_path = ${JSON.stringify(db)}\nnode_id = 7\n`);
    const node = new MarmotProcess({
      id: 7,
      dbPath: db,
      configPath,
      storeDir: join(dir, "marmot-nats-7"),
      logPath: join(dir, "marmot.log"),
      args: ["-config", configPath],
    });
    node.start();
    try {
      await node.waitForLog(/marmot is running/);
      const refused = await runMarmotCommand(["-config", configPath, "-save-snapshot"]);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stdout + refused.stderr, /embedded nats-server of node 7 is running \(pid \d+/);
      assert.ok(node.running, "the refused command must leave the running node alone");
    } finally {
      await node.stop();
    }
    const run = await runMarmotCommand(["-config", configPath, "-save-snapshot"], 120_000);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(
      run.stdout,
      /saved snapshot snapshot-\S+\.db to NATS object store marmot-changes-snapshot-store: .* 1 tables, streams marmot-changes-1-1@\d+/,
    );
  });

  test("an FTS5 table beside normal tables is skipped with a note, and the normal tables replicate", async () => {
    const cluster = await TestCluster.create({
      natsUrls: [server.url],
      size: 2,
      schema: `
        CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
        CREATE VIRTUAL TABLE docs USING fts5(title, body);
        INSERT INTO docs VALUES ('marmots', 'burrowing rodents');
      `,
      toml: 'stream_prefix = "fts"\nsubject_prefix = "fts-log"\n',
    });
    try {
      await cluster.startAll();
      for (const node of cluster.nodes) assert.match(node.output, /not capturing table "docs": virtual table \(fts5\)/);
      sqlite3(
        cluster.node(1).spec.dbPath,
        "INSERT INTO Books VALUES (1, 'On Marmots'), (2, 'Alpine Life'); INSERT INTO docs VALUES ('alps', 'snow and marmots');",
      );
      sqlite3(cluster.node(2).spec.dbPath, "INSERT INTO Books VALUES (3, 'Burrows');");
      await cluster.waitConverged(["Books"]);
      for (const out of cluster.query("SELECT group_concat(id) FROM Books")) assert.equal(out.trim(), "1,2,3");
      // The FTS table still works for the app on node 1.
      assert.equal(sqlite3(cluster.node(1).spec.dbPath, "SELECT title FROM docs WHERE docs MATCH 'marmots' ORDER BY title").trim(), "alps\nmarmots");
      for (const node of cluster.nodes) assert.ok(node.running);
    } finally {
      await cluster.stopAll();
    }
  });

  test("-cleanup after marmot ran and the app wrote leaves the chinook database as the same writes leave a pristine copy", async () => {
    const pristine = copyFixture("chinook", tempDir());
    const dir = tempDir();
    const db = copyFixture("chinook", dir);
    const writes = `
      INSERT INTO Artist (ArtistId, Name) VALUES (1000, 'The Marmots');
      INSERT INTO Album VALUES (1000, 'Burrows', 1000);
      UPDATE Track SET UnitPrice = 1.29, Name = Name || ' (remastered)' WHERE GenreId = 1 AND TrackId % 7 = 0;
      DELETE FROM PlaylistTrack WHERE PlaylistId = 1 AND TrackId < 100;
      INSERT INTO PlaylistTrack VALUES (2, 1);
      UPDATE Customer SET Email = 'o''brien@example.com' WHERE CustomerId = 5;
      UPDATE Genre SET GenreId = 100 WHERE GenreId = 25;
      DELETE FROM InvoiceLine WHERE InvoiceId = 1;
    `;
    const cfg = config(dir, db);
    const prefix = `cli${nextPrefix}`;
    const marmot = runningMarmot(dir, db, cfg);
    marmot.start();
    try {
      await marmot.waitRunning();
      sqlite3(db, writes);
      // marmot ships the writes and applies them back to this same file; wait until it has done both.
      const nc = await connect({ servers: server.url });
      try {
        const jsm = await jetstreamManager(nc);
        await waitFor(
          async () => {
            const pending = sqlite3(db, "SELECT group_concat(name) FROM sqlite_master WHERE name LIKE '%change_log'").trim().split(",");
            const counts = pending.map((t) => Number(sqlite3(db, `SELECT count(*) FROM "${t}" WHERE __marmot_op <> 'marker'`).trim()));
            const last = (await jsm.streams.info(`${prefix}-1-1`)).state.last_seq;
            const applied = Number(sqlite3(db, "SELECT coalesce(max(seq), 0) FROM __marmot__applied").trim());
            return counts.every((c) => c === 0) && last > 0 && applied === last;
          },
          60_000,
          () => `marmot to ship and apply the app's writes:\n${marmot.tail()}`,
        );
      } finally {
        await nc.close();
      }
    } finally {
      assert.equal(await marmot.stop(), 0);
    }
    sqlite3(pristine, writes);

    const run = await runMarmotCommand(["-config", cfg, "-cleanup"]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.equal(marmotObjects(db), "0");
    assert.equal(sqldiff(pristine, db), "");
    const schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name";
    assert.equal(sqlite3(db, schema), sqlite3(pristine, schema), "the schema is the pristine one, sqlite_sequence included");
    assert.equal(
      sqlite3(db, "SELECT count(*) FROM Track WHERE Name LIKE '% (remastered)'").trim(),
      sqlite3(pristine, "SELECT count(*) FROM Track WHERE Name LIKE '% (remastered)'").trim(),
    );
  });
});
