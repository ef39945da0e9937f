// The logger's two formats, captured from its output: fields, levels and child loggers.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createLogger } from "../../src/logger.js";

function capture(format: "console" | "json", verbose = false) {
  const lines: string[] = [];
  const logger = createLogger({ format, verbose }, { write: (chunk: string) => void lines.push(...chunk.split("\n").filter((l) => l !== "")) });
  return { logger, lines };
}

describe("json format", () => {
  test("one object a line with time, level word, msg and the fields", () => {
    const { logger, lines } = capture("json");
    logger.info("applied batch", { stream: "marmot-changes-1-1", seq: 42, rows: 500 });
    assert.equal(lines.length, 1);
    const entry = JSON.parse(lines[0]!);
    assert.equal(entry.level, "info");
    assert.equal(entry.msg, "applied batch");
    assert.equal(entry.stream, "marmot-changes-1-1");
    assert.equal(entry.seq, 42);
    assert.equal(entry.rows, 500);
    assert.ok(!Number.isNaN(Date.parse(entry.time)), `time should be a date: ${entry.time}`);
    assert.equal(entry.pid, undefined);
  });

  test("errors keep their message, bigints keep every digit", () => {
    const { logger, lines } = capture("json");
    logger.error("publish failed", { error: new Error("timeout", { cause: new Error("no responders") }), seq: 18446744073709551615n });
    const entry = JSON.parse(lines[0]!);
    assert.equal(entry.level, "error");
    assert.equal(entry.error.message, "timeout: no responders");
    assert.equal(entry.seq, "18446744073709551615");
  });

  test("child loggers add their fields to every line", () => {
    const { logger, lines } = capture("json");
    const child = logger.child({ component: "publisher", shard: 2 });
    child.warn("retrying");
    child.child({ attempt: 3 }).info("connected");
    const [first, second] = lines.map((line) => JSON.parse(line));
    assert.equal(first.component, "publisher");
    assert.equal(first.shard, 2);
    assert.equal(first.level, "warn");
    assert.equal(second.component, "publisher");
    assert.equal(second.attempt, 3);
  });

  test("debug is dropped unless verbose", () => {
    const quiet = capture("json");
    quiet.logger.debug("detail");
    quiet.logger.info("shown");
    assert.deepEqual(
      quiet.lines.map((line) => JSON.parse(line).msg),
      ["shown"],
    );

    const verbose = capture("json", true);
    verbose.logger.debug("detail");
    assert.equal(JSON.parse(verbose.lines[0]!).level, "debug");
  });
});

describe("console format", () => {
  test("time, padded level, message, then key=value", () => {
    const { logger, lines } = capture("console");
    logger.info("applied batch", { stream: "marmot-changes-1-1", seq: 42, rows: 500 });
    assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO {2}applied batch stream=marmot-changes-1-1 seq=42 rows=500$/);
  });

  test("component comes first, strings with spaces are quoted, errors show their message", () => {
    const { logger, lines } = capture("console");
    logger.child({ shard: 1, component: "consumer" }).error("apply failed", { table: "my table", error: new Error("disk full") });
    assert.match(lines[0]!, / ERROR apply failed component=consumer shard=1 table="my table" error="disk full"$/);
  });

  test("debug is dropped unless verbose", () => {
    const quiet = capture("console");
    quiet.logger.debug("detail");
    assert.deepEqual(quiet.lines, []);

    const verbose = capture("console", true);
    verbose.logger.debug("detail", { n: 1 });
    assert.match(verbose.lines[0]!, / DEBUG detail n=1$/);
  });
});
