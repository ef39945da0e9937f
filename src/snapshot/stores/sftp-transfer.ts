// Streamed SFTP file transfers with many requests in flight: one request at a time (ssh2's streams) waits a round
// trip per 32 KB, which makes a large snapshot crawl; a fixed window keeps the speed up and memory bounded.

import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import type { SFTPWrapper } from "ssh2";
import type { TransferOptions } from "../store.js";

/** SFTP servers must accept 32 KB requests; 64 of them in flight hold 2 MB at most. */
const CHUNK = 32 * 1024;
export const PIPELINED = 64;

function call<T = void>(run: (callback: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => run((err, value) => (err ? reject(err) : resolve(value as T))));
}

/** Runs the tasks `next` yields with at most `inFlight` at once; the first failure stops it. */
async function windowed(next: () => Promise<(() => Promise<void>) | undefined>, inFlight: number, signal?: AbortSignal): Promise<void> {
  const running = new Set<Promise<void>>();
  let failure: unknown;
  for (;;) {
    signal?.throwIfAborted();
    if (failure !== undefined) break;
    const task = await next();
    if (task === undefined) break;
    const run: Promise<void> = task().then(
      () => void running.delete(run),
      (err) => {
        running.delete(run);
        failure ??= err;
      },
    );
    running.add(run);
    if (running.size >= inFlight) await Promise.race(running);
  }
  await Promise.all(running);
  if (failure !== undefined) throw failure;
  signal?.throwIfAborted();
}

/**
 * Copies the local file into `remotePath` (created or truncated), `inFlight` writes at a time: 1 for servers that
 * take writes only in order (rclone's without a cache, some gateways), which may handle pipelined ones out of order.
 */
export async function sftpUpload(
  sftp: SFTPWrapper,
  localPath: string,
  remotePath: string,
  total: number,
  inFlight: number,
  options?: TransferOptions,
): Promise<void> {
  const handle = await call<Buffer>((done) => sftp.open(remotePath, "w", done));
  const chunks = createReadStream(localPath, { highWaterMark: CHUNK })[Symbol.asyncIterator]();
  let position = 0;
  let written = 0;
  try {
    await windowed(
      async () => {
        const { value, done } = await chunks.next();
        if (done) return undefined;
        const chunk = value as Buffer;
        const at = position;
        position += chunk.length;
        return async () => {
          await call((finished) => sftp.write(handle, chunk, 0, chunk.length, at, finished));
          written += chunk.length;
          options?.onProgress?.({ bytes: written, total });
        };
      },
      inFlight,
      options?.signal,
    );
  } finally {
    await chunks.return?.();
    await call((done) => sftp.close(handle, done)).catch(() => undefined);
  }
}

/** Copies `remotePath` (of `size` bytes) into the local file (created or truncated). */
export async function sftpDownload(sftp: SFTPWrapper, remotePath: string, localPath: string, size: number, options?: TransferOptions): Promise<void> {
  const handle = await call<Buffer>((done) => sftp.open(remotePath, "r", done));
  const local = await open(localPath, "w");
  let position = 0;
  let received = 0;
  try {
    await windowed(
      async () => {
        if (position >= size) return undefined;
        const at = position;
        const length = Math.min(CHUNK, size - at);
        position += length;
        return async () => {
          const buffer = Buffer.allocUnsafe(length);
          let filled = 0;
          // A server may answer with fewer bytes than asked: ask again for the rest.
          while (filled < length) {
            const got = await new Promise<number>((resolve, reject) =>
              sftp.read(handle, buffer, filled, length - filled, at + filled, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead))),
            );
            if (got === 0)
              throw new Error(`${remotePath} ended at ${at + filled} bytes, before its size of ${size} (did it change during the download?)`);
            filled += got;
          }
          await local.write(buffer, 0, length, at);
          received += length;
          options?.onProgress?.({ bytes: received, total: size });
        };
      },
      PIPELINED,
      options?.signal,
    );
  } finally {
    await local.close();
    await call((done) => sftp.close(handle, done)).catch(() => undefined);
  }
}
