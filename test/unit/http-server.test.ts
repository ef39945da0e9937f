// The HTTP listener's routes with a fake status view: /readyz codes and reasons, /status JSON, the page, /metrics.

import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import type { Readiness } from "../../src/cluster/node-status.js";
import { disconnectedHealth } from "../../src/cluster/nats-health.js";
import type { ClusterStatus } from "../../src/cluster/status-model.js";
import { silentLogger } from "../../src/log.js";
import { Metrics } from "../../src/metrics.js";
import { startHttpServer } from "../../src/http/server.js";

test("the listener serves the page, /status, /readyz (200 or 503 with the reason) and /metrics", async (t) => {
  let readiness: Readiness = { ready: false, reason: "starting: connecting to NATS at nats://127.0.0.1:4222" };
  const status: ClusterStatus = {
    generatedAt: 1,
    self: "7",
    heartbeatsReadAt: 0,
    nodes: [],
    nats: disconnectedHealth("not connected yet"),
    history: [],
  };
  const metrics = new Metrics("marmot", "");
  metrics.applied.inc(3);
  const server = await startHttpServer("127.0.0.1:0", metrics, { clusterStatus: () => status, readiness: () => readiness }, silentLogger);
  t.after(() => server.close());
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  let res = await fetch(`${base}/readyz`);
  assert.equal(res.status, 503);
  assert.deepEqual(await res.json(), readiness);
  readiness = { ready: true, reason: "ready" };
  res = await fetch(`${base}/readyz`);
  assert.equal(res.status, 200);

  res = await fetch(`${base}/status`);
  assert.equal(res.headers.get("content-type"), "application/json");
  assert.deepEqual(await res.json(), status);

  res = await fetch(`${base}/`);
  const page = await res.text();
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(page, /<meta name="viewport"/);
  assert.doesNotMatch(page, /(src|href)=["']?(https?:)?\/\//i, "nothing is loaded from elsewhere");

  res = await fetch(`${base}/metrics`);
  const text = await res.text();
  assert.match(text, /^marmot_applied 3$/m);
  // The process's own memory, read at each scrape: some megabytes, not the 0 of a gauge never set.
  const rss = Number(/^marmot_resident_memory_bytes (\d+)$/m.exec(text)?.[1]);
  assert.ok(rss > 10 * 1024 * 1024, `resident memory ${rss}`);
  assert.ok(Number(/^marmot_heap_used_bytes (\d+)$/m.exec(text)?.[1]) > 1024 * 1024);

  res = await fetch(`${base}/nothing`);
  assert.equal(res.status, 404);
  res = await fetch(`${base}/status`, { method: "POST" });
  assert.equal(res.status, 405);
});
