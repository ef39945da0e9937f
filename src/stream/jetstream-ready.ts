// Waits until JetStream answers (a fresh cluster needs seconds to elect a meta leader) and explains its errors.

import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { NatsError } from "../errors.js";
import type { Logger } from "../log.js";
import { sleep } from "../sleep.js";

const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 2000;
const WAIT_LOG_INTERVAL_MS = 15_000;

/** Resolves with a JetStreamManager once the JetStream API answers; aborting the signal throws signal.reason. */
export async function waitForJetStream(nc: NatsConnection, logger: Logger, signal?: AbortSignal): Promise<JetStreamManager> {
  const startedAt = Date.now();
  let attempt = 0;
  let lastLoggedAt = 0;
  for (;;) {
    signal?.throwIfAborted();
    attempt++;
    try {
      const jsm = await jetstreamManager(nc, { checkAPI: false });
      await jsm.getAccountInfo();
      if (attempt > 1) {
        logger.info(`JetStream is ready after ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
      }
      return jsm;
    } catch (err) {
      if (nc.isClosed()) {
        throw new NatsError(`the NATS connection closed while waiting for JetStream: ${describeJetStreamError(err)}`, { cause: err });
      }
      const now = Date.now();
      if (attempt === 1) {
        logger.info(`waiting for JetStream: ${describeJetStreamError(err)}`);
        lastLoggedAt = now;
      } else if (now - lastLoggedAt >= WAIT_LOG_INTERVAL_MS) {
        logger.warn(`still waiting for JetStream after ${Math.round((now - startedAt) / 1000)} s: ${describeJetStreamError(err)}`);
        lastLoggedAt = now;
      }
    }
    await sleep(Math.min(FIRST_RETRY_MS * 2 ** Math.min(attempt - 1, 10), MAX_RETRY_MS), signal);
  }
}

/**
 * A message a person can act on for a JetStream failure. The client reports "jetstream is not enabled" both
 * when JetStream is off and when no stream captures a published subject: the subject tells them apart.
 */
export function describeJetStreamError(err: unknown, subject?: string): string {
  if (!(err instanceof Error)) {
    return String(err);
  }
  const code = (err as { code?: unknown }).code;
  if (err.name === "JetStreamNotEnabled" || /jetstream is not enabled|no responders/i.test(err.message)) {
    const target = subject ?? noRespondersSubject(err);
    if (target !== undefined && !target.startsWith("$JS.API")) {
      return `no JetStream stream captures subject ${target}: the stream may not exist yet or JetStream is unavailable`;
    }
    return (
      "nothing answers JetStream API requests: JetStream is not enabled on the server (add a jetstream block to its config), " +
      "or the cluster has no JetStream meta leader yet (it needs a majority of its servers up; on nats-server 2.15 a new cluster " +
      "may wait for all of them)"
    );
  }
  if (code === 10039 || /not enabled for account/i.test(err.message)) {
    return `JetStream is not enabled for this account (${err.message}): enable JetStream for the account in the server config`;
  }
  if (code === 10008 || /temporarily unavailable/i.test(err.message)) {
    return (
      `JetStream is temporarily unavailable (${err.message}): the cluster is electing a leader, lacks a majority, ` +
      "or is new and waits for all of its servers (nats-server 2.15)"
    );
  }
  if (err.name === "TimeoutError" || /timeout/i.test(err.message)) {
    return (
      "JetStream did not answer in time: the cluster may have no meta leader yet (it needs a majority of its servers " +
      "up; on nats-server 2.15 a new cluster may wait for all of them) or the server is overloaded"
    );
  }
  return err.message;
}

/** The subject of the "no responders" error somewhere in the cause chain, if any. */
function noRespondersSubject(err: Error): string | undefined {
  let current: unknown = err;
  for (let depth = 0; current instanceof Error && depth < 5; depth++) {
    const subject = (current as { subject?: unknown }).subject;
    if (typeof subject === "string" && subject !== "") {
      return subject;
    }
    const match = /no responders: '([^']+)'/.exec(current.message);
    if (match !== null) {
      return match[1];
    }
    current = current.cause;
  }
  return undefined;
}
