import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { datapathUnpinAll } from '../../bpf/index.js';
import type { ConfigInput } from '../../agent/config.js';
import { pinRootLockPath } from '../../agent/instance-lock.js';
import { daemonRun, type Daemon } from '../../main/daemon.js';
import { ApiClient } from '../../common/api-client.js';
import { testMode } from './mode.js';
import { links, netnsAdd, netnsDel, run, uniq } from './sys.js';

export interface AgentFixtureOptions {
  /** Short tag for names: temp dir, pin root, namespaces. */
  tag: string;
  ipv4Pool: string;
  ipv6Pool: string;
  /** Workload namespaces the test uses: their links are removed at cleanup even if the agent could not. */
  namespaces: string[];
  overrides?: ConfigInput;
}

/**
 * A real agent for a root test, isolated from every other agent on the host: its own state dir,
 * socket, pin root, address pools and network namespaces. `cleanup` removes all of it, also after a
 * failed test; register it first (`after(() => fx.cleanup())`).
 */
export class AgentFixture {
  readonly id = uniq();
  readonly dir: string;
  readonly pinRoot: string;
  readonly socket: string;
  readonly api: ApiClient;
  readonly overrides: ConfigInput;
  daemon: Daemon | undefined;
  private readonly netnsNames: string[] = [];

  constructor(private readonly opts: AgentFixtureOptions) {
    this.dir = mkdtempSync(join(tmpdir(), `kitnet-${opts.tag}-`));
    this.pinRoot = `/sys/fs/bpf/kitnet-${opts.tag}-${this.id}`;
    this.socket = join(this.dir, 'kitnet.sock');
    this.api = new ApiClient({ socket: this.socket });
    this.overrides = {
      stateDir: join(this.dir, 'state'),
      bpfPinRoot: this.pinRoot,
      logLevel: 'error',
      nodeName: opts.tag,
      api: { socket: this.socket },
      ipam: { ipv4Pool: opts.ipv4Pool, ipv6Pool: opts.ipv6Pool },
      datapath: { mode: testMode },
      ...opts.overrides,
    };
  }

  /** A fresh network namespace `kitnet-<tag>-<name>-<id>`, deleted at cleanup; returns its name. */
  async netns(name: string): Promise<string> {
    const ns = `kitnet-${this.opts.tag}-${name}-${this.id}`;
    await netnsAdd(ns);
    this.netnsNames.push(ns);
    return ns;
  }

  async start(opts: { bpfObject?: string } = {}): Promise<Daemon> {
    this.daemon = await daemonRun({ overrides: this.overrides, ...opts });
    return this.daemon;
  }

  async stop(): Promise<void> {
    const d = this.daemon;
    this.daemon = undefined;
    await d?.stop();
  }

  get agent(): Daemon['agent'] {
    if (!this.daemon) throw new Error('the agent is not running');
    return this.daemon.agent;
  }

  /** This test's kitnet links on the host (by alias namespace). */
  async ownLinks(): Promise<Awaited<ReturnType<typeof links>>> {
    return (await links()).filter((l) => this.opts.namespaces.some((ns) => l.ifalias?.startsWith(`kitnet:${ns}/`)));
  }

  async cleanup(): Promise<void> {
    await this.stop().catch(() => undefined);
    for (const l of await this.ownLinks()) await run('ip', ['link', 'del', l.ifname]).catch(() => undefined);
    for (const ns of this.netnsNames) await netnsDel(ns);
    await datapathUnpinAll(this.pinRoot).catch(() => undefined);
    rmSync(pinRootLockPath(this.pinRoot), { force: true });
    rmSync(this.dir, { recursive: true, force: true });
  }
}
