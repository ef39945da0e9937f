// The snapshot lease: one node at a time saves a snapshot. A key in a NATS KV bucket whose entries expire after the
// lease's time to live, taken with a create (fails while another node holds it) and renewed with a compare-and-set.
//
// Invariant: a holder stops saving before anyone else can take the lease. The entry expires TTL after its last
// renewal; the holder renews every TTL / 3, and gives the lease up (aborts its save) as soon as a renewal is refused
// or none has succeeded for 2/3 of the TTL, which is before the entry can expire and another node can create it.

import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "../log.js";

/** The part of a KV bucket the lease uses, so that its rule can be tested without a server. */
export interface LeaseStore {
  create(key: string, value: string): Promise<number>;
  update(key: string, value: string, revision: number): Promise<number>;
  delete(key: string, opts: { previousSeq: number }): Promise<void>;
}

/** The original's lease: 10 s; long enough for a slow renewal, short enough that a crashed holder is soon replaced. */
export const LEASE_TTL_MS = 10_000;
const LEASE_KEY = "snapshot";

/** Opens (creating when needed) the lease bucket `<stream_prefix>-snapshot-lease`. */
export async function openLeaseBucket(nc: NatsConnection, streamPrefix: string, replicas: number): Promise<LeaseStore> {
  const kv: KV = await new Kvm(nc).create(`${streamPrefix}-snapshot-lease`, { ttl: LEASE_TTL_MS, history: 1, replicas });
  return kv;
}

/** A lease this node holds: `signal` aborts when it is lost; release() gives it back. */
export interface HeldLease {
  readonly signal: AbortSignal;
  release(): Promise<void>;
}

export class SnapshotLease {
  constructor(
    private readonly store: LeaseStore,
    /** who holds it, for the entry's value (a person reading the bucket) */
    private readonly holder: string,
    private readonly logger: Logger,
    private readonly ttlMs = LEASE_TTL_MS,
  ) {}

  /** Takes the lease, or returns undefined when another node holds it. Other errors (NATS down) are thrown. */
  async tryAcquire(): Promise<HeldLease | undefined> {
    let revision: number;
    try {
      revision = await this.store.create(LEASE_KEY, this.value());
    } catch (err) {
      if (isTaken(err)) return undefined;
      throw err;
    }
    return this.hold(revision);
  }

  private value(): string {
    return JSON.stringify({ holder: this.holder, at: new Date().toISOString() });
  }

  private hold(firstRevision: number): HeldLease {
    const lost = new AbortController();
    let revision = firstRevision;
    let renewedAt = Date.now();
    let released = false;
    const renewEvery = this.ttlMs / 3;
    const giveUpAfter = (this.ttlMs * 2) / 3;
    const loseLease = (why: string) => {
      if (lost.signal.aborted) return;
      this.logger.warn("lost the snapshot lease; the snapshot being saved is abandoned", { reason: why });
      lost.abort(new Error(`lost the snapshot lease: ${why}`));
    };
    const timer = setInterval(() => {
      if (lost.signal.aborted) return;
      const attemptAt = Date.now();
      this.store.update(LEASE_KEY, this.value(), revision).then(
        (next) => {
          if (released || lost.signal.aborted) return;
          revision = next;
          renewedAt = attemptAt;
        },
        (err: unknown) => {
          if (released) return;
          if (isTaken(err)) loseLease("another node took it");
          // Otherwise NATS is slow or away: the next tick tries again, and gives up in time.
        },
      );
    }, renewEvery);
    timer.unref();
    // A renewal can stall (NATS away): this timer still gives the lease up in time.
    const deadline = setInterval(
      () => {
        if (Date.now() - renewedAt > giveUpAfter) loseLease(`not renewed for ${Date.now() - renewedAt} ms`);
      },
      Math.max(50, this.ttlMs / 10),
    );
    deadline.unref();
    return {
      signal: lost.signal,
      release: async () => {
        released = true;
        clearInterval(timer);
        clearInterval(deadline);
        if (lost.signal.aborted) return;
        lost.abort(new Error("the snapshot lease was released"));
        await this.store.delete(LEASE_KEY, { previousSeq: revision }).catch(() => undefined);
      },
    };
  }
}

/** The KV's refusal of a create or update because the key is someone else's (wrong last sequence / exists). */
function isTaken(err: unknown): boolean {
  const e = err as { code?: number; api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10071 || e?.code === 10071 || /wrong last sequence|key exists/i.test(e?.message ?? "");
}
