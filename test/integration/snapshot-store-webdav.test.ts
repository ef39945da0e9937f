// The WebDAV snapshot store against `rclone serve webdav`: the shared store tests, the url's parameters, a wrong password.

import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ConfigError, SnapshotAccessError, SnapshotStoreError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import type { SnapshotStore } from "../../src/snapshot/store.js";
import { createWebDavStore } from "../../src/snapshot/stores/webdav.js";
import { freePort } from "../helpers/ports.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { storeConformance } from "../helpers/store-conformance.js";
import { startRcloneWebDav, type TestStoreServer, WEBDAV_PASSWORD, WEBDAV_USER } from "../helpers/store-servers.js";

useProcessCleanup();

describe("WebDAV snapshot store on rclone serve webdav", () => {
  let server: TestStoreServer | undefined;
  const opened: SnapshotStore[] = [];
  /** the folder the url's dir parameter names, two levels deep so that the store must create both */
  const DIR = "snapshots/cluster-a";

  function url(login = WEBDAV_USER, secret = WEBDAV_PASSWORD, port = server!.port): string {
    return `http://127.0.0.1:${port}/dav?dir=/${DIR}&login=${encodeURIComponent(login)}&secret=${encodeURIComponent(secret)}`;
  }

  function open(text = url()): SnapshotStore {
    const store = createWebDavStore({ url: text }, silentLogger);
    opened.push(store);
    return store;
  }

  before(async () => {
    server = await startRcloneWebDav();
  });

  after(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await server?.stop();
  });

  let shared: SnapshotStore | undefined;
  storeConformance({ store: () => (shared ??= open()), serverFolder: () => join(server!.dataDir, DIR) });

  test("objects land in the dir parameter's folder below the url's path", async () => {
    await open().writeSmall("where.json", new Uint8Array([1]));
    const file = join(server!.dataDir, DIR, "where.json");
    assert.ok(existsSync(file), `${file} is missing`);
    assert.equal(statSync(file).size, 1);
  });

  test("a wrong password is a SnapshotAccessError naming the url's login and secret", async () => {
    const store = open(url(WEBDAV_USER, "not-the-password"));
    await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
      assert.match(err.message, /login and secret parameters of \[snapshot\.webdav\] url/);
      assert.match(err.message, /401/);
      assert.ok(!err.message.includes("not-the-password"), "the message shows the password");
      return true;
    });
  });

  test("a server nobody listens on is a SnapshotStoreError (worth a retry)", async () => {
    const closedPort = await freePort();
    await assert.rejects(open(url(WEBDAV_USER, WEBDAV_PASSWORD, closedPort)).readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotStoreError, `${err.name}: ${err.message}`);
      assert.ok(err.message.includes(`127.0.0.1:${closedPort}`), err.message);
      return true;
    });
  });

  test("an empty or malformed url is a ConfigError naming [snapshot.webdav] url", () => {
    for (const text of ["", "not a url", "ftp://host/x", "https://host/x?login=user", "https://user:pass@host/x"]) {
      assert.throws(
        () => createWebDavStore({ url: text }, silentLogger),
        (err: Error) => {
          assert.ok(err instanceof ConfigError, `${text}: ${err.name}`);
          assert.match(err.message, /\[snapshot\.webdav\] url/);
          return true;
        },
      );
    }
  });
});
