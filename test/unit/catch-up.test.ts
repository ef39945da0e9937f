// Catching up before publishing: it ends when the streams are applied, and gives up, saying why, when nothing moves.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { catchUp, type CatchUpStream } from "../../src/stream/catch-up.js";
import { recordingLogger } from "../helpers/sqlite.js";

/** A stream that ends at `end` and whose consumer applies one message each `everyMs` (never when undefined). */
function stream(name: string, end: number | (() => Promise<number>), everyMs?: number): CatchUpStream & { stop(): void } {
  let applied = 0;
  const timer = everyMs === undefined ? undefined : setInterval(() => applied++, everyMs);
  return {
    stream: name,
    streamEnd: typeof end === "number" ? async () => end : end,
    appliedSequence: () => applied,
    stop: () => clearInterval(timer),
  };
}

describe("catching up before publishing", () => {
  it("ends once every stream is applied to where it ended", async () => {
    const streams = [stream("s1", 5, 5), stream("s2", 3, 5)];
    try {
      const logger = recordingLogger();
      assert.equal(await catchUp(streams, logger, new AbortController().signal, { stallMs: 10_000, pollMs: 5 }), true);
      assert.ok(streams.every((s) => s.appliedSequence() >= (s.stream === "s1" ? 5 : 3)));
    } finally {
      for (const s of streams) s.stop();
    }
  });

  it("gives up on a consumer that applies nothing, and says which stream and how far", async () => {
    const stuck = stream("s1", 10);
    const logger = recordingLogger();
    assert.equal(await catchUp([stuck], logger, new AbortController().signal, { stallMs: 200, pollMs: 10 }), false);
    const line = logger.lines.find((l) => l.level === "error");
    assert.ok(line, "an error line says why publishing goes on");
    assert.equal(line.fields?.stream, "s1");
    assert.equal(line.fields?.until, 10);
  });

  it("gives up when the stream's end cannot be read, and reports the error instead of swallowing it", async () => {
    const unreadable = stream("s1", async () => {
      throw new Error("no responders available");
    });
    const logger = recordingLogger();
    assert.equal(await catchUp([unreadable], logger, new AbortController().signal, { stallMs: 200, pollMs: 10 }), false);
    assert.equal(logger.lines.filter((l) => l.level === "warn" && /cannot read where the stream ends/.test(l.message)).length, 1, "logged once");
    assert.match(String(logger.lines.find((l) => l.level === "error")?.fields?.reason), /no responders/);
  });

  it("keeps waiting while applying progresses, however long it takes", async () => {
    const slow = stream("s1", 20, 20);
    try {
      // Each message takes 20 ms, 400 ms in all: twice the stall limit, yet it never stalls.
      assert.equal(await catchUp([slow], recordingLogger(), new AbortController().signal, { stallMs: 200, pollMs: 5 }), true);
    } finally {
      slow.stop();
    }
  });

  it("stops at once when the node stops", async () => {
    const controller = new AbortController();
    const waiting = catchUp([stream("s1", 10)], recordingLogger(), controller.signal, { stallMs: 60_000, pollMs: 10 });
    controller.abort(new Error("marmot is stopping"));
    await assert.rejects(waiting, /marmot is stopping/);
  });
});
