import { connect, createServer, type Socket } from 'node:net';

/**
 * A TCP forwarder on loopback in front of a server, which a test can shut: `shut` cuts every
 * connection through it and refuses new ones until `open`. A client behind the gate is kept away from
 * the server for exactly as long as the test needs (e.g. while etcd's history is compacted), where a
 * restart alone leaves it a race to reconnect first. `hold` keeps the server's answers back (the
 * connections stay up) until `release`; `sentWhileHeld` counts the client's bytes meanwhile.
 */
export interface TcpGate {
  /** The gate's URL: `target` with the host and port of the gate. */
  endpoint: string;
  shut(): void;
  open(): void;
  hold(): void;
  release(): void;
  sentWhileHeld(): number;
  close(): Promise<void>;
}

export async function tcpGateStart(target: string): Promise<TcpGate> {
  const url = new URL(target);
  const port = Number(url.port);
  const sockets = new Set<Socket>();
  const answers = new Map<Socket, Socket>(); // upstream -> client
  let isOpen = true;
  let held = false;
  let sentWhileHeld = 0;
  const server = createServer((client) => {
    if (!isOpen) return void client.destroy();
    const upstream = connect(port, url.hostname);
    for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(a);
      a.on('error', () => b.destroy()).on('close', () => (sockets.delete(a), b.destroy()));
    }
    client.on('data', (b: Buffer) => void (held && (sentWhileHeld += b.length)));
    client.pipe(upstream);
    answers.set(upstream, client);
    upstream.on('close', () => answers.delete(upstream));
    if (!held) upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const gatePort = (server.address() as { port: number }).port;
  const cutAll = () => {
    for (const s of sockets) s.destroy();
  };
  return {
    endpoint: `${url.protocol}//127.0.0.1:${gatePort}`,
    shut: () => ((isOpen = false), cutAll()),
    open: () => void (isOpen = true),
    hold: () => {
      if (held) return;
      held = true;
      sentWhileHeld = 0;
      for (const [upstream, client] of answers) upstream.unpipe(client);
    },
    release: () => {
      // a second pipe would hand the client every answer twice
      if (!held) return;
      held = false;
      for (const [upstream, client] of answers) upstream.pipe(client);
    },
    sentWhileHeld: () => sentWhileHeld,
    close: () => new Promise<void>((resolve) => (cutAll(), server.close(() => resolve()))),
  };
}
