// The SFTP snapshot store against OpenSSH's sshd (key login; the shared store tests, host keys checked against
// known_hosts) and rclone's SFTP server (password login; without a cache it refuses pipelined writes, so the
// store's fallback to one write at a time runs there).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { SnapshotConfig } from "../../src/config/types.js";
import { ConfigError, SnapshotAccessError, SnapshotStoreError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import type { SnapshotStore } from "../../src/snapshot/store.js";
import { createSftpStore } from "../../src/snapshot/stores/sftp.js";
import { freePort } from "../helpers/ports.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { storeConformance } from "../helpers/store-conformance.js";
import {
  SFTP_PASSWORD,
  SFTP_PASSWORD_USER,
  startRcloneSftp,
  startSshd,
  type TestPasswordSftpServer,
  type TestSshServer,
} from "../helpers/store-servers.js";

useProcessCleanup();

describe("SFTP snapshot store on OpenSSH sshd", () => {
  let server: TestSshServer | undefined;
  let knownHosts = "";
  const opened: SnapshotStore[] = [];

  function sftpConfig(overrides: Partial<SnapshotConfig["sftp"]> = {}): SnapshotConfig["sftp"] {
    return {
      url: `sftp://${server!.user}@127.0.0.1:${server!.port}${server!.dataDir}/snapshots`,
      keyFile: server!.clientKeyFile,
      knownHostsFile: knownHosts,
      ...overrides,
    };
  }

  function open(overrides: Partial<SnapshotConfig["sftp"]> = {}): SnapshotStore {
    const store = createSftpStore(sftpConfig(overrides), silentLogger);
    opened.push(store);
    return store;
  }

  function knownHostsWith(name: string, lines: string[]): string {
    const file = join(server!.dir, name);
    writeFileSync(file, lines.map((line) => `${line}\n`).join(""));
    return file;
  }

  /** What ssh-keygen prints as the fingerprint of the server's host key. */
  function serverFingerprint(): string {
    const text = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", join(server!.dir, "host_key.pub")], { encoding: "utf8" });
    return text.split(/\s+/)[1]!;
  }

  before(async () => {
    server = await startSshd();
    // The way the README tells users to trust a server: ssh-keyscan into the known-hosts file.
    const scanned = execFileSync("ssh-keyscan", ["-p", String(server.port), "-t", "ed25519", "127.0.0.1"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    knownHosts = knownHostsWith("known_hosts", ["# scanned by the test", ...scanned.split("\n").filter((line) => line !== "")]);
  });

  after(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await server?.stop();
  });

  let shared: SnapshotStore | undefined;
  storeConformance({ store: () => (shared ??= open()), serverFolder: () => join(server!.dataDir, "snapshots") });

  test("a host listed with ssh-keygen -H (hashed names) is trusted", async () => {
    const hashed = knownHostsWith("known_hosts_hashed", [`[127.0.0.1]:${server!.port} ${server!.hostPublicKey}`]);
    execFileSync("ssh-keygen", ["-H", "-f", hashed], { stdio: "ignore" });
    const store = open({ knownHostsFile: hashed });
    await store.writeSmall("hashed.json", new Uint8Array([4, 2]));
    assert.deepEqual(await store.readSmall("hashed.json"), new Uint8Array([4, 2]));
  });

  test("another key for the host in known_hosts is refused, naming the host, the fingerprint and the key to fix", async () => {
    const wrong = knownHostsWith("known_hosts_wrong", [`[127.0.0.1]:${server!.port} ${server!.otherPublicKey}`]);
    await assert.rejects(open({ knownHostsFile: wrong }).readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
      assert.ok(err.message.includes(`[127.0.0.1]:${server!.port}`), err.message);
      assert.ok(err.message.includes(serverFingerprint()), `no ${serverFingerprint()} in: ${err.message}`);
      assert.match(err.message, /is NOT the one \[snapshot\.sftp\] known_hosts_file/);
      assert.ok(err.message.includes(wrong), err.message);
      return true;
    });
  });

  test("a host missing from known_hosts is refused, saying how to add it", async () => {
    const other = knownHostsWith("known_hosts_other", [`[127.0.0.1]:1 ${server!.hostPublicKey}`, `otherhost ${server!.hostPublicKey}`]);
    const missing = join(server!.dir, "no-such-known-hosts");
    for (const file of [other, missing]) {
      await assert.rejects(open({ knownHostsFile: file }).readSmall("manifest.json"), (err: Error) => {
        assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
        assert.ok(err.message.includes(serverFingerprint()), err.message);
        assert.match(err.message, /is unknown: it is not in \[snapshot\.sftp\] known_hosts_file/);
        assert.ok(err.message.includes(`ssh-keyscan -p ${server!.port} 127.0.0.1 >> ${file}`), err.message);
        return true;
      });
    }
  });

  test("a refused login is a SnapshotAccessError naming the url and key_file", async () => {
    const store = open({ url: `sftp://${server!.user}:wrong-password@127.0.0.1:${server!.port}/tmp`, keyFile: "" });
    await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
      assert.match(err.message, /refused the login/);
      assert.match(err.message, /\[snapshot\.sftp\] key_file/);
      assert.ok(!err.message.includes("wrong-password"), "the message shows the password");
      return true;
    });
  });

  test("a server nobody listens on is a SnapshotStoreError naming it (worth a retry)", async () => {
    const closedPort = await freePort();
    const store = open({ url: `sftp://${server!.user}@127.0.0.1:${closedPort}/tmp` });
    await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotStoreError, `${err.name}: ${err.message}`);
      assert.ok(err.message.includes(`127.0.0.1:${closedPort}`), err.message);
      return true;
    });
  });

  test("a missing url, user or credentials, or an unusable key_file is a ConfigError naming the key", () => {
    const withPassphrase = join(server!.dir, "key_with_passphrase");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "a passphrase", "-f", withPassphrase]);
    const cases: Array<[Partial<SnapshotConfig["sftp"]>, RegExp]> = [
      [{ url: "" }, /\[snapshot\.sftp\] url is empty/],
      [{ url: "http://host/x" }, /\[snapshot\.sftp\] url must be sftp:/],
      [{ url: "sftp://host/x" }, /has no user/],
      [{ url: "sftp://user@host/x", keyFile: "" }, /has no credentials/],
      [{ keyFile: join(server!.dir, "no-such-key") }, /\[snapshot\.sftp\] key_file .* cannot be read/],
      [{ keyFile: join(server!.dir, "authorized_keys") }, /\[snapshot\.sftp\] key_file .* is not a usable private key/],
      [{ keyFile: withPassphrase }, /passphrase are not supported/],
    ];
    for (const [overrides, message] of cases) {
      assert.throws(
        () => createSftpStore(sftpConfig(overrides), silentLogger),
        (err: Error) => {
          assert.ok(err instanceof ConfigError, `${JSON.stringify(overrides)}: ${err.name}`);
          assert.match(err.message, message);
          return true;
        },
      );
    }
  });
});

describe("SFTP snapshot store on rclone serve sftp, with a password", () => {
  let server: TestPasswordSftpServer | undefined;
  let knownHosts = "";
  const opened: SnapshotStore[] = [];

  before(async () => {
    server = await startRcloneSftp();
    knownHosts = join(server.dir, "known_hosts");
    writeFileSync(knownHosts, `[127.0.0.1]:${server.port} ${server.hostPublicKey}\n`);
  });

  after(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await server?.stop();
  });

  let shared: SnapshotStore | undefined;
  storeConformance({
    store: () => {
      if (shared === undefined) {
        const url = `sftp://${SFTP_PASSWORD_USER}:${encodeURIComponent(SFTP_PASSWORD)}@127.0.0.1:${server!.port}/snapshots`;
        shared = createSftpStore({ url, keyFile: "", knownHostsFile: knownHosts }, silentLogger);
        opened.push(shared);
      }
      return shared;
    },
    serverFolder: () => join(server!.dataDir, "snapshots"),
    // This server takes one write at a time (see the store's fallback), which a 3 MB file exercises as well as 12.
    bigFileBytes: 3 * 1024 * 1024,
  });

  test("a wrong password is a SnapshotAccessError that does not show the password", async () => {
    const url = `sftp://${SFTP_PASSWORD_USER}:not-the-password@127.0.0.1:${server!.port}/snapshots`;
    const store = createSftpStore({ url, keyFile: "", knownHostsFile: knownHosts }, silentLogger);
    opened.push(store);
    await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
      assert.match(err.message, /refused the login of marmot/);
      assert.ok(!err.message.includes("not-the-password"), "the message shows the password");
      return true;
    });
  });
});
