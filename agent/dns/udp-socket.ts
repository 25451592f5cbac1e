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
  /** A receive error (a connected socket's ICMP error: ECONNREFUSED, EHOSTUNREACH). */
  onError?(err: NodeJS.ErrnoException): void;
}

export class UdpSocket {
  private handle: NativeHandle | undefined;
  readonly port: number;

  /** Opens, binds (and connects) at once; throws with the errno's code (EADDRINUSE, ...). */
  constructor(opts: UdpSocketOptions) {
    const c = opts.connect;
    const where = `${opts.address}:${opts.port}`;
    this.handle = native().udpOpen(opts.address, opts.port, c?.address ?? '', c?.port ?? 0, opts.recvBufferSize ?? 0, (slab, offset, length, address, port, errno) => {
      if (slab) opts.onMessage(slab.subarray(offset, offset + length), { address: address!, port });
      else opts.onError?.(Object.assign(new Error(`UDP receive on ${where}: ${errnoCode(errno)}`), { errno, code: errnoCode(errno) }));
    });
    try {
      this.port = native().udpLocalPort(this.handle);
    } catch (err) {
      this.close();
      throw err;
    }
  }

  get closed(): boolean {
    return this.handle === undefined;
  }

  /** Sends one datagram (no address on a connected socket). Throws when closed or the socket buffer is full. */
  send(data: Uint8Array, to?: UdpPeer): void {
    if (!this.handle) throw Object.assign(new Error('UDP socket closed'), { code: 'EBADF' });
    native().udpSend(this.handle, data, to?.address ?? '', to?.port ?? 0);
  }

  close(): void {
    if (!this.handle) return;
    native().udpClose(this.handle);
    this.handle = undefined;
  }
}

const CODES = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));

function errnoCode(errno: number): string {
  return CODES.get(errno) ?? `errno ${errno}`;
}
