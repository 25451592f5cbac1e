import type { ServerWritableStream } from '@grpc/grpc-js';

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

/** Whether queued pre-encoded messages go to HTTP/2 as one write (the bench turns it off to compare). */
export const batchWriteOptions = { coalesce: true };

const GRPC_STATUS_INTERNAL = 13;

function baseCallOf(sender: Partial<BaseCall>): BaseCall | undefined {
  return typeof sender.checkCancelled === 'function' && typeof sender.maybeSendMetadata === 'function' && typeof sender.sendStatus === 'function' &&
    typeof sender.stream?.write === 'function' && typeof sender.maxSendMessageSize === 'number'
    ? (sender as BaseCall)
    : undefined;
}

/**
 * Pre-encoded messages (Buffers) as gRPC frames in one buffer: a byte of flags (0: not compressed), the
 * length (big-endian u32), the message.
 */
function framesOf(messages: Buffer[]): Buffer {
  let size = 0;
  for (const m of messages) size += 5 + m.length;
  const out = Buffer.allocUnsafe(size);
  let off = 0;
  for (const m of messages) {
    out[off] = 0;
    out.writeUInt32BE(m.length, off + 1);
    m.copy(out, off + 5);
    off += 5 + m.length;
  }
  return out;
}

/**
 * grpc-js writes a server stream one message at a time: its Writable passes a message on only after
 * the HTTP/2 write of the previous one completed, a turn of the event loop per message (~10-20k
 * messages/s to one client on a loaded host). This gives the stream a `_writev`, so that the messages
 * queued while one write was under way go out together: pre-encoded ones (the flow encoder's Buffers)
 * framed into one buffer and one HTTP/2 write, the way grpc-js frames and writes one (no allocation,
 * closure and stream write per message); others through grpc-js's per-message send. It uses grpc-js's
 * private call object (1.14: the dependency is pinned); where that is not there, the stream is left as
 * it is.
 */
export function serverStreamBatchWrites(stream: ServerWritableStream<unknown, unknown>): void {
  const sender = (stream as unknown as { call?: Partial<BaseCall> }).call;
  if (typeof sender?.sendMessage !== 'function') return;
  const send = sender.sendMessage.bind(sender);
  const base = baseCallOf(sender);
  const perMessage = (chunks: Array<{ chunk: unknown }>, cb: (err?: Error | null) => void) => {
    let left = chunks.length;
    for (const { chunk } of chunks) send(chunk, () => --left === 0 && cb());
  };
  (stream as unknown as { _writev: (chunks: Array<{ chunk: unknown }>, cb: (err?: Error | null) => void) => void })._writev = (chunks, cb) => {
    const limit = base?.maxSendMessageSize ?? -1;
    if (!base || !batchWriteOptions.coalesce || chunks.length < 2 || !chunks.every(({ chunk }) => Buffer.isBuffer(chunk) && (limit === -1 || chunk.length <= limit))) {
      perMessage(chunks, cb);
      return;
    }
    // As grpc-js's sendMessage: nothing more once cancelled (the stream is being torn down).
    if (base.checkCancelled()) return;
    base.maybeSendMetadata();
    base.stream.write(framesOf(chunks.map(({ chunk }) => chunk as Buffer)), (err) => {
      if (err) {
        base.sendStatus({ code: GRPC_STATUS_INTERNAL, details: 'Internal server error', metadata: null });
        return;
      }
      for (let i = 0; i < chunks.length; i++) base.callEventTracker?.addMessageSent();
      cb();
    });
  };
}
