// The embedded nats-server supervisor against the real binary: start, cluster, crash, orphan cleanup, stop.

import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { ServerError } from "../../src/errors.js";
import type { Logger, LogFields } from "../../src/log.js";
import { EmbeddedServer, type ServerExit } from "../../src/stream/embedded-server.js";
import { defaultConfig } from "../../src/config/defaults.js";
import { describeJetStreamError, waitForJetStream } from "../../src/stream/jetstream-ready.js";
import { ensureStreams } from "../../src/stream/streams.js";
import { waitFor } from "../helpers/marmot.js";
import { startNatsServer, tempDir } from "../helpers/nats.js";
import { freePort, freePorts } from "../helpers/ports.js";
import { isAlive, killPid, spawnTracked, trackPid, useProcessCleanup, waitForExit } from "../helpers/processes.js";

useProcessCleanup();

const TEST_TIMEOUT = 150_000;

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

async function startServer(options: Partial<Parameters<typeof EmbeddedServer.start>[0]> = {}, logger: Logger = captureLogger()) {
  const server = await EmbeddedServer.start(
    {
      serverName: "marmot-node-1",
      storeDir: tempDir("marmot-embedded-"),
      bindAddress: "127.0.0.1:-1",
      clusterPeers: [],
      leafServers: [],
      ...options,
    },
    logger,
  );
  trackPid(server.pid);
  return server;
}

async function withClient<T>(url: string | string[], work: (nc: NatsConnection) => Promise<T>): Promise<T> {
  const nc = await connect({ servers: url, timeout: 5000 });
  try {
    return await work(nc);
  } finally {
    await nc.close();
  }
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

describe("embedded nats-server", { timeout: TEST_TIMEOUT }, () => {
  test("starts with JetStream on a random port, serves a stream, and stop() leaves no process", async (t) => {
    const storeDir = tempDir("marmot-embedded-");
    const server = await startServer({ storeDir });
    t.after(() => server.stop());

    assert.match(server.clientUrl, /^nats:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(new URL(server.clientUrl).port, "-1");
    assert.equal(Number(readFileSync(join(storeDir, "nats-server.pid"), "utf8").trim()), server.pid);

    await withClient(server.clientUrl, async (nc) => {
      const jsm = await waitForJetStream(nc, captureLogger());
      await jsm.streams.add({ name: "ORDERS", subjects: ["orders.>"] });
      const js = jetstream(nc);
      const ack = await js.publish("orders.1", "first order");
      assert.equal(ack.stream, "ORDERS");
      const stored = await jsm.streams.getMessage("ORDERS", { seq: ack.seq });
      assert.equal(stored?.string(), "first order");

      // The client's "jetstream is not enabled" for an uncaptured subject must become an actionable message.
      const failure = await js.publish("nobody.listens", "x").then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.ok(failure instanceof Error, "publishing to a subject no stream captures must fail");
      assert.match(describeJetStreamError(failure), /no JetStream stream captures subject nobody\.listens/);
    });

    await server.stop();
    assert.equal(isAlive(server.pid), false, `nats-server pid ${server.pid} still runs after stop()`);
    await server.stop(); // a second stop is harmless
    assert.equal(existsSync(join(storeDir, "nats-server.pid")), false, "the pid file must go with the process");
    const exit = await server.exited;
    assert.ok(exit.code !== null || exit.signal !== null);
  });

  test("three embedded servers joined by -cluster-addr/-cluster-peers replicate an R3 stream", async (t) => {
    const clusterPorts = await freePorts(3);
    const routes = clusterPorts.map((port) => `nats://127.0.0.1:${port}/`);
    const servers = await Promise.all(
      clusterPorts.map((port, i) => startServer({ serverName: `marmot-node-${i + 1}`, clusterAddr: `127.0.0.1:${port}`, clusterPeers: routes })),
    );
    t.after(() => Promise.all(servers.map((s) => s.stop())));

    const published = await withClient(servers[0]!.clientUrl, async (nc) => {
      const jsm = await waitForJetStream(nc, captureLogger());
      // The meta leader can answer before it has heard from every peer: R3 placement may need a moment more.
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          await jsm.streams.add({ name: "CHANGES", subjects: ["changes.>"], num_replicas: 3 });
          break;
        } catch (err) {
          if (Date.now() > deadline) {
            throw err;
          }
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      const info = await jsm.streams.info("CHANGES");
      assert.equal(info.config.num_replicas, 3);
      assert.equal(info.cluster?.name, "e-marmot");
      assert.equal((info.cluster?.replicas ?? []).length, 2, "a leader and two replicas");
      return jetstream(nc).publish("changes.row", "row 42");
    });

    // Read it back through another node: the message crossed the cluster.
    await withClient(servers[2]!.clientUrl, async (nc) => {
      const jsm = await waitForJetStream(nc, captureLogger());
      const stored = await jsm.streams.getMessage("CHANGES", { seq: published.seq });
      assert.equal(stored?.string(), "row 42");
    });
  });

  test("on a two-server cluster marmot waits for R3 placement, says why, and goes on when a third server joins", async (t) => {
    const clusterPorts = await freePorts(3);
    const routes = clusterPorts.map((port) => `nats://127.0.0.1:${port}/`);
    const options = (i: number, peers: string[]) => ({
      serverName: `marmot-node-${i + 1}`,
      clusterAddr: `127.0.0.1:${clusterPorts[i]}`,
      clusterPeers: peers,
    });
    // A cluster of two: its meta group elects a leader, but an R3 stream has one server too few.
    const servers = await Promise.all([0, 1].map((i) => startServer(options(i, routes.slice(0, 2)))));
    t.after(() => Promise.all(servers.map((s) => s.stop())));

    await withClient(servers[0]!.clientUrl, async (nc) => {
      const jsm = await waitForJetStream(nc, captureLogger());
      const config = defaultConfig();
      config.replicationLog.shards = 1;
      config.replicationLog.replicas = 3;
      const logger = captureLogger();
      const placed = ensureStreams(jsm, config, logger, undefined, 1000);
      let settled = false;
      void placed.finally(() => (settled = true)).catch(() => undefined);

      const waiting = () => logger.lines.filter((l) => l.message.startsWith("waiting for JetStream to place the stream"));
      await waitFor(
        () => waiting().some((l) => l.fields?.["hint"] !== undefined),
        30_000,
        () => `the placement hint; logged: ${JSON.stringify(waiting())}`,
      );
      assert.equal(settled, false, "the stream cannot have been placed on two servers");
      const [first] = waiting();
      assert.match(first!.message, /an R3 stream needs 3 servers up/);
      assert.equal(first!.fields?.["reason"], "no suitable peers for placement");
      const hint = waiting().find((l) => l.fields?.["hint"] !== undefined)!.fields!["hint"];
      assert.match(String(hint), /meta group lists fewer than 3 servers/);

      servers.push(await startServer(options(2, routes)));
      const [stream] = await within(placed, 60_000, "the R3 stream once a third server joined");
      const info = await jsm.streams.info(stream!.stream);
      assert.equal(info.config.num_replicas, 3);
      assert.equal((info.cluster?.replicas ?? []).length, 2, "a leader and two replicas");
    });
  });

  test("-leaf-servers: the embedded server joins a hub as a leaf node, and marmot's subjects reach the hub", async (t) => {
    const leafnodePort = await freePort();
    const hub = await startNatsServer({ jetstream: false, leafnodePort });
    t.after(() => hub.stop());
    const server = await startServer({ leafServers: [`nats://127.0.0.1:${leafnodePort}`] });
    t.after(() => server.stop());

    await withClient(hub.url, async (onHub) => {
      const received: string[] = [];
      onHub.subscribe("marmot-change-log-1-1", {
        callback: (_err, m) => {
          received.push(m.string());
        },
      });
      await onHub.flush();
      await withClient(server.clientUrl, async (onLeaf) => {
        // The hub's interest reaches the leaf once the leaf connection is up: publish until a message arrives.
        await waitFor(
          async () => {
            onLeaf.publish("marmot-change-log-1-1", "from the leaf");
            await onLeaf.flush();
            return received.length > 0;
          },
          30_000,
          () => `a message published on the leaf to reach the hub:\n${hub.output()}`,
          250,
        );
      });
      assert.equal(received[0], "from the leaf");
    });
  });

  test("a server killed from outside triggers onUnexpectedExit, and stop() afterwards still resolves", async (t) => {
    const logger = captureLogger();
    const server = await startServer({}, logger);
    t.after(() => server.stop());
    const unexpected = new Promise<ServerExit>((resolve) => server.onUnexpectedExit(resolve));

    process.kill(server.pid, "SIGKILL");
    const exit = await within(unexpected, 10_000, "onUnexpectedExit");
    assert.equal(exit.signal, "SIGKILL");
    assert.ok(
      logger.lines.some((l) => l.level === "error" && /exited unexpectedly/.test(l.message)),
      "the crash must be logged at error level",
    );
    await server.stop();
  });

  test("stop() does not count as an unexpected exit", async () => {
    const server = await startServer();
    let called = false;
    server.onUnexpectedExit(() => {
      called = true;
    });
    await server.stop();
    await new Promise((r) => setImmediate(r));
    assert.equal(called, false);
  });

  test("a nats-server orphaned by a SIGKILLed marmot is killed at the next start, and its store is reused", async (t) => {
    const storeDir = tempDir("marmot-embedded-");
    const moduleUrl = new URL("../../src/stream/embedded-server.js", import.meta.url).href;
    // A stand-in for a marmot process: it starts the embedded server, reports it, then waits to be killed.
    const script = `
      import { EmbeddedServer } from ${JSON.stringify(moduleUrl)};
      const quiet = { debug() {}, info() {}, warn() {}, error() {}, child() { return quiet; } };
      const server = await EmbeddedServer.start(
        { serverName: "marmot-node-1", storeDir: ${JSON.stringify(storeDir)}, bindAddress: "127.0.0.1:-1", clusterPeers: [], leafServers: [] },
        quiet,
      );
      console.log(JSON.stringify({ pid: server.pid, url: server.clientUrl }));
      setInterval(() => {}, 60_000);
    `;
    const fakeMarmot = spawnTracked(process.execPath, ["--input-type=module", "-e", script]);
    const firstLine = await within(
      new Promise<string>((resolve, reject) => {
        let out = "";
        fakeMarmot.stdout!.on("data", (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes("\n")) {
            resolve(out.slice(0, out.indexOf("\n")));
          }
        });
        fakeMarmot.once("close", (code) => reject(new Error(`the stand-in marmot exited with ${code} before reporting`)));
      }),
      30_000,
      "the stand-in marmot to start its server",
    );
    const orphan = JSON.parse(firstLine) as { pid: number; url: string };
    trackPid(orphan.pid);
    await withClient(orphan.url, async (nc) => {
      const jsm = await waitForJetStream(nc, captureLogger());
      await jsm.streams.add({ name: "SURVIVOR", subjects: ["survivor.>"] });
      await jetstream(nc).publish("survivor.1", "kept");
    });

    process.kill(fakeMarmot.pid!, "SIGKILL");
    assert.ok(await waitForExit(fakeMarmot.pid!, 5000), "the stand-in marmot must die");
    assert.ok(isAlive(orphan.pid), "the test needs the nats-server to outlive its SIGKILLed parent");

    const logger = captureLogger();
    const server = await startServer({ storeDir }, logger);
    t.after(() => server.stop());
    assert.ok(await waitForExit(orphan.pid, 1000), `the orphaned nats-server ${orphan.pid} must be gone`);
    assert.notEqual(server.pid, orphan.pid);
    assert.ok(
      logger.lines.some((l) => l.level === "warn" && /previous marmot/.test(l.message) && l.fields?.pid === orphan.pid),
      "killing the orphan must be logged with its pid",
    );
    await withClient(server.clientUrl, async (nc) => {
      const jsm = await waitForJetStream(nc, captureLogger());
      const stored = await jsm.streams.getMessage("SURVIVOR", { seq: 1 });
      assert.equal(stored?.string(), "kept");
    });
  });

  test("a stale pid file that names an unrelated process leaves that process alone", async (t) => {
    const storeDir = tempDir("marmot-embedded-");
    const bystander = spawnTracked("sleep", ["60"]);
    t.after(() => killPid(bystander.pid!));
    writeFileSync(join(storeDir, "nats-server.pid"), `${bystander.pid}\n`);

    const server = await startServer({ storeDir });
    t.after(() => server.stop());
    assert.ok(isAlive(bystander.pid!), "an unrelated process must not be killed because of a reused pid");
  });

  test("a port already in use fails the start with nats-server's own explanation", async (t) => {
    const port = await freePort();
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(port, "127.0.0.1", resolve));
    t.after(() => new Promise<void>((resolve) => blocker.close(() => resolve())));

    await assert.rejects(startServer({ bindAddress: `127.0.0.1:${port}` }), (err: unknown) => {
      assert.ok(err instanceof ServerError, `expected ServerError, got ${String(err)}`);
      assert.match(err.message, /address already in use/);
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
      return true;
    });
  });

  test("the user's server_config is included last, so its settings win", async (t) => {
    const configDir = tempDir("marmot-userconf-");
    const userConfig = join(configDir, "extra.conf");
    writeFileSync(userConfig, "max_payload: 3000000\n");
    const server = await startServer({ serverConfig: userConfig });
    t.after(() => server.stop());
    await withClient(server.clientUrl, async (nc) => {
      assert.equal(nc.info?.max_payload, 3000000);
    });
  });

  test("a missing server_config is refused before anything starts", async () => {
    await assert.rejects(startServer({ serverConfig: "/nonexistent/marmot-nats.conf" }), /server_config.*does not exist/);
  });

  test("nats-server's output reaches the logger", async (t) => {
    const logger = captureLogger();
    const server = await startServer({}, logger);
    t.after(() => server.stop());
    assert.ok(logger.lines.some((l) => l.level === "debug" && /Server is ready/.test(l.message)));
  });
});
