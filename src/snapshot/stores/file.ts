// The `file` snapshot store: objects are files in a folder (a local disk or a shared mount), replaced by rename.

import { createReadStream, createWriteStream } from "node:fs";
import { type FileHandle, mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { randomBytes } from "node:crypto";
import { ConfigError, SnapshotAccessError, SnapshotNotFoundError, SnapshotStoreError } from "../../errors.js";
import { progressCounter } from "../progress.js";
import type { SnapshotStore, TransferOptions } from "../store.js";

const KEY = "[snapshot.file] path";

export class FileSnapshotStore implements SnapshotStore {
  readonly description: string;

  constructor(private readonly folder: string) {
    if (folder === "") throw new ConfigError(`${KEY} is empty: set it to the folder that holds the snapshots (store = "file")`);
    this.description = `folder ${folder}`;
  }

  async upload(name: string, localPath: string, options: TransferOptions = {}): Promise<void> {
    await this.replace(
      name,
      async (temporary) => {
        const { size } = await stat(localPath);
        await pipeline(createReadStream(localPath), progressCounter(options, size), createWriteStream(temporary), { signal: options.signal });
      },
      "upload",
    );
  }

  async download(name: string, localPath: string, options: TransferOptions = {}): Promise<void> {
    const path = this.pathOf(name);
    let handle: FileHandle;
    try {
      handle = await open(path, "r");
    } catch (err) {
      if (code(err) === "ENOENT") throw new SnapshotNotFoundError(`no object "${name}" in ${this.description}`);
      throw this.failure("download", name, err);
    }
    try {
      const { size } = await handle.stat();
      await pipeline(handle.createReadStream({ autoClose: false }), progressCounter(options, size), createWriteStream(localPath), {
        signal: options.signal,
      });
    } catch (err) {
      if (options.signal?.aborted) throw err;
      throw this.failure("download", name, err);
    } finally {
      await handle.close();
    }
  }

  async writeSmall(name: string, content: Uint8Array): Promise<void> {
    await this.replace(
      name,
      async (temporary) => {
        const handle = await open(temporary, "w");
        try {
          await handle.writeFile(content);
        } finally {
          await handle.close();
        }
      },
      "write",
    );
  }

  async readSmall(name: string): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(await readFile(this.pathOf(name)));
    } catch (err) {
      if (code(err) === "ENOENT") return null;
      throw this.failure("read", name, err);
    }
  }

  async remove(name: string): Promise<void> {
    try {
      await rm(this.pathOf(name), { force: true });
    } catch (err) {
      throw this.failure("remove", name, err);
    }
  }

  async close(): Promise<void> {}

  /**
   * Write into a temporary name in the same folder, flush it to the disk, then rename it over `name`: a reader sees
   * the old object or the new one, whole, and a crash leaves at worst a temporary file behind.
   */
  private async replace(name: string, write: (temporary: string) => Promise<void>, action: string): Promise<void> {
    const target = this.pathOf(name);
    const temporary = join(this.folder, `.${name}.${randomBytes(4).toString("hex")}.partial`);
    try {
      await mkdir(this.folder, { recursive: true });
      await write(temporary);
      await fsync(temporary);
      await rename(temporary, target);
      // The rename itself must reach the disk too, or a crash could bring the old object back.
      await fsync(this.folder).catch(() => undefined);
    } catch (err) {
      await rm(temporary, { force: true }).catch(() => undefined);
      if ((err as Error).name === "AbortError") throw err;
      throw this.failure(action, name, err);
    }
  }

  private pathOf(name: string): string {
    if (name === "" || name.includes("/") || name.includes("\\") || name.startsWith(".")) {
      throw new SnapshotStoreError(`"${name}" is not an object name the ${this.description} accepts`);
    }
    return join(this.folder, name);
  }

  private failure(action: string, name: string, err: unknown): Error {
    const reason = (err as Error).message;
    const errno = code(err);
    if (errno === "EACCES" || errno === "EPERM" || errno === "EROFS" || errno === "ENOTDIR") {
      return new SnapshotAccessError(`cannot ${action} "${name}" in ${this.description}: ${reason}; check ${KEY} and that marmot may write there`, {
        cause: err,
      });
    }
    return new SnapshotStoreError(`cannot ${action} "${name}" in ${this.description}: ${reason}`, { cause: err });
  }
}

async function fsync(path: string): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function code(err: unknown): string | undefined {
  return (err as { code?: string }).code;
}
