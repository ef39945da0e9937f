// C1: what JetStream alone sustains on the cluster marmot runs on, with the messages marmot would send for T1.

import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { encodeBatch, type WireTable } from "../src/wire/codec.js";
import { BULK_COLUMNS, bulkRow, nowNs } from "./workload.js";

export interface MarmotMessages {
  payloads: Buffer[];
  rowsPerMessage: number[];
  /** one row in one message, the original's unit */
  singleRow: Buffer;
}

/** The messages marmot's shipper cuts from `rows` bulk rows: `perMessage` changes each, compressed when it pays. */
export function marmotMessages(table: string, rows: number, perMessage: number, compress: boolean): MarmotMessages {
  const wire: WireTable = { name: table, columns: [...BULK_COLUMNS], keyColumns: ["id"] };
  const payloads: Buffer[] = [];
  const rowsPerMessage: number[] = [];
  for (let first = 0; first < rows; first += perMessage) {
    const changes = [];
    for (let i = first; i < Math.min(rows, first + perMessage); i++) {
      changes.push({ table: wire, op: "upsert" as const, changeId: i + 1, values: bulkRow(i) });
    }
    payloads.push(encodeBatch({ origin: "1", changes }, { compress }));
    rowsPerMessage.push(changes.length);
  }
  const singleRow = encodeBatch({ origin: "1", changes: [{ table: wire, op: "upsert", changeId: 1, values: bulkRow(0) }] }, { compress });
  return { payloads, rowsPerMessage, singleRow };
}

export interface PublishRate {
  messagesPerSec: number;
  rowsPerSec: number;
  megabytesPerSec: number;
  meanMessageBytes: number;
  inFlight: number;
}

/**
 * Publishes to a fresh R`replicas` stream on `url` for `durationMs` each: marmot-sized messages with `inFlight`
 * publishes outstanding, then one-row messages with one awaited publish at a time. The stream is deleted after.
 */
export async function measureJetStream(
  url: string,
  messages: MarmotMessages,
  options: { replicas: number; durationMs: number; inFlight: number[] },
): Promise<{ pipelined: PublishRate[]; oneAwaitedPerRow: PublishRate }> {
  const nc = await connect({ servers: url, name: "marmot-bench-ceiling" });
  const stream = "BENCH_CEILING";
  const subject = "bench-ceiling";
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.delete(stream).catch(() => undefined);
    await jsm.streams.add({ name: stream, subjects: [subject], num_replicas: options.replicas, storage: StorageType.File });
    const js = jetstream(nc);
    let id = 0;
    const publish = (payload: Buffer) => js.publish(subject, payload, { msgID: `ceiling-${id++}`, timeout: 30_000, retries: 0 });

    // warm-up: the stream leader and the client's buffers
    await Promise.all(messages.payloads.slice(0, 8).map(publish));

    const pipelined: PublishRate[] = [];
    for (const inFlight of options.inFlight) {
      const rate = await timed(options.durationMs, inFlight, async (k) => {
        const index = k % messages.payloads.length;
        await publish(messages.payloads[index]!);
        return { rows: messages.rowsPerMessage[index]!, bytes: messages.payloads[index]!.length };
      });
      pipelined.push({ ...rate, inFlight });
    }
    const oneAwaitedPerRow = await timed(options.durationMs, 1, async () => {
      await publish(messages.singleRow);
      return { rows: 1, bytes: messages.singleRow.length };
    });
    return { pipelined, oneAwaitedPerRow: { ...oneAwaitedPerRow, inFlight: 1 } };
  } finally {
    await jsm.streams.delete(stream).catch(() => undefined);
    await nc.close();
  }
}

/** Runs `workers` loops of `step` until `durationMs` passed; rates over the time until the last step finished. */
async function timed(
  durationMs: number,
  workers: number,
  step: (k: number) => Promise<{ rows: number; bytes: number }>,
): Promise<Omit<PublishRate, "inFlight">> {
  const start = nowNs();
  const end = start + BigInt(durationMs) * 1_000_000n;
  let next = 0;
  let messagesDone = 0;
  let rows = 0;
  let bytes = 0;
  const loop = async () => {
    while (nowNs() < end) {
      const done = await step(next++);
      messagesDone++;
      rows += done.rows;
      bytes += done.bytes;
    }
  };
  await Promise.all(Array.from({ length: workers }, loop));
  const seconds = Number(nowNs() - start) / 1e9;
  return {
    messagesPerSec: messagesDone / seconds,
    rowsPerSec: rows / seconds,
    megabytesPerSec: bytes / 2 ** 20 / seconds,
    meanMessageBytes: bytes / Math.max(messagesDone, 1),
  };
}
