import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from './sys.js';
import { timeLimit } from './timeouts.js';

/** A real single-member etcd (Debian's etcd-server) on loopback, for cluster-mode tests. */
export interface EtcdServer {
  /** The client URL, http://127.0.0.1:<port>. */
  endpoint: string;
  stop(): Promise<void>;
  /** Kills etcd (SIGKILL: clients see the connection drop) and starts it again on the same data and ports. */
  restart(): Promise<void>;
  /** Kills etcd (SIGKILL) and leaves it down until `revive` (same data and ports). */
  kill(): Promise<void>;
  revive(): Promise<void>;
}

/** A port nobody listens on right now (the kernel's choice); etcd binds it a moment later. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function healthy(endpoint: string): Promise<boolean> {
  try {
    const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: string }).health === 'true';
  } catch {
    return false;
  }
}

/**
 * Starts etcd on a fresh data dir and free ports and waits until /health says so. `stop` kills it and
 * removes the dir (call it in an after hook). Free ports can be taken between the probe and etcd's
 * bind: then etcd exits and the start is tried again on new ports.
 */
export async function etcdStart(): Promise<EtcdServer> {
  for (let attempt = 0; ; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-etcd-'));
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const endpoint = `http://127.0.0.1:${clientPort}`;
    let member = etcdSpawn(dir, endpoint, `http://127.0.0.1:${peerPort}`);
    const stop = async () => {
      await member.kill();
      rmSync(dir, { recursive: true, force: true });
    };
    const restart = async () => {
      await member.kill();
      member = etcdSpawn(dir, endpoint, `http://127.0.0.1:${peerPort}`);
      await member.healthy();
    };
    const kill = () => member.kill();
    const revive = async () => {
      member = etcdSpawn(dir, endpoint, `http://127.0.0.1:${peerPort}`);
      await member.healthy();
    };
    try {
      await member.healthy();
      return { endpoint, stop, restart, kill, revive };
    } catch (err) {
      await stop();
      if (attempt >= 2 || !/address already in use/.test(member.stderr())) throw err;
    }
  }
}

/** One etcd process on `dir`: wait for its health, or kill it. */
function etcdSpawn(dir: string, endpoint: string, peer: string): { healthy(): Promise<void>; kill(): Promise<void>; stderr(): string } {
  const proc: ChildProcess = spawn(
    'etcd',
    [
      '--name', 'kitnet-test',
      '--data-dir', join(dir, 'data'),
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `kitnet-test=${peer}`,
      '--log-level', 'error',
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
      waitFor('etcd to report healthy', async () => {
        if (exited) throw new Error(`etcd exited at start: ${stderr.trim()}`);
        return healthy(endpoint);
      }, timeLimit(30_000)).then(() => undefined),
    kill: async () => {
      if (exited) return;
      proc.kill('SIGKILL');
      await exit;
    },
  };
}
