// Batches too large for one NATS message, kept as objects in a JetStream object store: stored, read back and
// checked, and removed once their reference message has left its stream.

import { createHash } from "node:crypto";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { Objm, setSha256Backend, StorageType, type ObjectStore } from "@nats-io/obj";
import type { Logger } from "../log.js";
import { sleep } from "../sleep.js";
import { decodeReference, type LargeBatchRef } from "../wire/codec.js";

/** Where the shipper puts a batch that does not fit in one message. */
export interface LargeBatchStore {
  /** Store `payload` whole as `object`; resolves once the object store holds all of it. */
  put(object: string, payload: Buffer, meta: { stream: string }): Promise<void>;
  /** The object's reference message was stored at `seq` of its stream: the object may go once the stream drops it. */
  referenced(object: string, seq: number): Promise<void>;
}

/** A referenced batch read back: its bytes, checked against the reference, or why it cannot be had. */
export type LargeBatchRead = { data: Buffer; problem?: undefined } | { data?: undefined; problem: string };

/**
 * An object whose reference was never recorded (a crash between the reference's store and the record) is removed
 * after this long. The shipper puts an object again when its reference goes out more than an hour after the put,
 * so no reference is stored for an object this old.
 */
const ORPHAN_AGE_MS = 24 * 60 * 60 * 1000;

/** Chunks of the object as it is put: views of the payload, so putting copies nothing whole. */
const PUT_CHUNK_BYTES = 128 * 1024;

/** The object store bucket of large batches, beside the shard streams. */
export function largeBatchBucket(streamPrefix: string): string {
  return `${streamPrefix}-large`;
}

export class JetStreamLargeBatches implements LargeBatchStore {
  private constructor(
    private readonly store: ObjectStore,
    private readonly jsm: JetStreamManager,
    readonly bucket: string,
  ) {}

  /**
   * Opens the bucket, creating it when missing, with as many replicas as the shard streams; waits while JetStream
   * cannot place it yet, saying so once.
   */
  static async open(js: JetStreamClient, bucket: string, replicas: number, logger: Logger, signal: AbortSignal): Promise<JetStreamLargeBatches> {
    // Node's own SHA-256 instead of the client's portable one: a 50 MB object took 1.7 s to put and 2.8 s to read
    // back on one server with the portable one (see the README's figures).
    setSha256Backend("native");
    for (let attempt = 1; ; attempt++) {
      try {
        const store = await new Objm(js).create(bucket, { replicas, storage: StorageType.File });
        return new JetStreamLargeBatches(store, await js.jetstreamManager(), bucket);
      } catch (err) {
        if (signal.aborted) throw err;
        if (attempt === 1)
          logger.warn("waiting for JetStream to create the object store of large changes", { bucket, replicas, reason: (err as Error).message });
        await sleep(Math.min(250 * attempt, 2000), signal);
      }
    }
  }

  async put(object: string, payload: Buffer, meta: { stream: string }): Promise<void> {
    let offset = 0;
    const chunks = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (offset >= payload.length) return controller.close();
        controller.enqueue(payload.subarray(offset, offset + PUT_CHUNK_BYTES));
        offset += PUT_CHUNK_BYTES;
      },
    });
    await this.store.put({ name: object, metadata: { stream: meta.stream } }, chunks);
  }

  async referenced(object: string, seq: number): Promise<void> {
    const info = await this.store.info(object);
    if (info === null) return;
    await this.store.update(object, { metadata: { ...info.metadata, seq: String(seq) } });
  }

  /**
   * The batch a reference stands for, checked by size and sha-256. A missing or corrupt object is a `problem`
   * (it will not get better by waiting); a failure to talk to JetStream throws, to be tried again.
   */
  async read(ref: LargeBatchRef): Promise<LargeBatchRead> {
    const result = await this.store.get(ref.object);
    if (result === null) return { problem: `object "${ref.object}" is not in bucket "${this.bucket}" (removed, or never stored whole)` };
    if (result.info.size !== ref.size) {
      await result.data.cancel().catch(() => undefined);
      return { problem: `object "${ref.object}" has ${result.info.size} bytes, its reference says ${ref.size}` };
    }
    // One buffer of the final size: the chunks are copied in as they come, never gathered and joined.
    const data = Buffer.allocUnsafe(ref.size);
    const hash = createHash("sha256");
    let filled = 0;
    const reader = result.data.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (filled + value.length > ref.size) {
        await reader.cancel().catch(() => undefined);
        return { problem: `object "${ref.object}" holds more than the ${ref.size} bytes its reference says` };
      }
      data.set(value, filled);
      hash.update(value);
      filled += value.length;
    }
    const error = await result.error;
    if (error) {
      if (/digest|sha/i.test(error.message)) return { problem: `object "${ref.object}" is corrupt: ${error.message}` };
      throw error;
    }
    if (filled !== ref.size) return { problem: `object "${ref.object}" holds ${filled} bytes, its reference says ${ref.size}` };
    if (!hash.digest().equals(ref.sha256)) return { problem: `object "${ref.object}" does not match the sha-256 of its reference (corrupt)` };
    return { data };
  }

  /** The batch `data` carries: `data` itself, or for a reference, its object read back (`data` when it cannot be). */
  async batchBytes(data: Uint8Array): Promise<Uint8Array> {
    let ref: LargeBatchRef | undefined;
    try {
      ref = decodeReference(data);
    } catch {
      return data;
    }
    if (ref === undefined) return data;
    return (await this.read(ref)).data ?? data;
  }

  /**
   * Removes this node's objects (their names begin with `prefix`) whose reference message the stream no longer
   * holds, and those never referenced that are older than a day. Returns how many went.
   */
  async removeUnreferenced(prefix: string, firstSeq: (stream: string) => Promise<number>, orphanAgeMs = ORPHAN_AGE_MS): Promise<number> {
    const firstSeqs = new Map<string, number>();
    let removed = 0;
    for (const info of await this.store.list()) {
      if (info.deleted || !info.name.startsWith(prefix)) continue;
      const stream = info.metadata?.["stream"] ?? "";
      const seq = Number(info.metadata?.["seq"] ?? 0);
      let gone: boolean;
      if (seq > 0 && stream !== "") {
        if (!firstSeqs.has(stream)) firstSeqs.set(stream, await firstSeq(stream));
        gone = seq < firstSeqs.get(stream)!;
      } else {
        gone = Date.now() - Date.parse(info.mtime) > orphanAgeMs;
      }
      if (!gone) continue;
      await this.store.delete(info.name);
      removed++;
    }
    return removed + (await this.removeAbandonedChunks(orphanAgeMs));
  }

  /**
   * Chunks of a put that never finished (a crash mid-upload): the object store writes an object's description only
   * after its last chunk, so these belong to no object and nothing else removes them. Only chunks untouched for a
   * day go: a put still under way (on any node) writes one every moment. Returns how many puts' chunks went.
   */
  private async removeAbandonedChunks(orphanAgeMs: number): Promise<number> {
    const stream = `OBJ_${this.bucket}`;
    const prefix = `$O.${this.bucket}.C.`;
    const subjects = (await this.jsm.streams.info(stream, { subjects_filter: `${prefix}>` })).state.subjects ?? {};
    const live = new Set((await this.store.list()).map((o) => o.nuid));
    let removed = 0;
    for (const subject of Object.keys(subjects)) {
      if (live.has(subject.slice(prefix.length))) continue;
      const last = await this.jsm.streams.getMessage(stream, { last_by_subj: subject }).catch(() => null);
      if (last !== null && Date.now() - last.time.getTime() <= orphanAgeMs) continue;
      await this.jsm.streams.purge(stream, { filter: subject });
      removed++;
    }
    return removed;
  }
}

/** How often a node looks for its objects whose reference left the stream. */
const CLEANUP_EVERY_MS = 10 * 60 * 1000;

/** Runs removeUnreferenced now and then until `signal` aborts; failures are logged and tried again next time. */
export async function cleanUpLargeBatches(
  store: JetStreamLargeBatches,
  prefix: string,
  jsm: JetStreamManager,
  logger: Logger,
  signal: AbortSignal,
  everyMs = CLEANUP_EVERY_MS,
): Promise<void> {
  while (!signal.aborted) {
    await sleep(everyMs, signal).catch(() => undefined);
    if (signal.aborted) break;
    try {
      const removed = await store.removeUnreferenced(prefix, async (stream) => (await jsm.streams.info(stream)).state.first_seq);
      if (removed > 0)
        logger.info("removed large-change objects whose messages the streams no longer hold", { bucket: store.bucket, objects: removed });
    } catch (err) {
      logger.warn("could not clean up large-change objects; trying again later", { bucket: store.bucket, reason: (err as Error).message });
    }
  }
}
