// `marmot -save-snapshot` into the S3, WebDAV and SFTP stores on real servers, and the snapshot restores from there.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadConfig } from "../../src/config/load.js";
import { silentLogger } from "../../src/log.js";
import { downloadSnapshot } from "../../src/snapshot/download.js";
import { fetchLatestManifest } from "../../src/snapshot/manifest.js";
import { openSnapshotStore } from "../../src/snapshot/open-store.js";
import { restoreSnapshot } from "../../src/snapshot/restore.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { runMarmotCommand, tableDiff } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { copyFixture, sqlite3, tempDir } from "../helpers/sqlite.js";
import {
  S3RVER_ACCESS_KEY,
  S3RVER_BUCKET,
  S3RVER_SECRET,
  startRcloneWebDav,
  startS3rver,
  startSshd,
  type TestSshServer,
  type TestStoreServer,
  WEBDAV_PASSWORD,
  WEBDAV_USER,
} from "../helpers/store-servers.js";

useProcessCleanup();

const TABLES = ["Album", "Artist", "Invoice", "InvoiceLine", "Track", "wide"];

describe("marmot -save-snapshot into the S3, WebDAV and SFTP stores", () => {
  let s3: TestStoreServer | undefined;
  let webdav: TestStoreServer | undefined;
  let sshd: TestSshServer | undefined;
  let knownHosts = "";

  before(async () => {
    [s3, webdav, sshd] = await Promise.all([startS3rver(), startRcloneWebDav(), startSshd()]);
    knownHosts = join(sshd.dir, "known_hosts");
    writeFileSync(knownHosts, `[127.0.0.1]:${sshd.port} ${sshd.hostPublicKey}\n`);
  });

  after(async () => {
    await Promise.all([s3?.stop(), webdav?.stop(), sshd?.stop()]);
  });

  /** A database with the chinook fixture and a table of extreme values, and a config for it with `storeToml`. */
  function node(storeToml: string): { db: string; configPath: string } {
    const dir = tempDir();
    const db = copyFixture("chinook", dir);
    sqlite3(
      db,
      "CREATE TABLE wide (id INTEGER PRIMARY KEY, big INTEGER, r REAL, b BLOB, n); INSERT INTO wide VALUES (1, -9223372036854775808, 0.1, x'00ff', NULL);",
    );
    const configPath = join(dir, "marmot.toml");
    writeFileSync(configPath, [`db_path = ${JSON.stringify(db)}`, "node_id = 1", storeToml, ""].join("\n"));
    return { db, configPath };
  }

  /** Saves through bin/marmot, then restores the stored snapshot into an empty database and compares every table. */
  async function saveAndRestore(storeToml: string, where: RegExp): Promise<void> {
    const { db, configPath } = node(storeToml);
    const run = await runMarmotCommand(["-config", configPath, "-save-snapshot"], 120_000);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /saved snapshot snapshot-\S+\.db to /);
    assert.match(run.stdout, where);

    const target = join(tempDir(), "restored.db");
    const config = loadConfig(configPath).config;
    config.dbPath = target;
    const store = openSnapshotStore(config, { logger: silentLogger });
    try {
      const manifest = await fetchLatestManifest(store);
      assert.ok(manifest, "no manifest in the store after -save-snapshot");
      const file = await downloadSnapshot(store, manifest, config, { dir: join(target, "..") });
      const targetDb = openDatabase(target, silentLogger);
      try {
        restoreSnapshot(targetDb, file, { config, logger: silentLogger });
      } finally {
        targetDb.close();
      }
    } finally {
      await store.close();
    }
    for (const table of TABLES) assert.equal(tableDiff(db, target, table), "", `table ${table} differs`);
  }

  test("s3", async () => {
    const toml = [
      "[snapshot]",
      'store = "s3"',
      "[snapshot.s3]",
      `endpoint = "127.0.0.1:${s3!.port}"`,
      `bucket = "${S3RVER_BUCKET}"`,
      'path = "e2e"',
      `access_key = "${S3RVER_ACCESS_KEY}"`,
      `secret = "${S3RVER_SECRET}"`,
    ].join("\n");
    await saveAndRestore(toml, new RegExp(`s3://${S3RVER_BUCKET}/e2e/ at http://127\\.0\\.0\\.1:${s3!.port}`));
  });

  test("webdav", async () => {
    const url = `http://127.0.0.1:${webdav!.port}/dav?dir=/e2e&login=${WEBDAV_USER}&secret=${WEBDAV_PASSWORD}`;
    await saveAndRestore(
      `[snapshot]\nstore = "webdav"\n[snapshot.webdav]\nurl = ${JSON.stringify(url)}`,
      /WebDAV http:\/\/127\.0\.0\.1:\d+\/dav\/e2e\//,
    );
    assert.doesNotMatch(execFileSync("ls", ["-R", webdav!.dataDir], { encoding: "utf8" }), /\.tmp-/);
  });

  test("sftp", async () => {
    const toml = [
      "[snapshot]",
      'store = "sftp"',
      "[snapshot.sftp]",
      `url = "sftp://${sshd!.user}@127.0.0.1:${sshd!.port}${sshd!.dataDir}/e2e"`,
      `key_file = ${JSON.stringify(sshd!.clientKeyFile)}`,
      `known_hosts_file = ${JSON.stringify(knownHosts)}`,
    ].join("\n");
    await saveAndRestore(toml, /sftp:\/\/\S+@127\.0\.0\.1:\d+\S*\/e2e/);
  });

  test("an unknown SFTP host key stops -save-snapshot with the fingerprint and how to add the key", async () => {
    const empty = join(tempDir(), "known_hosts");
    writeFileSync(empty, "");
    const { configPath } = node(
      [
        "[snapshot]",
        'store = "sftp"',
        "[snapshot.sftp]",
        `url = "sftp://${sshd!.user}@127.0.0.1:${sshd!.port}${sshd!.dataDir}/refused"`,
        `key_file = ${JSON.stringify(sshd!.clientKeyFile)}`,
        `known_hosts_file = ${JSON.stringify(empty)}`,
      ].join("\n"),
    );
    const run = await runMarmotCommand(["-config", configPath, "-save-snapshot"], 120_000);
    assert.notEqual(run.code, 0);
    const output = run.stdout + run.stderr;
    assert.match(output, /SHA256:[A-Za-z0-9+/]{43}/);
    assert.ok(output.includes(`ssh-keyscan -p ${sshd!.port} 127.0.0.1 >> ${empty}`), output);
  });
});
