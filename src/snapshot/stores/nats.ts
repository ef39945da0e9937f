// The `nats` snapshot store: a JetStream object store on marmot's own NATS connection (the default store).

import { createHash } from "node:crypto";
import { once } from "node:events";
import { createReadStream, createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import { finished } from "node:stream/promises";
import { jetstream, StorageType } from "@nats-io/jetstream";
import { Objm, type ObjectInfo, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { SnapshotAccessError, SnapshotNotFoundError, SnapshotStoreError } from "../../errors.js";
import type { Logger } from "../../log.js";
import { describeJetStreamError } from "../../stream/jetstream-ready.js";
import { progressCounter } from "../progress.js";
import type { SnapshotStore, TransferOptions } from "../store.js";

export interface NatsStoreOptions {
  bucket: string;
  replicas: number;
}

/** How long one chunk's publish may wait for JetStream's ack before the upload fails (and leaves the old object). */
const CHUNK_TIMEOUT_MS = 30_000;
/** Chunks (128 KiB each) fetched ahead while downloading. The bucket's stream is OBJ_<bucket>, its chunks
 * $O.<bucket>.C.<object nuid>: the object store's layout, which every NATS client shares. */
const DOWNLOAD_BATCH = 16;

/** The default bucket: one per cluster, named after its streams. */
export function defaultSnapshotBucket(streamPrefix: string): string {
  return `${streamPrefix}-snapshot-store`;
}

export class NatsSnapshotStore implements SnapshotStore {
  readonly description: string;
  private opened: Promise<ObjectStore> | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: NatsStoreOptions,
    private readonly logger: Logger,
  ) {
    this.description = `NATS object store ${options.bucket}`;
  }

  /**
   * The bucket, created when missing. An object store's put publishes the object's chunks first and its metadata
   * last, with a rollup: until that last message, readers get the previous object whole, and a failed put purges
   * the chunks it had sent.
   */
  private bucket(): Promise<ObjectStore> {
    this.opened ??= new Objm(this.nc)
      .create(this.options.bucket, { replicas: this.options.replicas, storage: StorageType.File })
      .then(async (bucket) => {
        // An existing bucket is opened as it is: a changed [snapshot.nats] replicas does not apply to it.
        const { replicas } = await bucket.status();
        if (replicas !== this.options.replicas) {
          this.logger.warn(
            `bucket ${this.options.bucket} exists with ${replicas} replicas; [snapshot.nats] replicas = ${this.options.replicas} applies only to a new bucket`,
            {
              hint: `change it with: nats stream edit OBJ_${this.options.bucket} --replicas ${this.options.replicas}`,
            },
          );
        }
        return bucket;
      })
      .catch((err: unknown) => {
        this.opened = undefined;
        throw this.failure("open the bucket", err);
      });
    return this.opened;
  }

  async upload(name: string, localPath: string, options: TransferOptions = {}): Promise<void> {
    const bucket = await this.bucket();
    const { size } = await stat(localPath);
    const file = createReadStream(localPath, { highWaterMark: 128 * 1024 });
    const counted = file.pipe(progressCounter(options, size));
    file.once("error", (err) => counted.destroy(err));
    const chunks = counted[Symbol.asyncIterator]();
    const signal = options.signal;
    // Pulled by the object store as it publishes, so at most a chunk or two of the file is in memory.
    const source = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (signal?.aborted) {
          controller.error(signal.reason);
          return;
        }
        const next = (await chunks.next()) as IteratorResult<Buffer>;
        if (next.done) controller.close();
        else controller.enqueue(new Uint8Array(next.value.buffer, next.value.byteOffset, next.value.length));
      },
      cancel() {
        file.destroy();
      },
    });
    try {
      await bucket.put({ name }, source, { timeout: CHUNK_TIMEOUT_MS });
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw this.failure(`upload "${name}"`, err);
    } finally {
      file.destroy();
    }
  }

  /**
   * Read the object's chunks with an ordered pull consumer, a bounded batch at a time, and write each to the file
   * before asking for more: the object store's own get() pushes every chunk into memory as fast as the server
   * sends it, so a large snapshot would be held whole when the disk is slower than the network. The digest the
   * object store recorded is checked here instead.
   */
  async download(name: string, localPath: string, options: TransferOptions = {}): Promise<void> {
    const bucket = await this.bucket();
    let info: ObjectInfo | null;
    try {
      info = await bucket.info(name);
    } catch (err) {
      throw this.failure(`download "${name}"`, err);
    }
    if (info === null || info.deleted) throw new SnapshotNotFoundError(`no object "${name}" in ${this.description}`);
    const object = info;
    const file = createWriteStream(localPath);
    const hash = createHash("sha256");
    let bytes = 0;
    try {
      if (object.size > 0) {
        const consumer = await jetstream(this.nc).consumers.get(`OBJ_${this.options.bucket}`, {
          filter_subjects: [`$O.${this.options.bucket}.C.${object.nuid}`],
        });
        const messages = await consumer.consume({ max_messages: DOWNLOAD_BATCH });
        try {
          for await (const message of messages) {
            options.signal?.throwIfAborted();
            hash.update(message.data);
            bytes += message.data.length;
            if (!file.write(message.data)) await once(file, "drain");
            options.onProgress?.({ bytes, total: object.size });
            if (message.info.pending === 0) break;
          }
        } finally {
          await messages.close().catch(() => undefined);
        }
      }
      file.end();
      await finished(file);
    } catch (err) {
      file.destroy();
      if (options.signal?.aborted) throw options.signal.reason;
      throw this.failure(`download "${name}"`, err);
    }
    const digest = `SHA-256=${hash.digest("base64url")}`;
    if (bytes !== object.size || digest.replace(/=+$/, "") !== object.digest.replace(/=+$/, "")) {
      throw new SnapshotStoreError(
        `object "${name}" in ${this.description} came back with ${bytes} bytes and ${digest}, the store recorded ${object.size} and ${object.digest}`,
      );
    }
  }

  async writeSmall(name: string, content: Uint8Array): Promise<void> {
    const bucket = await this.bucket();
    try {
      await bucket.putBlob({ name }, content, { timeout: CHUNK_TIMEOUT_MS });
    } catch (err) {
      throw this.failure(`write "${name}"`, err);
    }
  }

  async readSmall(name: string): Promise<Uint8Array | null> {
    const bucket = await this.bucket();
    try {
      return await bucket.getBlob(name);
    } catch (err) {
      throw this.failure(`read "${name}"`, err);
    }
  }

  async remove(name: string): Promise<void> {
    const bucket = await this.bucket();
    try {
      if ((await bucket.info(name)) === null) return;
      await bucket.delete(name);
    } catch (err) {
      throw this.failure(`remove "${name}"`, err);
    }
  }

  /** The connection is marmot's: it stays open. */
  async close(): Promise<void> {}

  private failure(action: string, err: unknown): Error {
    const code = (err as { code?: unknown }).code;
    const message = err instanceof Error ? err.message : String(err);
    if (code === 10039 || /authorization|permissions violation/i.test(message)) {
      return new SnapshotAccessError(
        `cannot ${action} in ${this.description}: ${message}; give marmot's NATS user JetStream access to bucket ${this.options.bucket} ([snapshot.nats] bucket)`,
        { cause: err },
      );
    }
    return new SnapshotStoreError(`cannot ${action} in ${this.description}: ${describeJetStreamError(err)}`, { cause: err });
  }
}
