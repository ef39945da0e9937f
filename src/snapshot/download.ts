// Fetches a snapshot's data object into a local file and proves it is the one the manifest describes.

import { stat } from "node:fs/promises";
import { basename, join } from "node:path";
import Database from "better-sqlite3";
import type { Config } from "../config/types.js";
import { SnapshotInvalidError } from "../errors.js";
import { checkFactsMatchManifest, readSnapshotFacts } from "./facts.js";
import { checkManifestFits, type SnapshotManifest } from "./manifest.js";
import { removeDatabaseFiles, sha256OfFile, temporaryPathBeside } from "./save.js";
import type { SnapshotStore, TransferProgress } from "./store.js";

export interface DownloadOptions {
  /** the folder for the temporary file: beside the database, so the restore reads it from the same disk */
  dir: string;
  signal?: AbortSignal;
  onProgress?: (progress: TransferProgress) => void;
}

/**
 * Download the manifest's data object into a temporary file in `dir` and return its path (the caller removes it
 * after the restore). Refuses with SnapshotInvalidError, leaving no file behind, a snapshot made for another
 * config, and an object whose size, checksum or own facts differ from the manifest.
 */
export async function downloadSnapshot(store: SnapshotStore, manifest: SnapshotManifest, config: Config, options: DownloadOptions): Promise<string> {
  const where = `object "${manifest.object}" in ${store.description}`;
  checkManifestFits(manifest, config, where);
  const path = temporaryPathBeside(join(options.dir, basename(config.dbPath)), "download");
  let kept = false;
  try {
    await store.download(manifest.object, path, { signal: options.signal, onProgress: options.onProgress });
    const { size } = await stat(path);
    if (size !== manifest.size) {
      throw new SnapshotInvalidError(
        `snapshot ${where} has ${size} bytes, its manifest says ${manifest.size}: it is truncated or was replaced; it is refused, nothing was changed; save a new snapshot`,
      );
    }
    const sha256 = await sha256OfFile(path, options.signal);
    if (sha256 !== manifest.sha256) {
      throw new SnapshotInvalidError(
        `snapshot ${where} does not match its checksum (sha256 ${sha256}, manifest ${manifest.sha256}): it is corrupt; it is refused, nothing was changed; save a new snapshot`,
      );
    }
    checkFile(path, manifest, where);
    kept = true;
    return path;
  } finally {
    if (!kept) await removeDatabaseFiles(path);
  }
}

/** The file opens as SQLite and its own facts agree with the manifest. */
function checkFile(path: string, manifest: SnapshotManifest, where: string): void {
  let file: Database.Database;
  try {
    file = new Database(path, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new SnapshotInvalidError(`snapshot ${where} cannot be opened as SQLite (${(err as Error).message}); save a new snapshot`);
  }
  try {
    const facts = readSnapshotFacts(file, "main", `snapshot ${where}`);
    checkFactsMatchManifest(facts, manifest, `snapshot ${where}`);
  } finally {
    file.close();
  }
}
