// The `nats` snapshot store: a JetStream object store on marmot's own NATS connection (the default store).

import { createReadStream, createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { StorageType } from "@nats-io/jetstream";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { SnapshotAccessError, SnapshotNotFoundError, SnapshotStoreError } from "../../errors.js";
import { describeJetStreamError } from "../../stream/jetstream-ready.js";
import { progressCounter } from "../progress.js";
import type { SnapshotStore, TransferOptions } from "../store.js";

export interface NatsStoreOptions {
  bucket: string;
  replicas: number;
}

/** How long one chunk's publish may wait for JetStream's ack before the upload fails (and leaves the old object). */
const CHUNK_TIMEOUT_MS = 30_000;

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

  async download(name: string, localPath: string, options: TransferOptions = {}): Promise<void> {
    const bucket = await this.bucket();
    let result;
    try {
      result = await bucket.get(name);
    } catch (err) {
      throw this.failure(`download "${name}"`, err);
    }
    if (result === null) throw new SnapshotNotFoundError(`no object "${name}" in ${this.description}`);
    const outcome = result.error.catch((err: unknown) => err as Error);
    try {
      await pipeline(Readable.fromWeb(result.data as never), progressCounter(options, result.info.size), createWriteStream(localPath), {
        signal: options.signal,
      });
    } catch (err) {
      if (options.signal?.aborted) throw options.signal.reason;
      throw this.failure(`download "${name}"`, err);
    }
    const failed = await outcome;
    if (failed) throw this.failure(`download "${name}"`, failed);
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
