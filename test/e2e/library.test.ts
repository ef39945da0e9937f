// The library entry: an app process runs marmot in-process beside its own better-sqlite3 connection and
// replicates both ways with a node run by bin/marmot.

import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { repoRoot, TestCluster, tableDiff, waitFor } from "../helpers/marmot.js";
import { spawnTracked, trackPid, untrackPid, useProcessCleanup, waitForExit } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, big INTEGER, real REAL, text TEXT, blob BLOB, absent);";

interface AppEvent {
  event: string;
  status?: { id: string; state: string; shards: { stream: string; applied: number }[]; pendingChanges: number };
  row?: { id: string; big: string; text: string };
  reason?: string;
}

/** The app process and the JSON lines it printed. */
class App {
  events: AppEvent[] = [];
  output = "";
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcess) {
    let pending = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      pending += chunk.toString("utf8");
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) this.events.push(JSON.parse(line) as AppEvent);
    });
    child.stderr!.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  }

  event(name: string): AppEvent | undefined {
    return this.events.find((e) => e.event === name);
  }

  async waitFor(name: string, timeoutMs: number): Promise<AppEvent> {
    return waitFor<AppEvent | undefined>(
      () => {
        const found = this.event(name);
        if (found === undefined && this.child.exitCode !== null) throw new Error(`the app exited (${this.child.exitCode})`);
        return found;
      },
      timeoutMs,
      () => `the app to report "${name}"; it printed ${JSON.stringify(this.events)} and logged:\n${this.output.split("\n").slice(-30).join("\n")}`,
    ) as Promise<AppEvent>;
  }
}

describe("marmot as a library", () => {
  let cluster: TestCluster;
  after(async () => {
    await cluster?.stopAll();
  });

  test("an app embedding marmot replicates to and from a node run by bin/marmot", async () => {
    cluster = await TestCluster.create({ size: 2, schema: SCHEMA });
    const [appNode, cliNode] = cluster.nodes as [(typeof cluster.nodes)[0], (typeof cluster.nodes)[0]];
    const flag = (name: string) => appNode.spec.args[appNode.spec.args.indexOf(name) + 1]!;
    cliNode.start();
    const app = new App(
      spawnTracked(
        process.execPath,
        [
          join(repoRoot, "test", "fixtures", "embedded-app.mjs"),
          appNode.spec.configPath,
          appNode.spec.dbPath,
          flag("-cluster-addr"),
          flag("-cluster-peers"),
        ],
        { cwd: repoRoot },
      ),
    );
    // The app's node id comes from its settings (7), over the file's (1): so does its nats-server's store.
    const pidFile = join(cluster.dir, "marmot-nats-7", "nats-server.pid");
    let natsPid: number | undefined;
    after(async () => {
      if (app.child.exitCode === null) app.child.kill("SIGKILL");
      if (natsPid !== undefined) await waitForExit(natsPid, 10_000);
    });
    await waitFor(
      () => existsSync(pidFile),
      90_000,
      () => `the app's nats-server to start; the app logged:\n${app.output}`,
    );
    natsPid = Number(readFileSync(pidFile, "utf8").trim());
    trackPid(natsPid);

    const started = await app.waitFor("started", 120_000);
    assert.equal(started.status?.id, "7");
    assert.ok(["catching up", "ready"].includes(started.status?.state ?? ""), `started: ${JSON.stringify(started.status)}`);
    await cliNode.waitRunning();

    // The app's own writes reach the bin/marmot node, every value exactly.
    await app.waitFor("wrote", 30_000);
    await waitFor(
      () => sqlite3(cliNode.spec.dbPath, "SELECT count(*) FROM items;").trim() === "5",
      60_000,
      () => `the app's rows on node 2; it has ${sqlite3(cliNode.spec.dbPath, "SELECT count(*) FROM items;")}\n${app.output.slice(-3000)}`,
    );
    assert.equal(tableDiff(appNode.spec.dbPath, cliNode.spec.dbPath, "items"), "");

    // A write on the bin/marmot node reaches the app, read through the app's own connection.
    sqlite3(cliNode.spec.dbPath, "INSERT INTO items (id, big, text) VALUES (100, 9223372036854775807, 'from node 2');");
    const seen = await app.waitFor("seen", 60_000);
    assert.deepEqual(seen.row, { id: "100", big: "9223372036854775807", text: "from node 2" });
    const applied = (seen.status?.shards ?? []).map((s) => s.applied);
    assert.equal(applied.length, 1, "one stream (one shard)");
    assert.ok(applied[0]! >= 2, `the app's node applied its own batch and node 2's: ${JSON.stringify(seen.status)}`);
    assert.equal(seen.status?.pendingChanges, 0);

    // SIGTERM is the app's to handle: it stops marmot, which stops its nats-server.
    app.child.kill("SIGTERM");
    assert.equal(await app.exited, 0, app.output.slice(-3000));
    untrackPid(app.child.pid!);
    assert.equal(app.event("stopped")?.status?.state, "stopped");
    assert.ok(await waitForExit(natsPid, 10_000), `the app's nats-server (pid ${natsPid}) outlived marmot.stop()`);
    untrackPid(natsPid);
    assert.equal(await cliNode.stop(), 0);
  });
});
