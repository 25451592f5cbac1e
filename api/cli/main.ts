import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { ConfigReloadResult } from '../../common/schemas/config.js';
import type { Identity } from '../../common/schemas/identity.js';
import type { Namespace, PolicyApplyResult, PolicySummary, TraceResponse, WorkloadPolicy } from '../../common/schemas/policy.js';
import type { Status } from '../../common/schemas/status.js';
import type { ClusterStatus } from '../../common/schemas/cluster.js';
import { clusterStatusText } from './cluster-status.js';
import type { Workload } from '../../common/schemas/workload.js';
import { ApiClient, ApiError, socketDefault } from '../../common/api-client.js';
import { flowCompact, flowTableHeader, flowTableRow, table, workloadStateText } from '../../common/format.js';
import { observeFilters, type ObserveOptions } from './observe-filters.js';
import { collect, fqdnArgParse, labelsParse, portsParse, positiveInt, refParse, tracePeerParse } from './args.js';

const program = new Command('kitnet')
  .description('kitnet: bring VMs and external workloads into an eBPF-native cluster network')
  .option('-s, --socket <path>', 'agent API socket (env KITNET_SOCKET, else KITNET_API_SOCKET as the agent reads it)', socketDefault())
  .showHelpAfterError()
  // Run by bin/kitnet.js from the composition root (main/commands.ts), not by this client.
  .addHelpText('after', '\nDaemon commands (as root):\n  agent [options]            run the kitnet agent in the foreground\n  demo [--duration SECONDS]  run the agent with demo workloads (netns and a VM), traffic, a policy and live flows');

const outputOption = () => new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table');
const client = () => new ApiClient({ socket: program.opts<{ socket: string }>().socket });
const printJson = (v: unknown) => console.log(JSON.stringify(v, null, 2));

const workload = program.command('workload').alias('workloads').description('register, list and remove workloads');

workload
  .command('add <name>')
  .description('register a workload: a process in a network namespace (netns), a VM kitnet wires up (vm), or an existing tap (tap)')
  .addOption(new Option('-k, --kind <kind>', 'workload kind').choices(['netns', 'vm', 'tap']).default('netns'))
  .option('--netns <path>', 'network namespace path (/var/run/netns/NAME or /proc/PID/ns/net); required for netns, optional for vm (adopt it)')
  .option('--device <name>', 'tap only: the existing tap/vnet device in the host namespace')
  .option('--mac <mac>', "the guest NIC's MAC: tap (required) and vm (default: a fixed locally administered one)")
  .option('-n, --namespace <ns>', 'namespace', 'default')
  .option('-l, --label <key=value>', 'label (repeatable)', labelsParse, {})
  .option('--ipv4 <addr>', 'IPv4 address (default: allocated)')
  .option('--ipv6 <addr>', 'IPv6 address (default: allocated)')
  .option('--interface <name>', 'interface name inside the namespace')
  .option('-p, --port <name:port[/proto]>', 'named port, e.g. http:80/TCP (repeatable)', portsParse, [])
  .addOption(new Option('--mode <mode>', 'device mode (netns, vm)').choices(['auto', 'veth', 'netkit']).default('auto'))
  .addOption(outputOption())
  .action(async (name: string, o: { kind: string; netns?: string; device?: string; mac?: string; namespace: string; label: Record<string, string>; ipv4?: string; ipv6?: string; interface?: string; mode: string; output: string; port: unknown[] }) => {
    // Only what was given: the API (zod) names the field when a combination does not fit the kind.
    const body = {
      name, namespace: o.namespace, labels: o.label, kind: o.kind, netns: o.netns, device: o.device, mac: o.mac,
      mode: o.kind === 'tap' && o.mode === 'auto' ? undefined : o.mode,
      ipv4: o.ipv4, ipv6: o.ipv6, interface: o.interface, ...(o.port.length ? { ports: o.port } : {}),
    };
    const w = await client().call<Workload>('POST', '/v1/workloads', body);
    if (o.output === 'json') return printJson(w);
    console.log(`workload ${w.namespace}/${w.name} registered: identity ${w.identity}, ${w.ipv4} ${w.ipv6}, ${w.mode} ${w.interfaces.host.name} <-> ${w.interfaces.workload.name}`);
    if (w.vm) {
      console.log(`  guest: ${w.vm.addresses.ipv4} ${w.vm.addresses.ipv6}, MAC ${w.vm.mac}, gateways 169.254.1.1 / fe80::1 at ${w.vm.gatewayMac}`);
      console.log(`  start the VM: ${w.vm.runHint}`);
    }
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
        list.map((w) => [w.namespace, w.name, workloadStateText(w), w.mode, w.identity, w.ipv4, w.ipv6, w.interfaces.host.name, Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(',')]),
      ),
    );
    for (const w of list) if (w.state === 'error' && w.error) console.log(`${w.namespace}/${w.name}: ${w.error}`);
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

workload
  .command('label <ref> [labels...]')
  .description('replace the labels of a workload (key=value ...); its identity follows')
  .addOption(outputOption())
  .action(async (ref: string, labels: string[], o: { output: string }) => {
    const { namespace, name } = refParse(ref);
    const body = { labels: labels.reduce<Record<string, string>>((acc, l) => labelsParse(l, acc), {}) };
    const w = await client().call<Workload>('PATCH', `/v1/workloads/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`, body);
    if (o.output === 'json') return printJson(w);
    console.log(`workload ${w.namespace}/${w.name}: identity ${w.identity} (${w.identityLabels.join(' ')})`);
  });

workload
  .command('policy <ref>')
  .description("the workload's effective policy map entries")
  .addOption(outputOption())
  .action(async (ref: string, o: { output: string }) => {
    const { namespace, name } = refParse(ref);
    const p = await client().call<WorkloadPolicy>('GET', `/v1/workloads/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/policy`);
    if (o.output === 'json') return printJson(p);
    console.log(p.text || `endpoint ${p.endpointId}: no policy entries`);
  });

const namespace = program.command('namespace').alias('namespaces').description('namespaces and their labels');
namespace
  .command('set <name>')
  .description("set a namespace's labels (kubernetes.io/metadata.name is always implied)")
  .option('-l, --label <key=value>', 'label (repeatable)', labelsParse, {})
  .action(async (name: string, o: { label: Record<string, string> }) => {
    const ns = await client().call<Namespace>('PUT', `/v1/namespaces/${encodeURIComponent(name)}`, { labels: o.label });
    console.log(`namespace ${ns.name}: ${Object.entries(ns.labels).map(([k, v]) => `${k}=${v}`).join(',') || '(no labels)'}`);
  });
namespace
  .command('ls')
  .addOption(outputOption())
  .action(async (o: { output: string }) => {
    const list = await client().call<Namespace[]>('GET', '/v1/namespaces');
    if (o.output === 'json') return printJson(list);
    console.log(table(['NAME', 'LABELS'], list.map((n) => [n.name, Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(',')])));
  });

const policy = program.command('policy').alias('policies').description('NetworkPolicy / CiliumNetworkPolicy');
policy
  .command('apply')
  .description('apply policy documents (YAML or JSON, several per file)')
  .requiredOption('-f, --file <path>', 'file to read, or - for standard input')
  .action(async (o: { file: string }) => {
    let text: string;
    try {
      text = readFileSync(o.file === '-' ? 0 : o.file, 'utf8');
    } catch (err) {
      throw new Error(`cannot read ${o.file}: ${(err as Error).message}`);
    }
    const r = await client().call<PolicyApplyResult>('PUT', '/v1/policies', text, 'application/yaml');
    for (const a of r.applied) console.log(`${a.kind.toLowerCase()}/${a.namespace ? `${a.namespace}/` : ''}${a.name} ${a.action}`);
    console.log(`(${r.stats.endpoints} endpoints, ${r.stats.entries} map entries, ${r.stats.upserts} written, ${r.stats.deletes} removed, ${r.stats.ms} ms)`);
  });
policy
  .command('ls')
  .addOption(outputOption())
  .action(async (o: { output: string }) => {
    const list = await client().call<PolicySummary[]>('GET', '/v1/policies');
    if (o.output === 'json') return printJson(list);
    console.log(table(['KIND', 'NAMESPACE', 'NAME', 'UPDATED'], list.map((p) => [p.kind, p.namespace || '-', p.name, p.updatedAt])));
  });
policy
  .command('rm <kind> <ref>')
  .description('delete a policy: KIND (netpol|cnp|ccnp or the full kind) and NS/NAME (or NAME for ccnp)')
  .action(async (kind: string, ref: string) => {
    const [ns, name] = ref.includes('/') ? ref.split('/', 2) : ['-', ref];
    await client().call('DELETE', `/v1/policies/${encodeURIComponent(kind)}/${encodeURIComponent(ns!)}/${encodeURIComponent(name!)}`);
    console.log(`${kind} ${ref} deleted`);
  });
policy
  .command('trace')
  .description('verdict for a connection, from the compiled state the datapath enforces; --to-fqdn: for a name, from what the DNS proxy learned')
  .requiredOption('--from <peer>', 'NS/NAME, label set (NS:k=v,k2=v2) or IP')
  .option('--to <peer>', 'NS/NAME, label set or IP')
  .option('--to-fqdn <name>', 'a DNS name: its learned addresses, their verdicts and whether a lookup is allowed', fqdnArgParse)
  .option('--port <port/proto>', 'e.g. 80/TCP, 53/UDP, 8/ICMP (ICMP type); optional with --to-fqdn')
  .option('--resolver <ip>', 'with --to-fqdn: the resolver the lookup would go to (default: each one the rules allow)')
  .addOption(outputOption())
  .action(async (o: { from: string; to?: string; toFqdn?: string; port?: string; resolver?: string; output: string }) => {
    if ((o.to === undefined) === (o.toFqdn === undefined)) throw new InvalidArgumentError('give exactly one of --to and --to-fqdn');
    if (o.to !== undefined && o.port === undefined) throw new InvalidArgumentError('--port is required with --to');
    if (o.resolver !== undefined && o.toFqdn === undefined) throw new InvalidArgumentError('--resolver goes with --to-fqdn');
    const m = o.port?.match(/^(\d+)(?:\/([a-z0-9]+))?$/i);
    if (o.port !== undefined && !m) throw new InvalidArgumentError(`--port "${o.port}" must look like 80/TCP`);
    const body = {
      from: tracePeerParse(o.from),
      to: o.toFqdn !== undefined ? { fqdn: o.toFqdn } : tracePeerParse(o.to!),
      ...(m ? { port: Number(m[1]), protocol: (m[2] ?? 'TCP').toUpperCase() } : {}),
      ...(o.resolver !== undefined ? { resolver: o.resolver } : {}),
    };
    const r = await client().call<TraceResponse>('POST', '/v1/policy/trace', body);
    if (o.output === 'json') return printJson(r);
    console.log(r.text);
    process.exitCode = r.verdict === 'ALLOWED' ? 0 : r.verdict === 'DENIED' ? 2 : 3;
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
      ['BPF maps', s.maps.map((m) => `${m.map} ${m.entries}/${m.capacity} (${((100 * m.entries) / m.capacity).toFixed(1)}%)`).join(', ')],
    ];
    for (const warning of s.warnings) rows.push(['Warning', `${warning.key}: ${warning.message}`]);
    const w = Math.max(...rows.map(([k]) => k.length));
    for (const [k, v] of rows) console.log(`${`${k}:`.padEnd(w + 2)}${v}`);
  });

program
  .command('cluster')
  .description('cluster mode (etcd, Cilium ClusterMesh)')
  .command('status')
  .description('cluster, etcd, this node\'s lease, heartbeat, nodes, identity and ipcache counts, peer clusters')
  .addOption(outputOption())
  .action(async (o: { output: string }) => {
    const s = await client().call<ClusterStatus>('GET', '/v1/cluster');
    if (o.output === 'json') return printJson(s);
    console.log(clusterStatusText(s));
  });


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
  ['fqdn', 'name the DNS proxy learned, either side (* any run of name characters)'], ['from-fqdn', 'source name pattern'], ['to-fqdn', 'destination name pattern, e.g. api.example.com or *.example.com'],
  ['verdict', 'FORWARDED or DROPPED'], ['drop-reason', 'drop reason name, e.g. POLICY_DENIED'],
  ['protocol', 'tcp, udp, sctp, icmp, icmpv4, icmpv6, dhcp, dhcpv6, dns'], ['traffic-direction', 'ingress or egress'],
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

const token = program.command('token').alias('tokens').description('bearer tokens of the TCP API (api.tcp.tokensFile)');
token
  .command('create <name>')
  .description('make a random token: prints the secret once (stderr) and the tokens-file entry with its hash (stdout)')
  .option('--scopes <list>', 'comma-separated: read, register, admin', 'read')
  .option('--namespaces <list>', 'comma-separated namespaces a register token may change ("*" for all)')
  .option('--netns <patterns>', 'comma-separated netns path patterns a register token may use, e.g. "/var/run/netns/tenant-a-*" (default: any)')
  .option('--taps <patterns>', 'comma-separated tap device patterns a register token may adopt, e.g. "vnet*" (default: none)')
  .action(async (name: string, o: { scopes: string; namespaces?: string; netns?: string; taps?: string }) => {
    const { tokenGenerate, tokenHash } = await import('../security.js');
    const secret = tokenGenerate();
    const list = (v: string) => `[${v.split(',').map((x) => JSON.stringify(x.trim())).join(', ')}]`;
    console.error(`secret (shown once; give it to the client as "Authorization: Bearer ..."): ${secret}`);
    const optional = (key: string, v: string | undefined) => (v ? `\n  ${key}: ${list(v)}` : '');
    console.log(`- name: ${JSON.stringify(name)}\n  secretSha256: ${tokenHash(secret)}\n  scopes: ${list(o.scopes)}` +
      `${optional('namespaces', o.namespaces)}${optional('netns', o.netns)}${optional('taps', o.taps)}`);
  });
token
  .command('hash')
  .description('print the secretSha256 of a token secret read from stdin (kept off the command line and shell history)')
  .action(async () => {
    const { tokenHash } = await import('../security.js');
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    const secret = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
    if (!secret) throw new InvalidArgumentError('no secret on stdin');
    console.log(tokenHash(secret));
  });

program
  .command('install')
  .description('install kitnet as a systemd service: unit, default config, kitnet group; enable and start it')
  .option('--root <dir>', 'write into this scratch root instead of / (nothing is enabled)')
  .option('--no-enable', 'write the files only')
  .action(async (o: { root?: string; enable: boolean }) => {
    const { install } = await import('../../agent/install.js');
    install({ root: o.root ?? '', enable: o.enable, log: (l) => console.log(l) });
  });

const config = program.command('config').description('agent configuration');
config
  .command('check <file>')
  .description(
    'validate a config file as the agent would: every key, the TLS files (parsed, key matching the certificate), ' +
      'the tokens file, the TCP host (resolved), the socket, state and pin paths; warns about risky settings. ' +
      'Checks the file alone, and with KITNET_* variables set also the file merged with them, labelled as such',
  )
  .action(async (file: string) => {
    const { CONFIG_ENV, ConfigError, configLoad } = await import('../../agent/config.js');
    const { configPrepare, configWarnings } = await import('../../agent/config-preflight.js');
    const check = async (env: NodeJS.ProcessEnv, label: string) => {
      let c;
      try {
        c = configLoad(file, {}, env);
        await configPrepare(c);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        const message = err.message.startsWith(`${file}: `) ? err.message : `${file}: ${err.message}`;
        throw new Error(`${label}${message}`, { cause: err });
      }
      for (const w of configWarnings(c)) console.error(`warning: ${label}${file}: ${w.key}: ${w.message}`);
      console.log(`${label}${file}: OK (node ${c.nodeName}, socket ${c.api.socket}, pools ${c.ipam.ipv4Pool} ${c.ipam.ipv6Pool}, mode ${c.datapath.mode})`);
    };
    // The file itself: what the agent reads under systemd, whatever this shell's environment holds.
    await check({}, '');
    const envSet = CONFIG_ENV.filter((e) => process.env[e.env] !== undefined && process.env[e.env] !== '').map((e) => e.env);
    if (envSet.length) await check(process.env, `with the environment (${envSet.join(', ')}): `);
  });

config
  .command('reload')
  .description("make the running agent re-read its config file (like SIGHUP); prints what changed and what needs a restart")
  .addOption(outputOption())
  .action(async (o: { output: string }) => {
    const r = await client().call<ConfigReloadResult>('POST', '/v1/config/reload');
    if (o.output === 'json') return printJson(r);
    const file = r.file ?? '(no file: defaults, environment and flags)';
    if (!r.changed.length) console.log(`config reloaded from ${file}: nothing changed`);
    else console.log(`config reloaded from ${file}:`);
    const show = (v: unknown) => (v === null ? '(unset)' : JSON.stringify(v));
    for (const c of r.changed) console.log(`  ${c.key}: ${show(c.from)} -> ${show(c.to)}${c.applied ? '  (applied)' : '  (takes effect after a restart: systemctl restart kitnet)'}`);
    if (r.tokens) console.log(`tokens reloaded from ${r.tokens.file}: ${r.tokens.count} token(s)`);
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof ApiError) console.error(`error: ${err.message} [${err.code}, HTTP ${err.statusCode}]`);
  else console.error(`error: ${(err as Error).message ?? String(err)}`);
  process.exit(1);
});
