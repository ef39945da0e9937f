// The one interface every snapshot store implements (nats, s3, webdav, sftp, file): whole objects by name,
// streamed between the store and local files so that memory stays flat whatever the database's size.
//
// Invariant every store keeps: an object of a name is replaced only once its new content is complete. A failed or
// half-done upload leaves the previous object of that name as it was (a temporary name and a rename, an object
// store's own atomic put, or a multipart upload that is completed last).

export interface TransferProgress {
  /** bytes moved so far */
  bytes: number;
  /** the object's whole size when known */
  total?: number;
}

export interface SnapshotStore {
  /** For logs and errors: where the objects live, without credentials ("s3://bucket/path", "NATS object store X"). */
  readonly description: string;
  /** Upload the file at `localPath` as `name`. Throws SnapshotStoreError (retry) or SnapshotAccessError (config). */
  upload(name: string, localPath: string, options?: TransferOptions): Promise<void>;
  /**
   * Download `name` into `localPath` (created or truncated). Throws SnapshotNotFoundError when there is no such
   * object, SnapshotStoreError or SnapshotAccessError as upload does.
   */
  download(name: string, localPath: string, options?: TransferOptions): Promise<void>;
  /** Write a small object whole (the manifest), with the same all-or-nothing rule. */
  writeSmall(name: string, content: Uint8Array): Promise<void>;
  /** Read a small object whole; null when there is no such object. */
  readSmall(name: string): Promise<Uint8Array | null>;
  /** Remove `name`; no error when it is already gone. */
  remove(name: string): Promise<void>;
  /** Release connections. */
  close(): Promise<void>;
}

export interface TransferOptions {
  signal?: AbortSignal;
  onProgress?: (progress: TransferProgress) => void;
}
