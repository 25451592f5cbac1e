import type { ServerWritableStream } from '@grpc/grpc-js';

interface MessageSender {
  sendMessage(message: unknown, callback: () => void): void;
}

/**
 * grpc-js writes a server stream one message at a time: its Writable passes a message on only after
 * the HTTP/2 write of the previous one completed, a turn of the event loop per message (~10-20k
 * messages/s to one client on a loaded host). This gives the stream a `_writev`, so that the messages
 * queued while one write was under way are handed to the HTTP/2 stream together (it coalesces them
 * into one socket write). It uses grpc-js's own per-message send of the stream (`call`, private in
 * 1.14: the dependency is pinned); where that is not there, the stream is left as it is.
 */
export function serverStreamBatchWrites(stream: ServerWritableStream<unknown, unknown>): void {
  const sender = (stream as unknown as { call?: Partial<MessageSender> }).call;
  if (typeof sender?.sendMessage !== 'function') return;
  const send = sender.sendMessage.bind(sender);
  (stream as unknown as { _writev: (chunks: Array<{ chunk: unknown }>, cb: (err?: Error | null) => void) => void })._writev = (chunks, cb) => {
    let left = chunks.length;
    for (const { chunk } of chunks) send(chunk, () => --left === 0 && cb());
  };
}
