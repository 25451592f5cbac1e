import type { ServerWritableStream } from '@grpc/grpc-js';
import { framedRuns } from './byte-writer.js';

interface MessageSender {
  sendMessage(message: unknown, callback: () => void): void;
}

/**
 * grpc-js's call without interceptors (BaseServerInterceptingCall, private in 1.14: the dependency is
 * pinned): what it does per message, to do it once for many.
 */
interface BaseCall extends MessageSender {
  stream: { write(chunk: Buffer, cb: (err?: Error | null) => void): boolean };
  checkCancelled(): boolean;
  maybeSendMetadata(): void;
  sendStatus(status: { code: number; details: string; metadata: null }): void;
  maxSendMessageSize: number;
  callEventTracker?: { addMessageSent(): void };
}

/**
 * Messages already framed for gRPC (each behind its 5-byte header), one after another in `bytes`: written
 * to HTTP/2 as they are, one write, counted as `count` messages (a follow stream's, follow-stream.ts).
 */
export class FramedBatch {
  constructor(
    readonly bytes: Buffer,
    readonly count: number,
  ) {}
}

const GRPC_STATUS_INTERNAL = 13;

function baseCallOf(sender: Partial<BaseCall>): BaseCall | undefined {
  return typeof sender.checkCancelled === 'function' && typeof sender.maybeSendMetadata === 'function' && typeof sender.sendStatus === 'function' &&
    typeof sender.stream?.write === 'function' && typeof sender.maxSendMessageSize === 'number'
    ? (sender as BaseCall)
    : undefined;
}

/**
 * grpc-js writes a server stream one message at a time: its Writable passes a message on only after
 * the HTTP/2 write of the previous one completed, a turn of the event loop per message (~10-20k
 * messages/s to one client on a loaded host). This gives the stream a `_writev`, so that the messages
 * queued while one write was under way go out together: pre-encoded ones (the flow encoder's Buffers)
 * as the frames grpc-js would make, in a write per run of them that lies in one slab of the encoder's
 * (no copy; `framedRuns`) and one per other message (no closure and stream write per message through
 * grpc-js); FramedBatch chunks as they are; others through grpc-js's per-message send. It uses grpc-js's
 * private call object (1.14: the dependency is pinned); where that is not there, the stream is left as
 * it is and the answer is false: the stream cannot take a FramedBatch.
 */
export function serverStreamBatchWrites(stream: ServerWritableStream<unknown, unknown>): boolean {
  const sender = (stream as unknown as { call?: Partial<BaseCall> }).call;
  if (typeof sender?.sendMessage !== 'function') return false;
  const send = sender.sendMessage.bind(sender);
  const base = baseCallOf(sender);
  if (base) {
    // A FramedBatch written alone (nothing queued behind another write): one HTTP/2 write, as in _writev.
    const single = (stream as unknown as { _write: (chunk: unknown, encoding: string, cb: (err?: Error | null) => void) => void })._write.bind(stream);
    (stream as unknown as { _write: typeof single })._write = (chunk, encoding, cb) => {
      if (!(chunk instanceof FramedBatch)) return single(chunk, encoding, cb);
      if (base.checkCancelled()) return;
      base.maybeSendMetadata();
      batchWrite(base, chunk, (err) => {
        if (err) return base.sendStatus({ code: GRPC_STATUS_INTERNAL, details: 'Internal server error', metadata: null });
        cb();
      });
    };
  }
  const perMessage = (chunks: Array<{ chunk: unknown }>, cb: (err?: Error | null) => void) => {
    let left = chunks.length;
    for (const { chunk } of chunks) send(chunk, () => --left === 0 && cb());
  };
  (stream as unknown as { _writev: (chunks: Array<{ chunk: unknown }>, cb: (err?: Error | null) => void) => void })._writev = (chunks, cb) => {
    if (!base || (chunks.length < 2 && !(chunks[0]?.chunk instanceof FramedBatch))) {
      perMessage(chunks, cb);
      return;
    }
    // As grpc-js's sendMessage: nothing more once cancelled (the stream is being torn down).
    if (base.checkCancelled()) return;
    base.maybeSendMetadata();
    const limit = base.maxSendMessageSize;
    // One count for the loop itself: the batch ends once every write it started completed.
    let left = 1;
    let failed = false;
    const written = (err?: Error | null) => {
      if (failed) return;
      if (err) {
        failed = true;
        base.sendStatus({ code: GRPC_STATUS_INTERNAL, details: 'Internal server error', metadata: null });
        return;
      }
      if (--left === 0) cb();
    };
    let run: Buffer[] = [];
    const runFlush = () => {
      if (run.length === 0) return;
      for (const framed of framedRuns(run)) {
        left++;
        base.stream.write(framed, written);
      }
      for (let i = 0; i < run.length; i++) base.callEventTracker?.addMessageSent();
      run = [];
    };
    // Pre-encoded messages go out framed, in runs; any other (a lost-events message queued among the
    // flows of an overflowing follower, one over the size limit) through grpc-js in its place, which
    // writes it at once: HTTP/2 sends a stream's writes, and completes them, in order.
    for (const { chunk } of chunks) {
      if (Buffer.isBuffer(chunk) && (limit === -1 || chunk.length <= limit)) {
        run.push(chunk);
        continue;
      }
      runFlush();
      if (chunk instanceof FramedBatch) {
        left++;
        batchWrite(base, chunk, written);
        continue;
      }
      left++;
      send(chunk, () => written());
    }
    runFlush();
    written();
  };
  return base !== undefined;
}

function batchWrite(base: BaseCall, batch: FramedBatch, done: (err?: Error | null) => void): void {
  base.stream.write(batch.bytes, (err) => {
    if (!err) for (let i = 0; i < batch.count; i++) base.callEventTracker?.addMessageSent();
    done(err);
  });
}
