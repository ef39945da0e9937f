// Marmot against a real nats-server that demands credentials and TLS, configured through the original's [nats] keys.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createUser } from "@nats-io/nkeys";
import { after, describe, test } from "node:test";
import { TestCluster } from "../helpers/marmot.js";
import { startNatsServer, tempDir, type NatsServerOptions, type TestNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";
import { makeCertificates } from "../helpers/tls.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);";

/** Two marmot nodes on `server` with `toml` in their [nats] section: they replicate an app write. */
async function replicatesWith(server: TestNatsServer, natsToml: string): Promise<void> {
  const cluster = await TestCluster.create({ size: 2, schema: SCHEMA, natsUrls: [server.url], toml: natsToml });
  try {
    await cluster.startAll();
    sqlite3(cluster.node(1).spec.dbPath, "INSERT INTO Books VALUES (1, 'Emma');");
    await cluster.waitConverged(["Books"]);
    assert.equal(sqlite3(cluster.node(2).spec.dbPath, "SELECT title FROM Books WHERE id = 1;").trim(), "Emma");
  } finally {
    await cluster.stopAll();
  }
}

/** One marmot node on `server` with `toml`: it must exit non-zero with a message matching `expected`. */
async function refusedWith(server: TestNatsServer, natsToml: string, expected: RegExp): Promise<void> {
  const cluster = await TestCluster.create({ size: 1, schema: SCHEMA, natsUrls: [server.url], toml: natsToml });
  const node = cluster.node(1);
  node.start();
  const code = await node.exited();
  assert.notEqual(code, 0, `marmot should stop:\n${node.tail()}`);
  assert.match(node.output, expected);
}

async function server(options: NatsServerOptions): Promise<TestNatsServer> {
  const s = await startNatsServer(options);
  after(() => s.stop());
  return s;
}

describe("credentials", () => {
  test("user_name / user_password: the right ones replicate, a wrong one stops marmot with the key to check", async () => {
    const s = await server({ auth: { user: "marmot", pass: "s3cret" } });
    await replicatesWith(s, 'user_name = "marmot"\nuser_password = "s3cret"');
    await refusedWith(s, 'user_name = "marmot"\nuser_password = "wrong"', /user_name \/ user_password/);
  });

  test("seed_file (nkey): the right seed replicates, another seed is refused", async () => {
    const user = createUser();
    const stranger = createUser();
    const dir = tempDir();
    const seed = join(dir, "user.nk");
    const strangerSeed = join(dir, "stranger.nk");
    writeFileSync(seed, new TextDecoder().decode(user.getSeed()));
    writeFileSync(strangerSeed, new TextDecoder().decode(stranger.getSeed()));
    const s = await server({ auth: { nkeyPublic: user.getPublicKey() } });
    await replicatesWith(s, `seed_file = ${JSON.stringify(seed)}`);
    await refusedWith(s, `seed_file = ${JSON.stringify(strangerSeed)}`, /seed_file/);
  });
});

describe("TLS", () => {
  const certs = makeCertificates();
  after(() => certs.remove());

  test("ca_file: a server certificate from that CA is trusted; without ca_file marmot refuses to go on", async () => {
    const s = await server({ tls: { cert: certs.serverCert, key: certs.serverKey } });
    await replicatesWith(s, `ca_file = ${JSON.stringify(certs.caCert)}`);
    await refusedWith(s, "", /ca_file|certificate/i);
  });

  test("mutual TLS: cert_file and key_file are presented; without them the server's refusal names cert_file", async () => {
    const s = await server({ tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.caCert, verify: true } });
    await replicatesWith(
      s,
      `ca_file = ${JSON.stringify(certs.caCert)}\ncert_file = ${JSON.stringify(certs.clientCert)}\nkey_file = ${JSON.stringify(certs.clientKey)}`,
    );
    await refusedWith(s, `ca_file = ${JSON.stringify(certs.caCert)}`, /cert_file/);
  });
});
