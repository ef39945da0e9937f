// The status page in a real headless browser (Debian's chromium driven by playwright-core) against a real
// three-node cluster: three ready nodes with their lag, and a node stopped with SIGTERM shown without a reload.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { chromium, type BrowserServer } from "playwright-core";
import { repoRoot, TestCluster, waitFor } from "../helpers/marmot.js";
import { freePorts } from "../helpers/ports.js";
import { killPid, trackPid, untrackPid, useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";
import { fetchReadyz, statusToml } from "../helpers/status.js";

useProcessCleanup();

const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

test("the status page lists three ready nodes with their lag and shows a stopped node without a reload", async (t) => {
  const httpPorts = await freePorts(3);
  const cluster = await TestCluster.create({
    replicas: 3,
    schema: "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER);",
    nodeToml: (id) => statusToml(httpPorts[id - 1]!),
  });
  let server: BrowserServer | undefined;
  t.after(async () => {
    if (server) {
      const pid = server.process().pid;
      await server.close().catch(() => undefined);
      if (pid !== undefined) {
        await killPid(pid, 0);
        untrackPid(pid);
      }
    }
    await cluster.stopAll();
  });
  await cluster.startAll();
  for (const port of httpPorts) {
    await waitFor(
      async () => (await fetchReadyz(port)).ready,
      120_000,
      () => `the node on :${port} to be ready`,
    );
  }
  // Some traffic, so that the plot and the sequences have something to show.
  const values = Array.from({ length: 200 }, (_, i) => `(${i + 1}, 'book ${i + 1}', ${1800 + i})`).join(",");
  sqlite3(cluster.node(1).spec.dbPath, `INSERT INTO books (id, title, year) VALUES ${values};`);

  // launchServer, not launch: its process is known, so the test stops it by pid even when it fails. Playwright gives
  // the browser a new, empty profile directory of its own.
  server = await chromium.launchServer({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  const browserPid = server.process().pid;
  if (browserPid !== undefined) trackPid(browserPid);
  const browser = await chromium.connect(server.wsEndpoint());
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  let navigations = 0;
  page.on("framenavigated", (frame) => {
    if (frame === page.mainFrame()) navigations++;
  });
  const url = `http://127.0.0.1:${httpPorts[0]}/`;
  // Works without internet: everything the page loads comes from the node itself.
  const requested: string[] = [];
  page.on("request", (request) => requested.push(request.url()));
  await page.goto(url);

  const states = () => page.$$eval(".node", (els) => els.map((e) => `${e.getAttribute("data-node")}=${e.getAttribute("data-state")}`).join(" "));
  await waitFor(
    async () => (await states()) === "1=ready 2=ready 3=ready",
    60_000,
    () => "the page to list three ready nodes",
  );
  const lagOf = (node: string) => page.$eval(`.node[data-node="${node}"] .lag`, (e) => e.getAttribute("data-lag"));
  await waitFor(
    async () => (await lagOf("1")) === "0" && (await lagOf("2")) === "0" && (await lagOf("3")) === "0",
    60_000,
    () => "every node to show its lag, 0 once the books are applied",
  );
  await waitFor(
    () => sqlite3(cluster.node(3).spec.dbPath, "SELECT count(*) FROM books;").trim() === "200",
    60_000,
    () => "the books on node 3",
  );
  assert.match((await page.textContent("#summary")) ?? "", /all 3 nodes ready/);

  assert.equal(await cluster.node(3).stop(), 0);
  await waitFor(
    async () => /^1=ready 2=ready 3=(stopped|unreachable)$/.test(await states()),
    30_000,
    () => "the page to show node 3 stopped or unreachable",
  );
  assert.equal(navigations, 1, "the page updated itself: it was never reloaded");
  const elsewhere = requested.filter((r) => !r.startsWith(url));
  assert.deepEqual(elsewhere, [], "the page loads nothing from elsewhere");
  // At least the answer that showed node 3 ready and the one that showed it gone.
  assert.ok(requested.filter((r) => r === `${url}status`).length >= 2, "the page polled /status while open");
  assert.match((await page.textContent("#summary")) ?? "", /1 of 3 nodes not ready/);

  const dir = join(repoRoot, ".test-tmp");
  mkdirSync(dir, { recursive: true });
  const screenshot = join(dir, "status-page.png");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`# status page screenshot: ${screenshot}`);
  await page.setViewportSize({ width: 390, height: 844 });
  const phone = join(dir, "status-page-phone.png");
  await page.screenshot({ path: phone, fullPage: true });
  console.log(`# status page screenshot (phone width): ${phone}`);
  await browser.close();
});
