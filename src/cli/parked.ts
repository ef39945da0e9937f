// `marmot -config FILE -parked [-retry | -discard [-yes]]`: the changes this node could not apply, and acting on them.

import { createInterface } from "node:readline/promises";
import type { Config } from "../config/types.js";
import type { Logger } from "../log.js";
import { sleep } from "../sleep.js";
import { Applier } from "../sqlite/applier.js";
import { installCapture } from "../sqlite/capture.js";
import { openDatabase } from "../sqlite/open.js";
import { countParked, discardParked, listParked, parkedRequestPending, requestParkedAction, takeParkedRequest } from "../sqlite/parked.js";
import { batchOrigin } from "../wire/codec.js";
import { formatTable } from "./table.js";

export interface ParkedOptions {
  retry: boolean;
  discard: boolean;
  yes: boolean;
}

/** How long a running node gets to take a retry request before this command applies the changes itself. */
const NODE_ANSWER_MS = 10_000;

export async function parkedCommand(
  config: Config,
  options: ParkedOptions,
  logger: Logger,
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  const db = openDatabase(config.dbPath, logger);
  try {
    if (options.retry) return await retry(db, config, logger, out);
    if (options.discard) return await discard(db, config, options.yes, logger, out);
    const entries = listParked(db);
    if (entries.length === 0) {
      out.write(`no parked changes in ${config.dbPath}\n`);
      return 0;
    }
    out.write(
      formatTable(
        ["ID", "TABLE", "REASON", "SINCE", "ORIGIN", "STREAM/SEQ"],
        entries.map((e) => [
          String(e.id),
          e.table ?? "(undecodable)",
          e.reason,
          new Date(e.parkedAt).toISOString(),
          e.origin || "?",
          `${e.stream}/${e.seq}`,
        ]),
      ),
    );
    out.write(
      `${entries.length} parked change(s). Fix the schema (or whatever the reason says), then: marmot -config FILE -parked -retry;` +
        " or drop them: marmot -config FILE -parked -discard\n",
    );
    return 0;
  } finally {
    db.close();
  }
}

/**
 * A running node applies parked changes itself (its applier knows which rows have newer local changes on the way),
 * so the request goes to it through the database; only when no node takes it does this command apply them on its
 * own connection, as the node would at its next start.
 */
async function retry(db: ReturnType<typeof openDatabase>, config: Config, logger: Logger, out: NodeJS.WritableStream): Promise<number> {
  const before = countParked(db);
  if (before === 0) {
    out.write("no parked changes to retry\n");
    return 0;
  }
  requestParkedAction(db, "retry");
  const deadline = Date.now() + NODE_ANSWER_MS;
  while (parkedRequestPending(db) && Date.now() < deadline) await sleep(200);
  let applied: number;
  if (!parkedRequestPending(db)) {
    applied = before - countParked(db);
    logger.info("the running marmot retried the parked changes", { applied, still_parked: before - applied });
  } else {
    logger.info(`no running marmot took the request within ${NODE_ANSWER_MS / 1000} s; retrying here`);
    const { tables, epoch } = installCapture(db, logger, config.tables);
    const applier = new Applier(db, logger.child({ component: "applier" }), config.publish ? { origin: batchOrigin(config.nodeId, epoch) } : {});
    applier.setTables(tables);
    applied = applier.retryParked();
    takeParkedRequest(db);
    logger.info("retried the parked changes", { applied, still_parked: before - applied });
  }
  const left = countParked(db);
  out.write(`applied ${applied} of ${before} parked change(s); ${left} still parked\n`);
  return left === 0 ? 0 : 1;
}

async function discard(
  db: ReturnType<typeof openDatabase>,
  config: Config,
  yes: boolean,
  logger: Logger,
  out: NodeJS.WritableStream,
): Promise<number> {
  const count = countParked(db);
  if (count === 0) {
    out.write("no parked changes to discard\n");
    return 0;
  }
  if (!yes) {
    if (!process.stdin.isTTY) {
      logger.error("-parked -discard asks for a confirmation and there is no terminal to ask on: add -yes to discard without asking");
      return 2;
    }
    const rl = createInterface({ input: process.stdin, output: process.stdout });
    const answer = await rl.question(`Discard ${count} parked change(s) in ${config.dbPath}? They will never be applied on this node. [y/N] `);
    rl.close();
    if (!/^y(es)?$/i.test(answer.trim())) {
      out.write("nothing discarded\n");
      return 1;
    }
  }
  const removed = discardParked(db);
  // The running node keeps later changes of those tables waiting behind them: it must learn they are gone.
  requestParkedAction(db, "reload");
  logger.warn("discarded parked changes: this node will never apply them", { changes: removed, db: config.dbPath });
  out.write(`discarded ${removed} parked change(s)\n`);
  return 0;
}
