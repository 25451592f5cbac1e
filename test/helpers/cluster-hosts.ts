import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { datapathUnpinAll } from '../../bpf/index.js';
import type { ConfigInput } from '../../agent/config.js';
import { ApiClient } from '../../common/api-client.js';
import { etcdClusterStart, etcdStart, type EtcdCluster, type EtcdServer } from './etcd.js';
import { testCaMake } from './test-ca.js';
import { testMode } from './mode.js';
import { timeLimit } from './timeouts.js';
import { netnsAdd, netnsDel, run, status, uniq, waitFor } from './sys.js';

export interface ClusterHostsOptions {
  /** Short tag for names (namespaces, pin roots, temp dirs). */
  tag: string;
  hosts: number;
  cluster: { name: string; id: number; leaseTTLSeconds?: number };
  /** The cluster pools every host carves its node CIDRs from. */
  ipv4Pool: string;
  ipv6Pool: string;
  /** Each host also serves Hubble on TCP (TLS, test CA) at its node IPv4, port HUBBLE_PORT. */
  hubble?: boolean;
  /** A cluster of this many etcd members instead of one (`etcdCluster`); every agent is given all their endpoints. */
  etcdMembers?: number;
}

/** The Hubble port of every host (the same across the cluster, as Cilium's 4244). */
export const HUBBLE_PORT = 4244;

/**
 * One kitnet "host": an agent process in a network namespace of its own (entered with nsenter, so it
 * shares the machine's bpffs and mounts), with its own API socket, pin root and state dir, and a node
 * address (IPv4 and IPv6) on the cluster's shared bridge.
 */
export class ClusterHost {
  readonly api: ApiClient;
  readonly dir: string;
  readonly socket: string;
  readonly pinRoot: string;
  proc: ChildProcess | undefined;
  /** The agent's log (pino JSON lines), also in `<dir>/agent.log`. */
  readonly logLines: string[] = [];
  private logFile: WriteStream | undefined;

  constructor(
    readonly index: number,
    readonly name: string,
    /** The host's network namespace (a name under /run/netns). */
    readonly netns: string,
    readonly nodeIPv4: string,
    readonly nodeIPv6: string,
    private readonly overrides: ConfigInput,
    tag: string,
    id: string,
  ) {
    this.dir = mkdtempSync(join(tmpdir(), `kitnet-${tag}-${name}-`));
    this.socket = join(this.dir, 'kitnet.sock');
    this.pinRoot = `/sys/fs/bpf/kitnet-test-${tag}-${name}-${id}`;
    this.api = new ApiClient({ socket: this.socket });
  }

  config(): ConfigInput {
    return { ...this.overrides, stateDir: join(this.dir, 'state'), bpfPinRoot: this.pinRoot, api: { socket: this.socket } };
  }

  /** Starts the agent in the host's namespace and waits until its API listens. */
  async start(): Promise<void> {
    const configFile = join(this.dir, 'overrides.json');
    writeFileSync(configFile, JSON.stringify(this.config()));
    const runner = fileURLToPath(new URL('./sandboxed-agent.js', import.meta.url));
    const proc = spawn('nsenter', [`--net=/run/netns/${this.netns}`, '--', process.execPath, runner, configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    this.logFile ??= createWriteStream(join(this.dir, 'agent.log'), { flags: 'a' });
    let ready = false;
    let stderr = '';
    const file = this.logFile;
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      if (line === 'ready') ready = true;
      this.logLines.push(line);
      if (this.logLines.length > 20_000) this.logLines.splice(0, 10_000);
      file.write(`${line}\n`);
    });
    proc.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
      file.write(d);
    });
    await waitFor(`agent ${this.name} to serve`, async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`agent ${this.name} exited at start (${proc.exitCode ?? proc.signalCode}): ${stderr}\n${this.logLines.slice(-20).join('\n')}`);
      return ready;
    }, timeLimit(90_000));
  }

  /** Sends a signal to the agent and waits for it to exit (SIGKILL: no cleanup at all). */
  async kill(signal: NodeJS.Signals): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill(signal);
    await exited;
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill('SIGTERM');
    const timer = setTimeout(() => p.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  }

  /** The agent's log lines (parsed) whose msg matches. */
  logged(msg: RegExp): Array<Record<string, unknown>> {
    const out: Array<Record<string, unknown>> = [];
    for (const l of this.logLines) {
      if (!l.startsWith('{')) continue;
      try {
        const o = JSON.parse(l) as Record<string, unknown>;
        if (typeof o.msg === 'string' && msg.test(o.msg)) out.push(o);
      } catch {
        // not a log line
      }
    }
    return out;
  }

  /** Routes in the host's namespace with kitnet's node-route protocol (211). */
  async nodeRoutes(family: 4 | 6): Promise<Array<{ dst: string; gateway?: string; dev?: string }>> {
    return JSON.parse(await run('ip', ['-n', this.netns, `-${family}`, '-j', 'route', 'show', 'proto', '211'])) as Array<{ dst: string; gateway?: string; dev?: string }>;
  }

  async cleanup(): Promise<void> {
    await this.stop().catch(() => undefined);
    this.logFile?.end();
    await datapathUnpinAll(this.pinRoot).catch(() => undefined);
  }
}

/**
 * N kitnet hosts and one real etcd (or a cluster of `etcdMembers`). The hosts' namespaces hang on a bridge in a "switch" namespace of
 * their own (IPv4 198.18.<o>.0/24, IPv6 fd00:c1a5:<o>::/64, node i at .i+1 / ::i+1); the machine's
 * namespace joins the bridge only with one veth at .254, where etcd listens for the hosts. Nothing
 * else changes in the machine's namespace. `cleanup` removes it all, also after a failed test.
 */
export class ClusterHosts {
  readonly id = uniq();
  readonly hosts: ClusterHost[] = [];
  /** The one etcd (without `etcdMembers`). */
  etcd: EtcdServer | undefined;
  /** The etcd members (with `etcdMembers`). */
  etcdCluster: EtcdCluster | undefined;
  readonly octet = 20 + (process.pid % 200);
  private readonly switchNs: string;
  private readonly rootLink: string;
  private readonly workloadNs: string[] = [];
  private caDir: string | undefined;
  private batches = 0;

  constructor(private readonly opts: ClusterHostsOptions) {
    this.switchNs = `kitnet-${opts.tag}-sw-${this.id}`;
    this.rootLink = `kc${this.id}`.slice(0, 15);
  }

  get subnet4(): string {
    return `198.18.${this.octet}`;
  }

  /** Builds the network, starts etcd, and creates (does not start) the hosts. */
  async setup(): Promise<void> {
    const sw = this.switchNs;
    await netnsAdd(sw);
    await run('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge']);
    await run('ip', ['-n', sw, 'link', 'set', 'br0', 'up']);
    await run('ip', ['link', 'add', this.rootLink, 'type', 'veth', 'peer', 'name', 'up0', 'netns', sw]);
    await run('ip', ['-n', sw, 'link', 'set', 'up0', 'master', 'br0', 'up']);
    await run('ip', ['addr', 'add', `${this.subnet4}.254/24`, 'dev', this.rootLink]);
    await run('ip', ['link', 'set', this.rootLink, 'up']);
    let endpoints: string[];
    if (this.opts.etcdMembers) {
      this.etcdCluster = await etcdClusterStart(this.opts.etcdMembers, { alsoOn: `${this.subnet4}.254` });
      endpoints = this.etcdCluster.endpointsAlso!;
    } else {
      this.etcd = await etcdStart({ alsoOn: `${this.subnet4}.254` });
      endpoints = [this.etcd.endpointAlso!];
    }
    const ca = this.opts.hubble ? testCaMake((this.caDir = mkdtempSync(join(tmpdir(), `kitnet-${this.opts.tag}-ca-`))), 'kitnet.test') : undefined;
    for (let i = 0; i < this.opts.hosts; i++) {
      const name = `h${i + 1}`;
      const ns = `kitnet-${this.opts.tag}-${name}-${this.id}`;
      await netnsAdd(ns);
      const v4 = `${this.subnet4}.${i + 1}`;
      const v6 = `fd00:c1a5:${this.octet.toString(16)}::${i + 1}`;
      await run('ip', ['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', `p${name}`, 'netns', sw]);
      await run('ip', ['-n', sw, 'link', 'set', `p${name}`, 'master', 'br0', 'up']);
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', ns, 'addr', 'add', `${v4}/24`, 'dev', 'eth0']);
      await run('ip', ['-n', ns, 'addr', 'add', `${v6}/64`, 'dev', 'eth0', 'nodad']);
      await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      this.hosts.push(
        new ClusterHost(i, name, ns, v4, v6, {
          nodeName: name,
          logLevel: 'info',
          ipam: { ipv4Pool: this.opts.ipv4Pool, ipv6Pool: this.opts.ipv6Pool },
          datapath: { mode: testMode },
          ...(ca ? { hubble: { listen: `${v4}:${HUBBLE_PORT}`, tls: { cert: ca.serverCert, key: ca.serverKey, serverName: name } } } : {}),
          cluster: {
            name: this.opts.cluster.name,
            id: this.opts.cluster.id,
            nodeIP: v4,
            nodeIPv6: v6,
            etcd: { endpoints },
            ...(this.opts.cluster.leaseTTLSeconds ? { leaseTTLSeconds: this.opts.cluster.leaseTTLSeconds } : {}),
          },
        }, this.opts.tag, this.id),
      );
    }
  }

  /** A fresh namespace for a workload, deleted at cleanup; returns its name. */
  async workloadNetns(name: string): Promise<string> {
    const ns = `kitnet-${this.opts.tag}-w${name}-${this.id}`;
    await netnsAdd(ns);
    this.workloadNs.push(ns);
    return ns;
  }

  /** Many fresh workload namespaces at once (one `ip -batch`), deleted at cleanup; returns their names. */
  async workloadNetnsMany(names: readonly string[]): Promise<string[]> {
    const all = names.map((n) => `kitnet-${this.opts.tag}-w${n}-${this.id}`);
    this.workloadNs.push(...all);
    await this.netnsBatch('add', all);
    return all;
  }

  private async netnsBatch(op: 'add' | 'del', all: readonly string[]): Promise<void> {
    if (all.length === 0) return;
    const file = join(tmpdir(), `kitnet-${this.opts.tag}-netns-${this.id}-${op}-${++this.batches}.batch`);
    writeFileSync(file, all.map((ns) => `netns ${op} ${ns}\n`).join(''));
    try {
      // -force: a delete goes on past a namespace that is already gone.
      await run('ip', [...(op === 'del' ? ['-force'] : []), '-batch', file], { timeoutMs: 120_000 });
    } finally {
      rmSync(file, { force: true });
    }
  }

  async cleanup(): Promise<void> {
    for (const h of this.hosts) await h.cleanup();
    // Many at once in one batch; one by one what the batch did not take (or when there are few).
    const batched = this.workloadNs.length > 8 && (await this.netnsBatch('del', this.workloadNs).then(() => true, () => false));
    for (const ns of batched ? [] : this.workloadNs) await netnsDel(ns);
    for (const h of this.hosts) {
      await netnsDel(h.netns);
      rmSync(h.dir, { recursive: true, force: true });
    }
    await status('ip', ['link', 'del', this.rootLink]);
    await netnsDel(this.switchNs);
    await this.etcd?.stop();
    await this.etcdCluster?.stop();
    if (this.caDir) rmSync(this.caDir, { recursive: true, force: true });
  }
}
