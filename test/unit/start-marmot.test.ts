// startMarmot's settings: config.toml's keys, checked as the file's are, laid over the file; bad ones are refused
// with the key named before anything starts.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { loadConfig } from "../../src/config/load.js";
import { ConfigError, startMarmot } from "../../src/index.js";
import { createDb, removeTempDirs, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

describe("startMarmot settings", () => {
  it("names the key and the source of a bad setting", async () => {
    await assert.rejects(
      startMarmot({ config: { replication_log: { shards: 0 } } }),
      (err: Error) => err instanceof ConfigError && /startMarmot's config: replication_log\.shards must be an integer from 1/.test(err.message),
    );
  });

  it("takes whole numbers as TOML integers and refuses a fraction where an integer belongs", async () => {
    await assert.rejects(
      startMarmot({ config: { nats: { connect_retries: 1.5 } } }),
      (err: Error) => err instanceof ConfigError && /nats\.connect_retries must be an integer .* got float 1\.5/.test(err.message),
    );
  });

  it("lays the settings over the file's, section by section", () => {
    const dir = tempDir();
    const file = join(dir, "config.toml");
    writeFileSync(file, `db_path = "/from/the/file.db"\nnode_id = 3\n[replication_log]\nshards = 4\nreplicas = 3\n`);
    const { config } = loadConfig(file, { table: { db_path: "/from/the/app.db", replication_log: { replicas: 1n } }, source: "the app" });
    assert.equal(config.dbPath, "/from/the/app.db");
    assert.equal(config.nodeId, "3");
    assert.deepEqual([config.replicationLog.shards, config.replicationLog.replicas], [4, 1]);
  });

  it("names both the file and the settings when a setting laid over the file is wrong", async () => {
    const dir = tempDir();
    const file = join(dir, "config.toml");
    const db = createDb(join(dir, "app.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY);");
    writeFileSync(file, `db_path = ${JSON.stringify(db)}\n[replication_log]\nshards = 4\n`);
    await assert.rejects(
      startMarmot({ configPath: file, config: { replication_log: { replicas: 9 } } }),
      (err: Error) =>
        err instanceof ConfigError &&
        err.message.startsWith(`${file} (with startMarmot's config): replication_log.replicas must be an integer from 1 to 5`),
    );
  });

  it("refuses a value config.toml cannot hold", async () => {
    await assert.rejects(
      startMarmot({ config: { nats: { urls: [null as unknown as string] } } }),
      (err: Error) => err instanceof ConfigError && /nats\.urls is null/.test(err.message),
    );
  });

  it("refuses a database that does not exist before touching anything", async () => {
    const missing = join(tempDir(), "none.db");
    await assert.rejects(
      startMarmot({ config: { db_path: missing } }),
      (err: Error) => err instanceof ConfigError && err.message.includes(`db_path ${missing} does not exist`),
    );
  });
});
