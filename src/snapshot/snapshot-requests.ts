// Asking the cluster for a snapshot: a node that needs one and finds none stored that covers its gap sends a request;
// a running node with a complete state answers and saves one (see NodeSnapshots for "complete").
//
// Plain NATS request/reply on `<subject_prefix>.snapshot.request` (the streams capture `<subject_prefix>-N-i`
// only), answered in a queue group so that one node, not all of them, takes it. The answer only says whether that
// node will save; the requester then watches the store for a snapshot that covers what it needs.

import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "../log.js";
import type { Coverage } from "./restore-decision.js";

export interface SnapshotRequest {
  /** node id of the requester, for the logs */
  from: string;
  /** per stream, the sequence the snapshot must cover */
  needs: Coverage;
}

export interface SnapshotReply {
  node: string;
  /** true: this node saves a snapshot now (or one is being saved) */
  accepted: boolean;
  /** when not accepted: why */
  reason?: string;
}

export function snapshotRequestSubject(subjectPrefix: string): string {
  return `${subjectPrefix}.snapshot.request`;
}

const QUEUE_GROUP = "marmot-snapshot";
const REQUEST_TIMEOUT_MS = 5000;

/** Sends one request; undefined when no node with a complete state listens (or none answered in time). */
export async function askForSnapshot(nc: NatsConnection, subjectPrefix: string, request: SnapshotRequest): Promise<SnapshotReply | undefined> {
  try {
    const reply = await nc.request(snapshotRequestSubject(subjectPrefix), JSON.stringify(request), { timeout: REQUEST_TIMEOUT_MS });
    return reply.json<SnapshotReply>();
  } catch {
    // No responders, a timeout, a closed connection: the caller asks again later.
    return undefined;
  }
}

/** Parses a request's body; undefined when it is not one (never throws on bad input from the wire). */
export function parseSnapshotRequest(data: Uint8Array): SnapshotRequest | undefined {
  try {
    const parsed = JSON.parse(new TextDecoder().decode(data)) as Partial<SnapshotRequest>;
    if (typeof parsed.from !== "string" || typeof parsed.needs !== "object" || parsed.needs === null) return undefined;
    const needs: Coverage = {};
    for (const [stream, seq] of Object.entries(parsed.needs)) {
      if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) return undefined;
      needs[stream] = seq;
    }
    return { from: parsed.from, needs };
  } catch {
    return undefined;
  }
}

/** Listens for requests while started; `answer` decides and starts the save, and says what to reply. */
export class SnapshotRequestListener {
  private subscription: Subscription | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly subjectPrefix: string,
    private readonly answer: (request: SnapshotRequest) => SnapshotReply,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (this.subscription) return;
    this.subscription = this.nc.subscribe(snapshotRequestSubject(this.subjectPrefix), {
      queue: QUEUE_GROUP,
      callback: (err, msg) => {
        if (err) return;
        const request = parseSnapshotRequest(msg.data);
        if (!request) {
          this.logger.warn("ignored a snapshot request that is not one", { subject: msg.subject, bytes: msg.data.length });
          return;
        }
        msg.respond(JSON.stringify(this.answer(request)));
      },
    });
  }

  stop(): void {
    this.subscription?.unsubscribe();
    this.subscription = undefined;
  }
}
