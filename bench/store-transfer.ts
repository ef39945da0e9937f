// Transfer rate and memory of the S3, WebDAV and SFTP snapshot stores: a large file up and down through each store
// against its real test server (s3rver, rclone, sshd), with this process's peak RSS during each transfer.
//
//   npm run build && node dist/bench/store-transfer.js [--mb 200] [--only s3,webdav,sftp]

import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { once } from "node:events";
import { silentLogger } from "../src/log.js";
import type { SnapshotStore } from "../src/snapshot/store.js";
import { createS3Store } from "../src/snapshot/stores/s3.js";
import { createSftpStore } from "../src/snapshot/stores/sftp.js";
import { createWebDavStore } from "../src/snapshot/stores/webdav.js";
import { killAll } from "../test/helpers/processes.js";
import { removeTempDirs, tempDir } from "../test/helpers/sqlite.js";
import {
  S3RVER_ACCESS_KEY,
  S3RVER_BUCKET,
  S3RVER_SECRET,
  startRcloneWebDav,
  startS3rver,
  startSshd,
  WEBDAV_PASSWORD,
  WEBDAV_USER,
} from "../test/helpers/store-servers.js";
import { fixed, table } from "./stats.js";
import { textOption } from "./options.js";

const MB = 1024 * 1024;

const option = (name: string, fallback: string) => textOption(`--${name}`, fallback);

/** Writes `size` random bytes in 1 MB pieces, so that making the file does not raise this process's memory. */
async function randomFile(path: string, size: number): Promise<void> {
  const out = createWriteStream(path);
  for (let written = 0; written < size; written += MB) {
    if (!out.write(randomBytes(Math.min(MB, size - written)))) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
}

async function sha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Runs `work`, sampling RSS every 20 ms: seconds taken, and the peak RSS above the RSS at the start, in MB. */
async function measured(work: () => Promise<void>): Promise<{ seconds: number; rssStartMb: number; peakAboveMb: number }> {
  globalThis.gc?.();
  const start = process.memoryUsage().rss;
  let peak = start;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  const began = performance.now();
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  peak = Math.max(peak, process.memoryUsage().rss);
  return { seconds: (performance.now() - began) / 1000, rssStartMb: start / MB, peakAboveMb: (peak - start) / MB };
}

async function main(): Promise<void> {
  const sizeMb = Number(option("mb", "200"));
  const only = new Set(option("only", "s3,webdav,sftp").split(","));
  const dir = tempDir("marmot-store-bench-");
  const source = join(dir, "source.bin");
  await randomFile(source, sizeMb * MB);
  const sourceHash = await sha256(source);

  const stores: Array<[string, () => Promise<SnapshotStore>]> = [
    [
      "s3",
      async () => {
        const server = await startS3rver();
        return createS3Store(
          {
            endpoint: `127.0.0.1:${server.port}`,
            bucket: S3RVER_BUCKET,
            path: "bench",
            useSsl: false,
            accessKey: S3RVER_ACCESS_KEY,
            secret: S3RVER_SECRET,
            sessionToken: "",
          },
          silentLogger,
        );
      },
    ],
    [
      "webdav",
      async () => {
        const server = await startRcloneWebDav();
        return createWebDavStore(
          { url: `http://127.0.0.1:${server.port}/dav?dir=/bench&login=${WEBDAV_USER}&secret=${WEBDAV_PASSWORD}` },
          silentLogger,
        );
      },
    ],
    [
      "sftp",
      async () => {
        const server = await startSshd();
        const knownHosts = join(server.dir, "known_hosts");
        writeFileSync(knownHosts, `[127.0.0.1]:${server.port} ${server.hostPublicKey}\n`);
        return createSftpStore(
          { url: `sftp://${server.user}@127.0.0.1:${server.port}${server.dataDir}/bench`, keyFile: server.clientKeyFile, knownHostsFile: knownHosts },
          silentLogger,
        );
      },
    ],
  ];

  const rows: string[][] = [];
  for (const [name, open] of stores) {
    if (!only.has(name)) continue;
    const store = await open();
    try {
      const up = await measured(() => store.upload("bench.db", source));
      const back = join(dir, `${name}-back.bin`);
      const down = await measured(() => store.download("bench.db", back));
      if (statSync(back).size !== sizeMb * MB || (await sha256(back)) !== sourceHash) throw new Error(`${name}: the downloaded copy differs`);
      for (const [direction, figures] of [
        ["upload", up],
        ["download", down],
      ] as const) {
        rows.push([name, direction, fixed(sizeMb / figures.seconds, 1), fixed(figures.rssStartMb, 0), fixed(figures.peakAboveMb, 1)]);
      }
    } finally {
      await store.close();
    }
  }
  console.log(`${sizeMb} MB of random bytes through each store and its loopback test server (server on the same machine)`);
  console.log(table(["store", "direction", "MB/s", "RSS at start MB", "peak RSS above start MB"], rows));
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(async () => {
    await killAll();
    removeTempDirs();
  });
