// DNS proxy (issue #17): the latency a lookup gains through the proxy, and the lookups/s it sustains.
// Loopback UDP, the upstream in its own process (so the proxy's event loop, one core, is measured
// alone); learning is an in-memory no-op here, so verdicts and map writes are not in these figures:
// bench/dns-agent.bench.ts measures the proxy inside a real agent, steered by the datapath.
//
//   latency    N sequential lookups of an allowed name, direct to the upstream vs through the proxy:
//              p50 / p99 of each and of the difference
//   rate       W lookups kept in flight for S seconds through the proxy: answered lookups/s
//
//   node dist/bench/dns-proxy.bench.js [samples=5000] [--inflight=64] [--secs=5] [--quick]
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { pino } from 'pino';
import { dnsParse, dnsQueryBuild, dnsReplyBuild, DnsType } from '../agent/dns/codec.js';
import { DnsProxy } from '../agent/dns/proxy.js';
import type { DnsEndpoint } from '../agent/dns/proxy.js';
import { fqdnMatcher } from '../agent/policy/fqdn.js';
import { MACHINE_LINE, argsParse, benchMain, onCleanup, resultWrite, stats, table } from './lib.js';

/** Child mode: a UDP DNS server answering every query with one A record; prints its port. */
function upstreamServe(): void {
  const s = dgram.createSocket('udp4');
  s.on('message', (m, r) => s.send(dnsReplyBuild(m, [{ name: dnsParse(m).questions[0]!.name, ttl: 30, address: '192.0.2.1' }]), r.port, r.address));
  s.bind(0, '127.0.0.1', () => console.log(String(s.address().port)));
}

class Client {
  readonly sock = dgram.createSocket('udp4');
  private readonly waiting = new Map<number, (t: number) => void>();
  private id = 0;
  constructor(private readonly to: DnsEndpoint) {
    this.sock.on('message', (m) => {
      const id = m.readUInt16BE(0);
      this.waiting.get(id)?.(performance.now());
      this.waiting.delete(id);
    });
  }
  lookup(): Promise<number> {
    const id = (this.id = (this.id + 1) & 0xffff);
    const t0 = performance.now();
    return new Promise((resolve) => {
      // A lost datagram counts as NaN after 2 s (left out of the figures) instead of hanging the run.
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve(NaN);
      }, 2000);
      this.waiting.set(id, (t) => {
        clearTimeout(timer);
        resolve(t - t0);
      });
      this.sock.send(dnsQueryBuild(id, 'api.bench.test', DnsType.A), this.to.port, this.to.address);
    });
  }
}

async function main(): Promise<void> {
  const args = argsParse();
  const samples = args.sizes[0] ?? (args.quick ? 1000 : 5000);
  const inflight = Number(args.opts.inflight ?? 64);
  const secs = Number(args.opts.secs ?? (args.quick ? 2 : 5));
  const child = spawn(process.execPath, [process.argv[1]!, '--upstream'], { stdio: ['ignore', 'pipe', 'inherit'] });
  // Our own child, which holds no state: killed outright (its copy of lib.js would report a SIGTERM).
  onCleanup('upstream', () => void child.kill('SIGKILL'));
  const port = await new Promise<number>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  const upstream = { address: '127.0.0.1', port };
  const allowed = fqdnMatcher({ matchPattern: '*.bench.test' });
  const proxy = new DnsProxy({
    listen: { address: '127.0.0.1', port: 0 },
    upstream: () => upstream,
    verdict: (_c, name) => ({ allowed: allowed(name) }),
    learn: async () => {},
    maxInFlight: 4096,
    log: pino({ level: 'silent' }),
  });
  const at = await proxy.start();
  onCleanup('proxy', () => proxy.stop());
  const direct = new Client(upstream);
  const via = new Client(at);
  onCleanup('clients', () => {
    direct.sock.close();
    via.sock.close();
  });
  for (let i = 0; i < 200; i++) await via.lookup(); // warm-up
  const d: number[] = [];
  const v: number[] = [];
  for (let i = 0; i < samples; i++) {
    d.push(await direct.lookup());
    v.push(await via.lookup());
  }
  const added = v.map((x, i) => x - d[i]!).filter((x) => !Number.isNaN(x));
  const [sd, sv, sa] = [stats(d.filter((x) => !Number.isNaN(x))), stats(v.filter((x) => !Number.isNaN(x))), stats(added)];
  table(`DNS lookup latency, ms (${samples} sequential lookups, loopback UDP)`, ['path', 'p50', 'p99', 'max'], [
    ['direct', sd.p50, sd.p99, sd.max],
    ['through the proxy', sv.p50, sv.p99, sv.max],
    ['added by the proxy', sa.p50, sa.p99, sa.max],
  ]);
  let answered = 0;
  const end = performance.now() + secs * 1000;
  const cpu0 = process.cpuUsage();
  await Promise.all(Array.from({ length: inflight }, async () => {
    while (performance.now() < end) {
      if (!Number.isNaN(await via.lookup())) answered++;
    }
  }));
  const cpu = process.cpuUsage(cpu0);
  const rate = answered / secs;
  table(`Through the proxy, ${inflight} in flight for ${secs} s`, ['lookups/s', 'CPU s per s (proxy + client)'], [[Math.round(rate), ((cpu.user + cpu.system) / 1e6 / secs).toFixed(2)]]);
  console.log(MACHINE_LINE());
  resultWrite('dns-proxy', { samples, inflight, secs, direct: sd, proxy: sv, added: sa, lookupsPerSecond: rate, stats: proxy.stats });
}

if (process.argv.includes('--upstream')) upstreamServe();
else void benchMain(main);
