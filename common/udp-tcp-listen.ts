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

export interface UdpTcpListenOptions {
  address: string;
  /** 0: any port free on both. */
  port: number;
  /** Options for the UDP socket (its type is taken from the address). */
  udp?: Omit<dgram.SocketOptions, 'type'>;
  /** Makes the TCP server (a new one per attempt: a server whose listen failed is not reused). */
  tcpServer: () => net.Server;
  /** Attempts with port 0 (default 16). */
  attempts?: number;
}

export interface UdpTcpListening {
  udp: dgram.Socket;
  tcp: net.Server;
  port: number;
}

export async function udpTcpListen(opts: UdpTcpListenOptions): Promise<UdpTcpListening> {
  const attempts = opts.port === 0 ? (opts.attempts ?? 16) : 1;
  let lastErr: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const udp = dgram.createSocket({ ...opts.udp, type: net.isIPv6(opts.address) ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(opts.port, opts.address, () => {
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
    const port = (udp.address() as AddressInfo).port;
    const tcp = opts.tcpServer();
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen({ port, host: opts.address, exclusive: true }, () => {
          tcp.off('error', reject);
          resolve();
        });
      });
      return { udp, tcp, port };
    } catch (err) {
      udp.close();
      lastErr = err;
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') break;
    }
  }
  throw lastErr;
}
