import { Command, InvalidArgumentError, Option } from 'commander';
import type { Identity } from '../schemas/identity.js';
import type { Status } from '../schemas/status.js';
import type { Workload } from '../schemas/workload.js';
import { ApiClient, ApiError, DEFAULT_SOCKET } from './client.js';
import { flowCompact, flowTableHeader, flowTableRow, table } from './format.js';
import { observeFilters, type ObserveOptions } from './observe-filters.js';

const program = new Command('kitnet')
  .description('kitnet: bring VMs and external workloads into an eBPF-native cluster network')
  .option('-s, --socket <path>', 'agent API socket (env KITNET_SOCKET)', process.env.KITNET_SOCKET ?? DEFAULT_SOCKET)
  .showHelpAfterError();

const outputOption = () => new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table');
const client = () => new ApiClient({ socket: program.opts<{ socket: string }>().socket });
const printJson = (v: unknown) => console.log(JSON.stringify(v, null, 2));

function labelsParse(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`label "${value}" must look like key=value`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

function refParse(ref: string): { namespace: string; name: string } {
  const parts = ref.split('/');
  if (parts.length === 1 && parts[0]) return { namespace: 'default', name: parts[0] };
  if (parts.length === 2 && parts[0] && parts[1]) return { namespace: parts[0], name: parts[1] };
  throw new InvalidArgumentError(`"${ref}" must be NAME or NAMESPACE/NAME`);
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${value}" must be a positive integer`);
  return n;
}

program
  .command('agent')
  .description('run the kitnet agent in the foreground (as root)')
  .option('-c, --config <file>', 'YAML config file (default /etc/kitnet/config.yaml when present)')
  .option('--socket-path <path>', 'override api.socket')
  .option('--state-dir <dir>', 'override stateDir')
  .option('--pin-root <dir>', 'override bpfPinRoot')
  .action(async (opts: { config?: string; socketPath?: string; stateDir?: string; pinRoot?: string }) => {
    const { daemonRun } = await import('../../agent/daemon.js');
    const overrides = {
      ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
      ...(opts.pinRoot ? { bpfPinRoot: opts.pinRoot } : {}),
      ...(opts.socketPath ? { api: { socket: opts.socketPath } } : {}),
    };
    const { stop } = await daemonRun({ configPath: opts.config, overrides });
    const onSignal = () => {
      stop().then(
        () => process.exit(0),
        (err: unknown) => {
          console.error(err);
          process.exit(1);
        },
      );
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });

program
  .command('demo')
  .description('run the agent with two demo workloads, traffic between them and live flows (as root)')
  .option('--duration <seconds>', 'stop by itself after this many seconds', positiveInt)
  .action(async (o: { duration?: number }) => {
    const { demoRun } = await import('../../agent/demo.js');
    await demoRun({ durationSeconds: o.duration ?? 0 });
    process.exit(0);
  });

const workload = program.command('workload').alias('workloads').description('register, list and remove workloads');

workload
  .command('add <name>')
  .description('register a workload living in a network namespace')
  .requiredOption('--netns <path>', 'network namespace path (/var/run/netns/NAME or /proc/PID/ns/net)')
  .option('-n, --namespace <ns>', 'namespace', 'default')
  .option('-l, --label <key=value>', 'label (repeatable)', labelsParse, {})
  .option('--ipv4 <addr>', 'IPv4 address (default: allocated)')
  .option('--ipv6 <addr>', 'IPv6 address (default: allocated)')
  .option('--interface <name>', 'interface name inside the namespace')
  .addOption(new Option('--mode <mode>', 'device mode').choices(['auto', 'veth', 'netkit']).default('auto'))
  .addOption(outputOption())
  .action(async (name: string, o: { netns: string; namespace: string; label: Record<string, string>; ipv4?: string; ipv6?: string; interface?: string; mode: string; output: string }) => {
    const body = { name, namespace: o.namespace, labels: o.label, kind: 'netns', netns: o.netns, mode: o.mode, ipv4: o.ipv4, ipv6: o.ipv6, interface: o.interface };
    const w = await client().call<Workload>('POST', '/v1/workloads', body);
    if (o.output === 'json') return printJson(w);
    console.log(`workload ${w.namespace}/${w.name} registered: identity ${w.identity}, ${w.ipv4} ${w.ipv6}, ${w.mode} ${w.interfaces.host.name} <-> ${w.interfaces.workload.name}`);
  });

workload
  .command('ls')
  .description('list workloads')
  .option('-n, --namespace <ns>', 'only this namespace')
  .addOption(outputOption())
  .action(async (o: { namespace?: string; output: string }) => {
    const list = await client().call<Workload[]>('GET', `/v1/workloads${o.namespace ? `?namespace=${encodeURIComponent(o.namespace)}` : ''}`);
    if (o.output === 'json') return printJson(list);
    console.log(
      table(
        ['NAMESPACE', 'NAME', 'STATE', 'MODE', 'IDENTITY', 'IPV4', 'IPV6', 'DEVICE', 'LABELS'],
        list.map((w) => [w.namespace, w.name, w.state, w.mode, w.identity, w.ipv4, w.ipv6, w.interfaces.host.name, Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(',')]),
      ),
    );
  });

workload
  .command('rm <ref...>')
  .description('remove workloads (NAME or NAMESPACE/NAME)')
  .action(async (refs: string[]) => {
    for (const ref of refs) {
      const { namespace, name } = refParse(ref);
      await client().call('DELETE', `/v1/workloads/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
      console.log(`workload ${namespace}/${name} removed`);
    }
  });

program
  .command('identity')
  .description('identities')
  .command('ls')
  .description('list identities (reserved and allocated)')
  .addOption(outputOption())
  .action(async (o: { output: string }) => {
    const list = await client().call<Identity[]>('GET', '/v1/identities');
    if (o.output === 'json') return printJson(list);
    console.log(table(['ID', 'REFS', 'LABELS'], list.map((i) => [i.id, i.reserved ? 'reserved' : i.references, i.labels.join(' ')])));
  });

program
  .command('status')
  .description('agent, host, kernel and datapath status')
  .addOption(outputOption())
  .action(async (o: { output: string }) => {
    const s = await client().call<Status>('GET', '/v1/status');
    if (o.output === 'json') return printJson(s);
    const rows: Array<[string, string]> = [
      ['Node', `${s.nodeName} (kitnet ${s.version}, up ${s.uptimeSeconds}s)`],
      ['Host', `${s.host.os.distro} ${s.host.os.release}, ${s.host.cpu.brand} (${s.host.cpu.cores} cores), ${(s.host.memoryBytes / 2 ** 30).toFixed(1)} GiB`],
      ['Kernel', `${s.kernel.release}: netkit ${s.kernel.netkit ? 'yes' : 'no'}, tcx ${s.kernel.tcx ? 'yes' : 'no'}, tc clsact ${s.kernel.tcClsact ? 'yes' : 'no'}`],
      ['Datapath', `mode ${s.datapath.configuredMode} -> ${s.datapath.autoMode} (${s.datapath.reason}); pins ${s.datapath.pinRoot}`],
      ['Uplinks', s.host.uplinks.map((u) => `${u.name}${u.default ? '*' : ''} ${u.ipv4 || ''} ${u.ipv6 || ''}`.trim()).join(', ') || '-'],
      ['IPAM', `${s.ipam.ipv4Pool}, ${s.ipam.ipv6Pool}`],
      ['Workloads', `${s.counts.workloads} ${JSON.stringify(s.counts.workloadsByMode)} ${JSON.stringify(s.counts.workloadsByState)}`],
      ['Identities', String(s.counts.identities)],
      ['Flows', `${s.counts.flowsInRing} in ring, ${s.counts.flowsProcessed} processed, ${s.counts.lostEvents} lost`],
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    for (const [k, v] of rows) console.log(`${`${k}:`.padEnd(w + 2)}${v}`);
  });

const collect = (v: string, prev: string[] = []) => [...prev, v];

const observe = program
  .command('observe')
  .description('show flows in Hubble format, with Hubble-style filters')
  .option('--last <n>', 'newest N flows (default 20 without --follow)', positiveInt)
  .option('-f, --follow', 'keep printing new flows')
  .option('--since <time>', 'only flows at or after this RFC 3339 time')
  .option('--until <time>', 'only flows at or before this RFC 3339 time')
  .addOption(new Option('-o, --output <format>', 'output format').choices(['compact', 'json', 'table']).default('compact'));
for (const [flag, desc] of [
  ['ip', 'IP or CIDR, either side'], ['from-ip', 'source IP or CIDR'], ['to-ip', 'destination IP or CIDR'],
  ['workload', 'workload name, either side'], ['from-workload', 'source workload name'], ['to-workload', 'destination workload name'],
  ['pod', 'NS/NAME-prefix, either side'], ['from-pod', 'source NS/NAME-prefix'], ['to-pod', 'destination NS/NAME-prefix'],
  ['namespace', 'namespace, either side'], ['from-namespace', 'source namespace'], ['to-namespace', 'destination namespace'],
  ['label', 'label selector, either side'], ['from-label', 'source label selector'], ['to-label', 'destination label selector'],
  ['identity', 'identity, either side'], ['from-identity', 'source identity'], ['to-identity', 'destination identity'],
  ['port', 'L4 port, either side'], ['from-port', 'source port'], ['to-port', 'destination port'],
  ['verdict', 'FORWARDED or DROPPED'], ['drop-reason', 'drop reason name, e.g. POLICY_DENIED'],
  ['protocol', 'tcp, udp, sctp, icmp, icmpv4, icmpv6'], ['traffic-direction', 'ingress or egress'],
  ['tcp-flags', 'flags that must all be set, e.g. SYN or SYN,ACK'], ['node', 'node name'],
] as const) {
  observe.option(`--${flag} <value>`, `${desc} (repeatable)`, collect);
}
observe
  .option('-4, --ipv4', 'IPv4 flows only')
  .option('-6, --ipv6', 'IPv6 flows only')
  .option('--not <json>', 'blacklist: a JSON flow filter to hide (repeatable)', collect)
  .action(async (o: ObserveOptions & { not?: string[] }) => {
    const params = new URLSearchParams();
    if (o.last) params.set('last', String(o.last));
    else if (!o.follow) params.set('last', '20');
    if (o.follow) params.set('follow', 'true');
    if (o.since) params.set('since', o.since);
    if (o.until) params.set('until', o.until);
    const whitelist = observeFilters(o);
    if (whitelist.length) params.set('whitelist', JSON.stringify(whitelist));
    if (o.not?.length) params.set('blacklist', `[${o.not.join(',')}]`);
    const colour = process.stdout.isTTY === true && !process.env.NO_COLOR;
    let headerShown = false;
    await client().stream(`/v1/flows?${params}`, (l) => {
      const rec = JSON.parse(l) as { flow?: unknown; lost_events?: { source: string; num_events_lost: number } };
      if (o.output === 'json') return console.log(l);
      if (rec.lost_events) {
        return console.log(`EVENTS LOST: ${rec.lost_events.source} ${rec.lost_events.num_events_lost}`);
      }
      if (o.output === 'table') {
        if (!headerShown) console.log(flowTableHeader());
        headerShown = true;
        return console.log(flowTableRow(rec as Parameters<typeof flowTableRow>[0]));
      }
      console.log(flowCompact(rec as Parameters<typeof flowCompact>[0], colour));
    });
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof ApiError) console.error(`error: ${err.message} [${err.code}, HTTP ${err.statusCode}]`);
  else console.error(`error: ${(err as Error).message ?? String(err)}`);
  process.exit(1);
});
