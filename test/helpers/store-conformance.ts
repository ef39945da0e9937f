// The behaviour every snapshot store must show, run against each store's real server: one body, many stores.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { SnapshotNotFoundError, SnapshotStoreError } from "../../src/errors.js";
import type { SnapshotStore, TransferProgress } from "../../src/snapshot/store.js";
import { waitFor } from "./marmot.js";
import { tempDir } from "./sqlite.js";

const MB = 1024 * 1024;

export interface StoreUnderTest {
  /** the store, connected to a server that the caller's before() started */
  store(): SnapshotStore;
  /** the folder where the server keeps the store's objects, to find temporary uploads left behind */
  serverFolder?(): string;
  /** size of the round-trip file (default 12 MB: more than one S3 multipart part) */
  bigFileBytes?: number;
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function randomFile(dir: string, name: string, size: number): { path: string; bytes: Buffer } {
  const bytes = randomBytes(size);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes };
}

/** Every file under `folder`, as paths relative to it. */
function filesUnder(folder: string): string[] {
  return readdirSync(folder, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(folder.length + 1));
}

function assertProgress(reports: TransferProgress[], size: number, what: string): void {
  assert.ok(reports.length > 0, `${what}: no progress was reported`);
  for (let i = 1; i < reports.length; i++) {
    assert.ok(reports[i]!.bytes >= reports[i - 1]!.bytes, `${what}: progress went backwards`);
  }
  assert.equal(reports.at(-1)!.bytes, size, `${what}: the last progress report is not the whole size`);
}

/** Registers the shared tests; call inside the store's describe(), after its before(). */
export function storeConformance(subject: StoreUnderTest): void {
  const dir = tempDir("marmot-store-conformance-");

  const bigFileBytes = subject.bigFileBytes ?? 12 * MB;
  test(`a ${Math.round(bigFileBytes / MB)} MB file goes up and comes back byte for byte, with progress both ways`, async () => {
    const store = subject.store();
    const original = randomFile(dir, "big.db", bigFileBytes);
    const uploaded: TransferProgress[] = [];
    await store.upload("snapshot-big.db", original.path, { onProgress: (p) => uploaded.push({ ...p }) });
    const back = join(dir, "big-back.db");
    writeFileSync(back, "stale content the download must replace");
    const downloaded: TransferProgress[] = [];
    await store.download("snapshot-big.db", back, { onProgress: (p) => downloaded.push({ ...p }) });
    const copy = readFileSync(back);
    assert.equal(copy.length, original.bytes.length);
    assert.equal(sha256(copy), sha256(original.bytes));
    assert.ok(copy.equals(original.bytes));
    assertProgress(uploaded, original.bytes.length, "upload");
    assertProgress(downloaded, original.bytes.length, "download");
  });

  test("an upload under an existing name replaces it", async () => {
    const store = subject.store();
    const first = randomFile(dir, "first.db", 2 * MB);
    const second = randomFile(dir, "second.db", 3 * MB + 17);
    await store.upload("snapshot-replaced.db", first.path);
    await store.upload("snapshot-replaced.db", second.path);
    const back = join(dir, "replaced-back.db");
    await store.download("snapshot-replaced.db", back);
    assert.equal(sha256(readFileSync(back)), sha256(second.bytes));
  });

  test("small objects are written and read whole; a missing one reads as null", async () => {
    const store = subject.store();
    const manifest = new TextEncoder().encode(JSON.stringify({ version: 1, shards: { 1: "42" } }));
    await store.writeSmall("manifest.json", manifest);
    assert.deepEqual(await store.readSmall("manifest.json"), manifest);
    const newer = new TextEncoder().encode(JSON.stringify({ version: 1, shards: { 1: "43" } }));
    await store.writeSmall("manifest.json", newer);
    assert.deepEqual(await store.readSmall("manifest.json"), newer);
    assert.equal(await store.readSmall("no-such-manifest.json"), null);
  });

  test("downloading a missing object throws SnapshotNotFoundError", async () => {
    const store = subject.store();
    await assert.rejects(store.download("no-such-snapshot.db", join(dir, "missing.db")), SnapshotNotFoundError);
  });

  test("remove deletes an object and a second remove is no error", async () => {
    const store = subject.store();
    const file = randomFile(dir, "removed.db", 64 * 1024);
    await store.upload("snapshot-removed.db", file.path);
    await store.writeSmall("removed.json", new Uint8Array([1, 2, 3]));
    await store.remove("snapshot-removed.db");
    await store.remove("removed.json");
    await assert.rejects(store.download("snapshot-removed.db", join(dir, "removed-back.db")), SnapshotNotFoundError);
    assert.equal(await store.readSmall("removed.json"), null);
    await store.remove("snapshot-removed.db");
    await store.remove("never-there.db");
  });

  test("an upload aborted half way leaves the previous object as it was, and the store still works", async () => {
    const store = subject.store();
    const previous = randomFile(dir, "previous.db", 1 * MB);
    await store.upload("snapshot-kept.db", previous.path);
    const next = randomFile(dir, "next.db", 20 * MB);
    const abort = new AbortController();
    let bytesWhenAborted = 0;
    const upload = store.upload("snapshot-kept.db", next.path, {
      signal: abort.signal,
      onProgress: ({ bytes }) => {
        if (bytes >= 2 * MB && !abort.signal.aborted) {
          bytesWhenAborted = bytes;
          abort.abort(new Error("the test aborts this upload"));
        }
      },
    });
    await assert.rejects(upload, /the test aborts this upload/);
    assert.ok(bytesWhenAborted > 0 && bytesWhenAborted < next.bytes.length, `aborted at ${bytesWhenAborted} bytes`);
    const back = join(dir, "kept-back.db");
    await store.download("snapshot-kept.db", back);
    assert.equal(sha256(readFileSync(back)), sha256(previous.bytes), "the aborted upload changed the stored object");
    const folder = subject.serverFolder?.();
    if (folder !== undefined) {
      await waitFor(
        () => filesUnder(folder).every((file) => !file.includes(".tmp-")),
        20_000,
        () => `a temporary upload is left on the server: ${filesUnder(folder).join(", ")}`,
      );
    }
    // The connection survives the abort: the same upload now goes through.
    await store.upload("snapshot-kept.db", next.path);
    await store.download("snapshot-kept.db", back);
    assert.equal(sha256(readFileSync(back)), sha256(next.bytes));
  });

  if (subject.serverFolder !== undefined) {
    test("a folder removed behind the store's back is created again: at worst one retryable failure", async () => {
      const store = subject.store();
      const file = randomFile(dir, "after-removal.db", 256 * 1024);
      await store.upload("snapshot-before-removal.db", file.path);
      rmSync(subject.serverFolder!(), { recursive: true, force: true });
      try {
        await store.upload("snapshot-after-removal.db", file.path);
      } catch (err) {
        assert.ok(err instanceof SnapshotStoreError, `the first upload after the removal failed with ${String(err)}`);
        await store.upload("snapshot-after-removal.db", file.path);
      }
      const back = join(dir, "after-removal-back.db");
      await store.download("snapshot-after-removal.db", back);
      assert.equal(sha256(readFileSync(back)), sha256(file.bytes));
    });
  }
}
