// connectNats against real nats-servers: each kind of credential and TLS, refusals that fail fast, patient waiting.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { createUser } from "@nats-io/nkeys";
import type { NatsConnection } from "@nats-io/transport-node";
import type { NatsConfig } from "../../src/config/types.js";
import { NatsError } from "../../src/errors.js";
import type { Logger, LogFields } from "../../src/log.js";
import { connectNats } from "../../src/stream/connect.js";
import { startNatsServer, tempDir } from "../helpers/nats.js";
import { freePort } from "../helpers/ports.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { makeCertificates } from "../helpers/tls.js";

useProcessCleanup();

const TEST_TIMEOUT = 60_000;
const certs = makeCertificates();
after(() => certs.remove());

interface LogLine {
  level: string;
  message: string;
  fields?: LogFields;
}

function captureLogger(lines: LogLine[] = []): Logger & { lines: LogLine[] } {
  const at = (level: string) => (message: string, fields?: LogFields) => {
    lines.push({ level, message, fields });
  };
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), child: () => captureLogger(lines) };
}

function natsConfig(overrides: Partial<NatsConfig> = {}): NatsConfig {
  return {
    urls: [],
    subjectPrefix: "marmot-change-log",
    streamPrefix: "marmot-changes",
    serverConfig: "",
    seedFile: "",
    userName: "",
    userPassword: "",
    caFile: "",
    certFile: "",
    keyFile: "",
    bindAddress: "",
    connectRetries: 5,
    reconnectWaitSeconds: 1,
    ...overrides,
  };
}

async function open(servers: string[], overrides: Partial<NatsConfig> = {}, logger: Logger = captureLogger()): Promise<NatsConnection> {
  return connectNats({ servers, nats: natsConfig(overrides), name: "marmot-test", logger });
}

/** A message goes out and comes back: the connection is really usable, not just open. */
async function assertRoundTrip(nc: NatsConnection): Promise<void> {
  const subject = `roundtrip.${Date.now()}`;
  const sub = nc.subscribe(subject, { max: 1 });
  const received = (async () => {
    for await (const msg of sub) {
      return msg.string();
    }
    return undefined;
  })();
  await nc.flush();
  nc.publish(subject, "hello");
  assert.equal(await received, "hello");
}

/** Runs the connect expecting a NatsError; returns it with how long the refusal took. */
async function refusal(work: Promise<NatsConnection>): Promise<{ error: NatsError; ms: number }> {
  const started = Date.now();
  const outcome = await work.then(
    async (nc) => {
      await nc.close();
      return new Error("connected, but a refusal was expected");
    },
    (err: unknown) => err,
  );
  assert.ok(outcome instanceof NatsError, `expected a NatsError, got ${String(outcome)}`);
  return { error: outcome, ms: Date.now() - started };
}

// A refusal must not wait out the retry loop: well under the time one retry cycle takes to log twice.
const FAST_MS = 10_000;

describe("connectNats", { timeout: TEST_TIMEOUT }, () => {
  test("user_name/user_password: the right password connects, a wrong one fails fast naming the keys", async (t) => {
    const server = await startNatsServer({ auth: { user: "marmot", pass: "right horse" } });
    t.after(() => server.stop());

    const nc = await open([server.url], { userName: "marmot", userPassword: "right horse" });
    t.after(() => nc.close());
    await assertRoundTrip(nc);

    const { error, ms } = await refusal(open([server.url], { userName: "marmot", userPassword: "wrong" }));
    assert.match(error.message, /user_name \/ user_password/);
    assert.match(error.message, /Authorization Violation/);
    assert.ok(error.message.includes(server.url), `the message must name the server: ${error.message}`);
    assert.ok(ms < FAST_MS, `a wrong password took ${ms} ms to report`);

    const none = await refusal(open([server.url]));
    assert.match(none.error.message, /requires credentials and none are configured/);
  });

  test("credentials written in the URL work as they did in the original", async (t) => {
    const server = await startNatsServer({ auth: { user: "marmot", pass: "p@ss" } });
    t.after(() => server.stop());
    const port = new URL(server.url).port;
    const nc = await open([`nats://marmot:${encodeURIComponent("p@ss")}@127.0.0.1:${port}`]);
    t.after(() => nc.close());
    await assertRoundTrip(nc);

    const { error } = await refusal(open([`nats://marmot:nope@127.0.0.1:${port}`]));
    assert.match(error.message, /credentials in \[nats\] urls/);
    assert.ok(!error.message.includes("nope"), "the password must not appear in the message");
  });

  test("a token in the URL", async (t) => {
    const server = await startNatsServer({ auth: { token: "s3cr3t-token" } });
    t.after(() => server.stop());
    const port = new URL(server.url).port;
    const nc = await open([`nats://s3cr3t-token@127.0.0.1:${port}`]);
    t.after(() => nc.close());
    await assertRoundTrip(nc);

    const { error, ms } = await refusal(open([`nats://wrong-token@127.0.0.1:${port}`]));
    assert.match(error.message, /rejected the credentials/);
    assert.ok(!error.message.includes("wrong-token"), "the token must not appear in the message");
    assert.ok(ms < FAST_MS);
  });

  test("an nkey seed_file", async (t) => {
    const user = createUser();
    const dir = tempDir("marmot-nkey-");
    const seedFile = join(dir, "user.nk");
    writeFileSync(seedFile, new TextDecoder().decode(user.getSeed()) + "\n");
    const server = await startNatsServer({ auth: { nkeyPublic: user.getPublicKey() } });
    t.after(() => server.stop());

    const logger = captureLogger();
    const nc = await open([server.url], { seedFile }, logger);
    t.after(() => nc.close());
    await assertRoundTrip(nc);
    assert.ok(
      logger.lines.some((l) => l.fields?.publicKey === user.getPublicKey()),
      "the public key in use is logged",
    );

    const stranger = createUser();
    const strangerSeed = join(dir, "stranger.nk");
    writeFileSync(strangerSeed, new TextDecoder().decode(stranger.getSeed()));
    const { error, ms } = await refusal(open([server.url], { seedFile: strangerSeed }));
    assert.match(error.message, /\[nats\] seed_file/);
    assert.ok(ms < FAST_MS);

    const garbage = join(dir, "garbage.nk");
    writeFileSync(garbage, "not a seed\n");
    const bad = await refusal(open([server.url], { seedFile: garbage }));
    assert.match(bad.error.message, /seed_file .*garbage\.nk holds no user nkey seed/);

    const missing = await refusal(open([server.url], { seedFile: join(dir, "absent.nk") }));
    assert.match(missing.error.message, /cannot read \[nats\] seed_file/);
  });

  test("TLS with ca_file connects; without the right CA it fails fast naming ca_file", async (t) => {
    const server = await startNatsServer({ tls: { cert: certs.serverCert, key: certs.serverKey } });
    t.after(() => server.stop());

    const nc = await open([server.url], { caFile: certs.caCert });
    t.after(() => nc.close());
    await assertRoundTrip(nc);
    const viaName = await open([server.url.replace("127.0.0.1", "localhost")], { caFile: certs.caCert });
    t.after(() => viaName.close());
    await assertRoundTrip(viaName);

    const untrusted = await refusal(open([server.url]));
    assert.match(untrusted.error.message, /does not trust/);
    assert.match(untrusted.error.message, /set \[nats\] ca_file/);
    assert.ok(untrusted.ms < FAST_MS);

    const wrongCa = await refusal(open([server.url], { caFile: certs.otherCaCert }));
    assert.match(wrongCa.error.message, /ca_file .*other-ca\.pem is not the CA/);
  });

  test("TLS asked for but the server has none: a clear refusal", async (t) => {
    const server = await startNatsServer();
    t.after(() => server.stop());
    const { error, ms } = await refusal(open([server.url], { caFile: certs.caCert }));
    assert.match(error.message, /does not offer TLS/);
    assert.ok(ms < FAST_MS);
  });

  test("mutual TLS: a client certificate connects, no certificate is refused naming cert_file", async (t) => {
    const server = await startNatsServer({
      tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.caCert, verify: true },
    });
    t.after(() => server.stop());

    const nc = await open([server.url], { caFile: certs.caCert, certFile: certs.clientCert, keyFile: certs.clientKey });
    t.after(() => nc.close());
    await assertRoundTrip(nc);

    const { error } = await refusal(open([server.url], { caFile: certs.caCert }));
    assert.match(error.message, /requires a TLS client certificate/);
    assert.match(error.message, /cert_file and key_file/);

    // The server's own certificate lacks client-auth usage: the server refuses it.
    const wrongCert = await refusal(open([server.url], { caFile: certs.caCert, certFile: certs.serverCert, keyFile: certs.serverKey }));
    assert.match(wrongCert.error.message, /refused this node's TLS client certificate \[nats\] cert_file .*server\.pem/);

    const half = await refusal(open([server.url], { caFile: certs.caCert, certFile: certs.clientCert }));
    assert.match(half.error.message, /cert_file and key_file go together/);
  });

  test("bad URLs are refused at once", async () => {
    for (const url of ["http://127.0.0.1:4222", "nats://[::1", "ws://127.0.0.1:8080"]) {
      const { error } = await refusal(open([url]));
      assert.match(error.message, /\[nats\] urls/, `for ${url}: ${error.message}`);
    }
  });

  test("a server that is not there yet is waited for, then connected to", async (t) => {
    const port = await freePort();
    const logger = captureLogger();
    const connecting = open([`nats://127.0.0.1:${port}`], {}, logger);
    await new Promise((r) => setTimeout(r, 2000));
    const server = await startNatsServer({ port });
    t.after(() => server.stop());

    const nc = await connecting;
    t.after(() => nc.close());
    await assertRoundTrip(nc);
    const waits = logger.lines.filter((l) => l.message.startsWith(`waiting for NATS at nats://127.0.0.1:${port}`));
    assert.equal(waits.length, 1, "the wait is logged once, not at every retry");
    assert.match(waits[0]!.message, /connection refused/);
  });

  test("aborting the signal ends the wait", async () => {
    const port = await freePort();
    const controller = new AbortController();
    const connecting = connectNats({
      servers: [`nats://127.0.0.1:${port}`],
      nats: natsConfig(),
      name: "marmot-test",
      logger: captureLogger(),
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new Error("shutting down")), 500);
    await assert.rejects(connecting, /shutting down/);
  });

  test("after the first connect, a restarted server is reconnected to and the outage is logged", async (t) => {
    const server = await startNatsServer({ jetstream: false });
    t.after(() => server.stop());
    const logger = captureLogger();
    const nc = await open([server.url], { reconnectWaitSeconds: 1 }, logger);
    t.after(() => nc.close());

    await server.restart();
    const deadline = Date.now() + 20_000;
    while (!logger.lines.some((l) => l.message.startsWith("reconnected to NATS"))) {
      assert.ok(Date.now() < deadline, `no reconnect logged:\n${logger.lines.map((l) => l.message).join("\n")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(logger.lines.some((l) => l.level === "warn" && l.message.startsWith("lost the connection to NATS")));
    await assertRoundTrip(nc);
  });
});
