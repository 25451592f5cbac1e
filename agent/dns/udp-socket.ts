/**
 * The DNS proxy's UDP sockets: the addon's (bpf/native/src/udp.c), which receive into slabs shared by
 * many datagrams instead of node's dgram, which makes an ArrayBuffer per datagram that each young
 * collection of V8 then sweeps (bench/README §8). A datagram reaches onMessage as a view of a slab,
 * never to be written beyond its own bytes; whatever is kept past the callback should be copied out (a
 * view keeps its whole slab: 256 KB for a datagram of a few bytes).
 */
import { constants } from 'node:os';
import { native } from '../../common/native.js';
import type { NativeHandle } from '../../common/native.js';

export interface UdpPeer {
  address: string;
  port: number;
}

export interface UdpSocketOptions {
  address: string;
  /** 0: any free port. */
  port: number;
  /** Only datagrams from here are received, and sends need no address. */
  connect?: UdpPeer;
  /** SO_RCVBUF (the kernel caps it at net.core.rmem_max); 0 keeps the default. */
  recvBufferSize?: number;
  onMessage(data: Buffer, from: UdpPeer): void;
  /**
   * A receive error (a connected socket's ICMP error: ECONNREFUSED, EHOSTUNREACH), or the kernel's
   * error for a datagram that waited for room in the send buffer (dropped).
   */
  onError?(err: NodeJS.ErrnoException): void;
}

/**
 * Datagrams that may wait for room in a socket's send buffer, and their bytes. A UDP socket's buffer
 * fills when what it sent has not left yet (held by a device's queue, such as a rate limit an operator
 * set); node's dgram queued the datagram then, and so does this socket, trying again every
 * SEND_RETRY_MS. Past either bound a send throws EAGAIN (datagrams of 64 KB each could otherwise hold
 * 64 MB a socket).
 */
export const UDP_SEND_QUEUE_MAX = 1024;
export const UDP_SEND_QUEUE_BYTES_MAX = 4 << 20;
const SEND_RETRY_MS = 1;

export class UdpSocket {
  private handle: NativeHandle | undefined;
  readonly port: number;
  /** address:port, the port the kernel gave once bound (in error messages). */
  private readonly where: string;
  private readonly onError: ((err: NodeJS.ErrnoException) => void) | undefined;
  /** Sends waiting for room in the send buffer, oldest first; sends made meanwhile queue behind them. */
  private waiting: Array<{ data: Uint8Array; to: UdpPeer | undefined }> = [];
  private waitingBytes = 0;
  private retry: NodeJS.Timeout | undefined;

  /** Opens, binds (and connects) at once; throws with the errno's code (EADDRINUSE, ...). */
  constructor(opts: UdpSocketOptions) {
    const c = opts.connect;
    this.where = `${opts.address}:${opts.port}`;
    this.onError = opts.onError;
    this.handle = native().udpOpen(opts.address, opts.port, c?.address ?? '', c?.port ?? 0, opts.recvBufferSize ?? 0, (slab, offset, length, address, port, errno) => {
      if (slab) opts.onMessage(slab.subarray(offset, offset + length), { address: address!, port });
      else this.onError?.(Object.assign(new Error(`UDP receive on ${this.where}: ${errnoCode(errno)}`), { errno, code: errnoCode(errno) }));
    });
    try {
      this.port = native().udpLocalPort(this.handle);
      this.where = `${opts.address}:${this.port}`;
    } catch (err) {
      this.close();
      throw err;
    }
  }

  get closed(): boolean {
    return this.handle === undefined;
  }

  /** Datagrams waiting for room in the send buffer. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Sends one datagram (no address on a connected socket). When the send buffer is full, `data` waits
   * (kept, not copied: not to be written meanwhile) and goes once there is room, in order. Throws when
   * closed, when UDP_SEND_QUEUE_MAX datagrams or UDP_SEND_QUEUE_BYTES_MAX bytes wait already (EAGAIN),
   * or with the kernel's error.
   */
  send(data: Uint8Array, to?: UdpPeer): void {
    if (!this.handle) throw Object.assign(new Error('UDP socket closed'), { code: 'EBADF' });
    if (this.waiting.length === 0 && this.trySend(data, to)) return;
    if (this.waiting.length >= UDP_SEND_QUEUE_MAX || this.waitingBytes + data.length > UDP_SEND_QUEUE_BYTES_MAX) {
      throw Object.assign(new Error(`UDP send on ${this.where}: EAGAIN, the socket's send buffer is full and ${this.waiting.length} datagrams (${this.waitingBytes} bytes) wait for it already, the most a socket queues (${UDP_SEND_QUEUE_MAX} datagrams, ${UDP_SEND_QUEUE_BYTES_MAX} bytes)`), { code: 'EAGAIN' });
    }
    this.waiting.push({ data, to });
    this.waitingBytes += data.length;
    this.retry ??= setTimeout(() => this.flush(), SEND_RETRY_MS).unref();
  }

  /** True once sent, false when the send buffer is full; throws the kernel's other errors. */
  private trySend(data: Uint8Array, to: UdpPeer | undefined): boolean {
    try {
      native().udpSend(this.handle!, data, to?.address ?? '', to?.port ?? 0);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return false;
      throw err;
    }
  }

  private flush(): void {
    this.retry = undefined;
    while (this.handle && this.waiting.length > 0) {
      const { data, to } = this.waiting[0]!;
      let failed: NodeJS.ErrnoException | undefined;
      try {
        if (!this.trySend(data, to)) {
          this.retry = setTimeout(() => this.flush(), SEND_RETRY_MS).unref();
          return;
        }
      } catch (err) {
        failed = err as NodeJS.ErrnoException;
      }
      this.waiting.shift();
      this.waitingBytes -= data.length;
      // This datagram cannot go (its route went away, ...): dropped and said (the callback may close
      // the socket), and the rest go on.
      if (failed) this.onError?.(Object.assign(new Error(`UDP send on ${this.where} to ${to ? `${to.address}:${to.port}` : 'its peer'}: ${failed.code ?? failed.message}`), { errno: failed.errno, code: failed.code }));
    }
  }

  /**
   * Stops reading the socket (onMessage gets nothing more; sends go on) and returns its descriptor, for
   * a reader of its own (agent/dns/fast-path.ts). It stays this socket's: close() closes it.
   */
  pause(): number {
    if (!this.handle) throw Object.assign(new Error('UDP socket closed'), { code: 'EBADF' });
    return native().udpPause(this.handle);
  }

  close(): void {
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
    this.waiting = [];
    this.waitingBytes = 0;
    if (!this.handle) return;
    native().udpClose(this.handle);
    this.handle = undefined;
  }
}

const CODES = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));

function errnoCode(errno: number): string {
  return CODES.get(errno) ?? `errno ${errno}`;
}
