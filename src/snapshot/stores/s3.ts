// The S3 snapshot store: any S3-compatible endpoint (AWS, MinIO, ...) with the original's [snapshot.s3] keys.

import { createReadStream, createWriteStream, statSync } from "node:fs";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { S3Client, S3ClientConfig } from "@aws-sdk/client-s3";
import type { SnapshotConfig } from "../../config/types.js";
import { ConfigError, SnapshotAccessError, SnapshotNotFoundError, SnapshotStoreError } from "../../errors.js";
import type { Logger } from "../../log.js";
import type { SnapshotStore, TransferOptions } from "../store.js";
import { progressCounter } from "../progress.js";

/**
 * S3's smallest multipart part. Two parts in flight and the one being read bound an upload's memory whatever the
 * file's size (bench/store-transfer.ts: 25 to 50 MB above idle for 200 MB and 800 MB files).
 */
const PART_SIZE = 5 * 1024 * 1024;
const PARTS_IN_FLIGHT = 2;

const CREDENTIAL_ERRORS = new Set([
  "AccessDenied",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "InvalidToken",
  "ExpiredToken",
  "TokenRefreshRequired",
  "CredentialsProviderError",
]);

type S3Config = SnapshotConfig["s3"];

/** The AWS SDK takes about half a second to load: only nodes that use this store pay for it, on first use. */
async function loadSdk() {
  const [client, storage] = await Promise.all([import("@aws-sdk/client-s3"), import("@aws-sdk/lib-storage")]);
  return { ...client, Upload: storage.Upload };
}
type Sdk = Awaited<ReturnType<typeof loadSdk>>;

/** An S3 store for `[snapshot.s3]`; throws ConfigError naming the key when the keys cannot work. */
export function createS3Store(config: S3Config, logger: Logger): SnapshotStore {
  return new S3Store(config, logger);
}

/**
 * "host:port" gets http:// or https:// from use_ssl, as the original's client did; a full URL is taken as it is.
 * Empty means AWS's own endpoint for the region in AWS_REGION.
 */
function endpointUrl(config: S3Config): string | undefined {
  if (config.endpoint === "") return undefined;
  const text = config.endpoint.includes("://") ? config.endpoint : `${config.useSsl ? "https" : "http"}://${config.endpoint}`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    url = new URL("invalid://");
  }
  if (!["http:", "https:"].includes(url.protocol) || url.hostname === "") {
    throw new ConfigError(
      `[snapshot.s3] endpoint "${config.endpoint}" is not an S3 endpoint: give host[:port] (e.g. "minio.internal:9000") or a URL such as https://s3.eu-west-1.amazonaws.com`,
    );
  }
  return url.toString().replace(/\/$/, "");
}

function checkCredentialKeys(config: S3Config): void {
  if (config.accessKey !== "" && config.secret === "") {
    throw new ConfigError("[snapshot.s3] access_key is set but secret is empty: give both, or neither to use the AWS environment variables");
  }
  if (config.accessKey === "" && config.secret !== "") {
    throw new ConfigError("[snapshot.s3] secret is set but access_key is empty: give both, or neither to use the AWS environment variables");
  }
}

class S3Store implements SnapshotStore {
  readonly description: string;
  private readonly clientConfig: S3ClientConfig;
  private connection: Promise<{ sdk: Sdk; client: S3Client }> | undefined;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly endpoint: string;

  constructor(
    config: S3Config,
    private readonly logger: Logger,
  ) {
    if (config.bucket === "") {
      throw new ConfigError('[snapshot.s3] bucket is empty: name the bucket that holds the snapshots (e.g. bucket = "marmot-snapshots")');
    }
    checkCredentialKeys(config);
    const endpoint = endpointUrl(config);
    this.bucket = config.bucket;
    this.prefix = config.path.replace(/^\/+|\/+$/g, "");
    this.endpoint = endpoint ?? "AWS S3";
    this.description = `s3://${this.bucket}/${this.prefix === "" ? "" : `${this.prefix}/`} at ${this.endpoint}`;
    const clientConfig: S3ClientConfig = {
      region: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
      // Custom endpoints (MinIO and most others) do not resolve bucket subdomains.
      forcePathStyle: endpoint !== undefined,
      requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000 },
    };
    if (endpoint !== undefined) clientConfig.endpoint = endpoint;
    // Without keys in the config the SDK's default chain applies: AWS_ACCESS_KEY_ID and friends, profiles, roles.
    if (config.accessKey !== "") {
      clientConfig.credentials = {
        accessKeyId: config.accessKey,
        secretAccessKey: config.secret,
        ...(config.sessionToken === "" ? {} : { sessionToken: config.sessionToken }),
      };
    }
    this.clientConfig = clientConfig;
  }

  private connect(): Promise<{ sdk: Sdk; client: S3Client }> {
    this.connection ??= loadSdk().then((sdk) => ({ sdk, client: new sdk.S3Client(this.clientConfig) }));
    return this.connection;
  }

  private key(name: string): string {
    return this.prefix === "" ? name : `${this.prefix}/${name}`;
  }

  async upload(name: string, localPath: string, options?: TransferOptions): Promise<void> {
    const total = statSync(localPath).size;
    const { sdk, client } = await this.connect();
    const abortController = new AbortController();
    const onAbort = () => abortController.abort(options?.signal?.reason);
    options?.signal?.addEventListener("abort", onAbort, { once: true });
    if (options?.signal?.aborted) onAbort();
    // A multipart upload becomes the object only when completed; on failure or abort Upload aborts it (the
    // default leavePartsOnError = false), so the previous object stays as it was.
    const upload = new sdk.Upload({
      client,
      params: { Bucket: this.bucket, Key: this.key(name), Body: createReadStream(localPath), ContentLength: total },
      partSize: PART_SIZE,
      queueSize: PARTS_IN_FLIGHT,
      abortController,
    });
    upload.on("httpUploadProgress", (progress) => {
      if (progress.loaded !== undefined) options?.onProgress?.({ bytes: progress.loaded, total });
    });
    try {
      await upload.done();
      this.logger.debug("snapshot object uploaded", { store: this.description, object: name, bytes: total });
    } catch (err) {
      throw this.translate(err, name, "upload", options?.signal);
    } finally {
      options?.signal?.removeEventListener("abort", onAbort);
    }
  }

  async download(name: string, localPath: string, options?: TransferOptions): Promise<void> {
    try {
      const { sdk, client } = await this.connect();
      const response = await client.send(new sdk.GetObjectCommand({ Bucket: this.bucket, Key: this.key(name) }), {
        abortSignal: options?.signal,
      });
      await pipeline(response.Body as Readable, progressCounter(options ?? {}, response.ContentLength), createWriteStream(localPath), {
        signal: options?.signal,
      });
    } catch (err) {
      throw this.translate(err, name, "download", options?.signal);
    }
  }

  async writeSmall(name: string, content: Uint8Array): Promise<void> {
    try {
      const { sdk, client } = await this.connect();
      await client.send(new sdk.PutObjectCommand({ Bucket: this.bucket, Key: this.key(name), Body: content }));
    } catch (err) {
      throw this.translate(err, name, "write");
    }
  }

  async readSmall(name: string): Promise<Uint8Array | null> {
    try {
      const { sdk, client } = await this.connect();
      const response = await client.send(new sdk.GetObjectCommand({ Bucket: this.bucket, Key: this.key(name) }));
      if (response.Body === undefined) return new Uint8Array();
      return await response.Body.transformToByteArray();
    } catch (err) {
      const translated = this.translate(err, name, "read");
      if (translated instanceof SnapshotNotFoundError) return null;
      throw translated;
    }
  }

  async remove(name: string): Promise<void> {
    try {
      // S3 answers a delete of a missing key with success, so a second remove is no error.
      const { sdk, client } = await this.connect();
      await client.send(new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(name) }));
    } catch (err) {
      const translated = this.translate(err, name, "remove");
      if (!(translated instanceof SnapshotNotFoundError)) throw translated;
    }
  }

  async close(): Promise<void> {
    const connection = this.connection;
    this.connection = undefined;
    (await connection)?.client.destroy();
  }

  /** One of the store's error classes, or the abort reason when the caller aborted. */
  private translate(err: unknown, name: string, action: string, signal?: AbortSignal): unknown {
    if (signal?.aborted) return signal.reason;
    const error = err as { name?: string; Code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const code = error.Code ?? error.name ?? "";
    const status = error.$metadata?.httpStatusCode;
    const object = `object ${this.key(name)} in ${this.description}`;
    if (code === "NoSuchBucket") {
      return new SnapshotAccessError(
        `cannot ${action} ${object}: the bucket "${this.bucket}" does not exist; create it, or fix [snapshot.s3] bucket`,
        { cause: err },
      );
    }
    if (CREDENTIAL_ERRORS.has(code) || status === 401 || status === 403) {
      return new SnapshotAccessError(
        `cannot ${action} ${object}: the endpoint refused the credentials (${code || status}: ${error.message ?? ""}); ` +
          "fix [snapshot.s3] access_key and secret (and session_token if used), or the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment when they are empty",
        { cause: err },
      );
    }
    if (code === "NoSuchKey" || code === "NotFound" || status === 404) {
      return new SnapshotNotFoundError(`no ${object}`, { cause: err });
    }
    return new SnapshotStoreError(
      `cannot ${action} ${object}: ${code ? `${code}: ` : ""}${error.message ?? String(err)} (is ${this.endpoint} reachable? marmot retries)`,
      { cause: err },
    );
  }
}
