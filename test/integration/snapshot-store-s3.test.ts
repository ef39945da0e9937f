// The S3 snapshot store against s3rver in its own process: the shared store tests, credentials, a missing bucket.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { SnapshotConfig } from "../../src/config/types.js";
import { ConfigError, SnapshotAccessError, SnapshotStoreError } from "../../src/errors.js";
import { silentLogger } from "../../src/log.js";
import type { SnapshotStore } from "../../src/snapshot/store.js";
import { createS3Store } from "../../src/snapshot/stores/s3.js";
import { waitFor } from "../helpers/marmot.js";
import { freePort } from "../helpers/ports.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { tempDir } from "../helpers/sqlite.js";
import { storeConformance } from "../helpers/store-conformance.js";
import { S3RVER_ACCESS_KEY, S3RVER_BUCKET, S3RVER_SECRET, startS3rver, type TestStoreServer } from "../helpers/store-servers.js";

useProcessCleanup();

describe("S3 snapshot store on s3rver", () => {
  let server: TestStoreServer | undefined;
  const opened: SnapshotStore[] = [];

  function s3Config(overrides: Partial<SnapshotConfig["s3"]> = {}): SnapshotConfig["s3"] {
    return {
      endpoint: `127.0.0.1:${server!.port}`,
      bucket: S3RVER_BUCKET,
      path: "cluster-a/snapshots",
      useSsl: false,
      accessKey: S3RVER_ACCESS_KEY,
      secret: S3RVER_SECRET,
      sessionToken: "",
      ...overrides,
    };
  }

  function open(overrides: Partial<SnapshotConfig["s3"]> = {}): SnapshotStore {
    const store = createS3Store(s3Config(overrides), silentLogger);
    opened.push(store);
    return store;
  }

  before(async () => {
    server = await startS3rver();
  });

  after(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await server?.stop();
  });

  let shared: SnapshotStore | undefined;
  storeConformance({ store: () => (shared ??= open()) });

  test("an aborted multipart upload is aborted on the server too (its parts are dropped)", async () => {
    const store = open();
    const file = join(tempDir(), "aborted.db");
    writeFileSync(file, randomBytes(16 * 1024 * 1024));
    const abort = new AbortController();
    const upload = store.upload("snapshot-aborted.db", file, {
      signal: abort.signal,
      onProgress: () => abort.abort(new Error("stop")),
    });
    await assert.rejects(upload, /stop/);
    // s3rver logs each request; it does not implement AbortMultipartUpload (it answers 405), but the request
    // that AWS and MinIO act on must have been sent.
    await waitFor(
      () => /cluster-a\/snapshots\/snapshot-aborted\.db\?uploadId=\w+&x-id=AbortMultipartUpload/.test(server!.output()),
      20_000,
      () => `no AbortMultipartUpload request in s3rver's log:\n${server!.output().slice(-2000)}`,
    );
    assert.equal(await store.readSmall("snapshot-aborted.db"), null, "the aborted upload became an object");
  });

  // s3rver checks that the access key exists but not V4 signatures (its authentication middleware says so), so a
  // wrong secret cannot be caught there. This stand-in answers as S3 does to a bad signature (403,
  // SignatureDoesNotMatch) and shows how the store reports it; the unknown key test below uses the real server.
  test("a wrong secret (S3's 403 SignatureDoesNotMatch) is a SnapshotAccessError naming access_key and secret", async () => {
    const answer =
      '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>';
    const standIn = createServer((request, response) => {
      request.resume();
      response.writeHead(403, { "Content-Type": "application/xml" }).end(answer);
    });
    await new Promise<void>((resolve) => standIn.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = standIn.address() as AddressInfo;
      const store = open({ endpoint: `127.0.0.1:${port}`, secret: "not-the-secret" });
      await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
        assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
        assert.match(err.message, /\[snapshot\.s3\] access_key and secret/);
        assert.match(err.message, /SignatureDoesNotMatch/);
        return true;
      });
    } finally {
      standIn.closeAllConnections();
      await new Promise((resolve) => standIn.close(resolve));
    }
  });

  test("an unknown access key is refused with SnapshotAccessError", async () => {
    const store = open({ accessKey: "NOT-A-KEY", secret: "whatever" });
    const file = join(tempDir(), "small.db");
    writeFileSync(file, "x".repeat(1000));
    await assert.rejects(store.upload("snapshot.db", file), (err: Error) => {
      assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
      assert.match(err.message, /InvalidAccessKeyId/);
      return true;
    });
  });

  test("credentials come from the AWS environment variables when the config has none", async () => {
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = S3RVER_ACCESS_KEY;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_SECRET;
    try {
      const store = open({ accessKey: "", secret: "" });
      await store.writeSmall("from-env.json", new Uint8Array([7]));
      assert.deepEqual(await store.readSmall("from-env.json"), new Uint8Array([7]));
    } finally {
      for (const [name, value] of [
        ["AWS_ACCESS_KEY_ID", saved.id],
        ["AWS_SECRET_ACCESS_KEY", saved.secret],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  test("a missing bucket is a SnapshotAccessError naming [snapshot.s3] bucket", async () => {
    const store = open({ bucket: "no-such-bucket" });
    await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotAccessError, `${err.name}: ${err.message}`);
      assert.match(err.message, /\[snapshot\.s3\] bucket/);
      assert.match(err.message, /no-such-bucket/);
      return true;
    });
  });

  test("an endpoint nobody listens on is a SnapshotStoreError naming it (worth a retry)", async () => {
    const closedPort = await freePort();
    const store = open({ endpoint: `127.0.0.1:${closedPort}` });
    await assert.rejects(store.readSmall("manifest.json"), (err: Error) => {
      assert.ok(err instanceof SnapshotStoreError, `${err.name}: ${err.message}`);
      assert.ok(err.message.includes(`127.0.0.1:${closedPort}`), err.message);
      return true;
    });
  });

  test("an empty bucket or a bad endpoint is a ConfigError naming the key", () => {
    assert.throws(
      () => createS3Store(s3Config({ bucket: "" }), silentLogger),
      (err: Error) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /\[snapshot\.s3\] bucket is empty/);
        return true;
      },
    );
    assert.throws(() => createS3Store(s3Config({ endpoint: "ftp://host" }), silentLogger), /\[snapshot\.s3\] endpoint/);
    assert.throws(() => createS3Store(s3Config({ secret: "" }), silentLogger), /secret is empty/);
  });
});
