/**
 * A UDP socket and a TCP server on one address and port (DNS serves both on one port).
 *
 * With port 0 the kernel picks the UDP port, and the TCP side then asks for the same number. That
 * number may be taken on TCP (a listener, or any client connection whose local port it is: connect()
 * takes its ports from the same range), so the pair is tried again with a new UDP port instead of
 * failing. A fixed port is tried once: a taken port is then the operator's to fix. No attempt leaves a
 * socket open behind it.
 */
import dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';
import net from 'node:net';

/** A bound UDP socket of any kind (node's dgram, the addon's), as udpTcpListen needs it. */
export interface UdpBound<U> {
  socket: U;
  port: number;
  close(): void;
}

export interface UdpTcpListenOptions<U> {
  address: string;
  /** 0: any port free on both. */
  port: number;
  /** Binds the UDP side to address:port (port 0: any); rejects with the errno's code (EADDRINUSE). */
  udpBind: (address: string, port: number) => Promise<UdpBound<U>>;
  /** Makes the TCP server (a new one per attempt: a server whose listen failed is not reused). */
  tcpServer: () => net.Server;
  /**
   * The listening TCP server's errors (a failed accept: EMFILE, ENOBUFS). Node emits them as 'error',
   * which with no listener would end the process: a workload must not be able to take the agent down
   * by exhausting what accept needs.
   */
  onTcpError: (err: Error) => void;
  /** Attempts with port 0 (default 16). */
  attempts?: number;
}

export interface UdpTcpListening<U> {
  udp: U;
  tcp: net.Server;
  port: number;
}

/** udpBind for node's dgram sockets. */
export function dgramBind(options: Omit<dgram.SocketOptions, 'type'> = {}): (address: string, port: number) => Promise<UdpBound<dgram.Socket>> {
  return async (address, port) => {
    const udp = dgram.createSocket({ ...options, type: net.isIPv6(address) ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, address, () => {
        udp.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      try {
        udp.close();
      } catch {
        // never bound: nothing to close
      }
      throw err;
    });
    return { socket: udp, port: (udp.address() as AddressInfo).port, close: () => udp.close() };
  };
}

export async function udpTcpListen<U>(opts: UdpTcpListenOptions<U>): Promise<UdpTcpListening<U>> {
  const attempts = opts.port === 0 ? (opts.attempts ?? 16) : 1;
  let lastErr: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const udp = await opts.udpBind(opts.address, opts.port);
    const port = udp.port;
    const tcp = opts.tcpServer();
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen({ port, host: opts.address, exclusive: true }, () => {
          tcp.off('error', reject);
          tcp.on('error', opts.onTcpError);
          resolve();
        });
      });
      return { udp: udp.socket, tcp, port };
    } catch (err) {
      udp.close();
      lastErr = err;
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') break;
    }
  }
  throw lastErr;
}
