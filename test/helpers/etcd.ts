import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from './sys.js';
import { timeLimit } from './timeouts.js';

/** A real single-member etcd (Debian's etcd-server) on loopback, for cluster-mode tests. */
export interface EtcdServer {
  /** The client URL, http://127.0.0.1:<port>. */
  endpoint: string;
  /** The client URL on `opts.alsoOn` (for clients in other network namespaces). */
  endpointAlso?: string;
  stop(): Promise<void>;
  /** Kills etcd (SIGKILL: clients see the connection drop) and starts it again on the same data and ports. */
  restart(): Promise<void>;
  /** Kills etcd (SIGKILL) and leaves it down until `up`, which starts it on the same data and ports. */
  down(): Promise<void>;
  up(): Promise<void>;
}

/** A port nobody listens on right now (the kernel's choice); etcd binds it a moment later. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** etcd serving its clients over TLS: its certificate and key, and with `clientCa` client certificates required (--client-cert-auth). */
export interface EtcdTls {
  cert: string;
  key: string;
  /** The CA that signed `cert` (for the health check). */
  ca: string;
  clientCa?: string;
  /** A client certificate and key the health check presents when `clientCa` is set. */
  client?: { cert: string; key: string };
}

async function healthy(endpoint: string, tls?: EtcdTls): Promise<boolean> {
  if (tls) return healthyTls(endpoint, tls);
  try {
    const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: string }).health === 'true';
  } catch {
    return false;
  }
}

function healthyTls(endpoint: string, tls: EtcdTls): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(`${endpoint}/health`, { ca: readFileSync(tls.ca), ...(tls.client ? { cert: readFileSync(tls.client.cert), key: readFileSync(tls.client.key) } : {}), timeout: 1000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(res.statusCode === 200 && body.includes('"health":"true"')));
    });
    req.on('error', () => resolve(false)).on('timeout', () => req.destroy());
    req.end();
  });
}

/**
 * Starts etcd on a fresh data dir and free ports and waits until /health says so. `stop` kills it and
 * removes the dir (call it in an after hook). Free ports can be taken between the probe and etcd's
 * bind: then etcd exits and the start is tried again on new ports.
 */
export async function etcdStart(opts: { alsoOn?: string; tls?: EtcdTls } = {}): Promise<EtcdServer> {
  const scheme = opts.tls ? 'https' : 'http';
  for (let attempt = 0; ; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-etcd-'));
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const endpoint = `${scheme}://127.0.0.1:${clientPort}`;
    const endpointAlso = opts.alsoOn ? `${scheme}://${opts.alsoOn}:${clientPort}` : undefined;
    const listen = endpointAlso ? `${endpoint},${endpointAlso}` : endpoint;
    const single = (peer: string): MemberOf => ({ name: 'kitnet-test', initialCluster: `kitnet-test=${peer}`, token: 'etcd-cluster', ...(opts.tls ? { tls: opts.tls } : {}) });
    let member = etcdSpawn(dir, listen, `http://127.0.0.1:${peerPort}`, single(`http://127.0.0.1:${peerPort}`));
    const stop = async () => {
      await member.kill();
      rmSync(dir, { recursive: true, force: true });
    };
    const restart = async () => {
      await member.kill();
      member = etcdSpawn(dir, listen, `http://127.0.0.1:${peerPort}`, single(`http://127.0.0.1:${peerPort}`));
      await member.healthy();
    };
    const down = () => member.kill();
    const up = async () => {
      member = etcdSpawn(dir, listen, `http://127.0.0.1:${peerPort}`, single(`http://127.0.0.1:${peerPort}`));
      await member.healthy();
    };
    try {
      await member.healthy();
      return { endpoint, ...(endpointAlso ? { endpointAlso } : {}), stop, restart, down, up };
    } catch (err) {
      await stop();
      if (attempt >= 2 || !/address already in use/.test(member.stderr())) throw err;
    }
  }
}

/** How one member joins its cluster (a single member names only itself). */
interface MemberOf {
  name: string;
  /** name=peerURL,... of every member. */
  initialCluster: string;
  token: string;
  tls?: EtcdTls;
}

/** One etcd process on `dir`: wait for its health, or kill it. */
function etcdSpawn(dir: string, listen: string, peer: string, member: MemberOf): { healthy(): Promise<void>; kill(): Promise<void>; stderr(): string } {
  const endpoint = listen.split(',')[0]!;
  const proc: ChildProcess = spawn(
    'etcd',
    [
      '--name', member.name,
      '--data-dir', join(dir, 'data'),
      '--listen-client-urls', listen,
      '--advertise-client-urls', listen,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', member.initialCluster,
      '--initial-cluster-token', member.token,
      '--log-level', 'error',
      ...(member.tls ? ['--cert-file', member.tls.cert, '--key-file', member.tls.key] : []),
      ...(member.tls?.clientCa ? ['--client-cert-auth', '--trusted-ca-file', member.tls.clientCa] : []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  let exited = false;
  const exit = new Promise<void>((resolve) => proc.once('exit', () => ((exited = true), resolve())));
  return {
    stderr: () => stderr,
    healthy: () =>
      waitFor(`etcd ${member.name} to report healthy`, async () => {
        if (exited) throw new Error(`etcd ${member.name} exited at start: ${stderr.trim()}`);
        return healthy(endpoint, member.tls);
      }, timeLimit(30_000)).then(() => undefined),
    kill: async () => {
      if (exited) return;
      proc.kill('SIGKILL');
      await exit;
    },
  };
}

/** A real etcd cluster of several members on loopback (the quorum tests). */
export interface EtcdCluster {
  /** Each member's client URL on 127.0.0.1, in member order. */
  endpoints: string[];
  /** Each member's client URL on `opts.alsoOn`. */
  endpointsAlso?: string[];
  /** Kills member i (SIGKILL) and leaves it down until `up(i)`. */
  down(i: number): Promise<void>;
  /** Starts member i again on its data and ports; waits until it is healthy (has a leader: needs quorum). */
  up(i: number): Promise<void>;
  /** Starts every member that is down, together (when quorum needs more than one of them back). */
  upAll(): Promise<void>;
  /** Kills every member and removes the data dirs (call it in an after hook, also after a failed start). */
  stop(): Promise<void>;
}

/**
 * Starts `size` etcd members on loopback, each with its own data dir, client and peer ports, as one
 * cluster, and waits until each is healthy (a leader was elected). Taken ports are retried as for one.
 */
export async function etcdClusterStart(size: number, opts: { alsoOn?: string } = {}): Promise<EtcdCluster> {
  for (let attempt = 0; ; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-etcdc-'));
    const token = `kitnet-${process.pid}-${attempt}-${Date.now()}`;
    const ports: Array<{ client: number; peer: number }> = [];
    for (let i = 0; i < size; i++) ports.push({ client: await freePort(), peer: await freePort() });
    const names = ports.map((_, i) => `m${i}`);
    const peers = ports.map((p) => `http://127.0.0.1:${p.peer}`);
    const initialCluster = names.map((n, i) => `${n}=${peers[i]}`).join(',');
    const endpoints = ports.map((p) => `http://127.0.0.1:${p.client}`);
    const endpointsAlso = opts.alsoOn ? ports.map((p) => `http://${opts.alsoOn}:${p.client}`) : undefined;
    const listen = (i: number) => (endpointsAlso ? `${endpoints[i]},${endpointsAlso[i]}` : endpoints[i]!);
    const spawnMember = (i: number) => etcdSpawn(join(dir, names[i]!), listen(i), peers[i]!, { name: names[i]!, initialCluster, token });
    const members: Array<ReturnType<typeof etcdSpawn> | undefined> = names.map((_, i) => spawnMember(i));
    const stop = async () => {
      await Promise.all(members.map((m) => m?.kill()));
      rmSync(dir, { recursive: true, force: true });
    };
    const down = async (i: number) => {
      await members[i]?.kill();
      members[i] = undefined;
    };
    const upMany = async (which: number[]) => {
      for (const i of which) members[i] ??= spawnMember(i);
      await Promise.all(which.map((i) => members[i]!.healthy()));
    };
    try {
      await upMany(names.map((_, i) => i));
      return {
        endpoints,
        ...(endpointsAlso ? { endpointsAlso } : {}),
        down,
        up: (i) => upMany([i]),
        upAll: () => upMany(names.map((_, i) => i)),
        stop,
      };
    } catch (err) {
      const stderr = members.map((m) => m?.stderr() ?? '').join('\n');
      await stop();
      if (attempt >= 2 || !/address already in use/.test(stderr)) throw err;
    }
  }
}
