// Process liveness and command lines as the orphaned-server check reads them, through both ways of asking.

import assert from "node:assert/strict";
import { once } from "node:events";
import { describe, it } from "node:test";
import { commandLineFromPs, isProcessAlive, processCommandLine } from "../../src/stream/process-check.js";
import { spawnTracked, untrackPid, useProcessCleanup } from "../helpers/processes.js";

useProcessCleanup();

describe("process checks", () => {
  it("see a running process and its command line, and no longer once it has exited", async () => {
    const child = spawnTracked("sleep", ["30.5"]);
    const pid = child.pid!;
    assert.equal(isProcessAlive(pid), true);
    assert.match(processCommandLine(pid) ?? "", /sleep 30\.5/);
    assert.match(commandLineFromPs(pid) ?? "", /sleep 30\.5/);

    const exited = once(child, "exit");
    child.kill("SIGKILL");
    await exited;
    untrackPid(pid);
    assert.equal(isProcessAlive(pid), false);
    assert.equal(processCommandLine(pid), undefined);
    assert.equal(commandLineFromPs(pid), undefined);
  });

  it("count a process of another user as alive", { skip: process.getuid?.() === 0 ? "root may signal every process" : false }, () => {
    // pid 1 always exists and belongs to root: signal 0 fails with EPERM for anyone else.
    assert.equal(isProcessAlive(1), true);
  });
});
