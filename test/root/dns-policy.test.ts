// DNS-aware egress policy through a real agent (issue #17): a real resolver (Debian's dnsmasq) in its own
// namespace serves a test zone (A, AAAA, CNAME, TTL 5 s) and TCP servers answer at the zone's addresses.
// A workload allowed `toFQDNs: matchName: api.test` reaches api.test's addresses right after looking
// it up (v4 and v6) and not the server next to it; matchPattern `*.svc.test` covers one label only; a
// query for a name no DNS rule allows is REFUSED by the proxy; a query sent straight to another resolver
// address is steered all the same; DNS over TCP too. A CNAME teaches the name asked, not its target; a
// query crafted to the host's loopback or 0.0.0.0 is REFUSED and reaches no host-local resolver; a
// learned address on a policy's own egressDeny /32 keeps the deny and, at expiry, the policy's entry. Hostile senders: malformed and oversized queries, a
// resolver replying with the wrong id, with addresses for a name not asked, or with garbage: no
// identity, no access, and the proxy keeps answering; a workload resolving a wildcard of its own (a new
// address per name) is stopped at its share of learned addresses while another still learns. An agent restart keeps what was learned (and a
// corrupt state file is ignored, not half-used). dns.proxy.minTTL 600 keeps the 5 s records through
// the restarts.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { FQDN_IDENTITY_BASE } from '../../agent/dns/fqdn-cache.js';
import { ApiError } from '../../common/api-client.js';
import type { TraceResponse } from '../../common/schemas/policy.js';
import { AgentFixture } from '../helpers/fixture.js';
import { hubbleCliOrSkip, hubbleRun } from '../helpers/hubble-cli.js';
import { run, status, waitFor } from '../helpers/sys.js';

const execFileP = promisify(execFile);
const CLI = fileURLToPath(new URL('../../../bin/kitnet.js', import.meta.url));
const PORT = 9400;
/** n<i>.iter.test -> 10.228.2.<10+i>: a new address per lookup, for the first-connection loop. */
const ITERATIONS = 20;
/** A DNS rule a tenant may write: every star a backtracking regular expression would multiply the work by ~60 on the name below. */
const MANY_STARS = `${'*a'.repeat(12)}*b.test`;
/** A name the rule allows, served by the test's resolver (an address nothing listens on). */
const MANY_STARS_NAME = `${'a'.repeat(20)}b.test`;
const MANY_STARS_ADDR = '10.228.3.1';
const iterAddr = (i: number) => `10.228.2.${10 + i}`;
const EXT = {
  host4: '10.228.0.1', host6: 'fd00:228::1',
  dns4: '10.228.0.2', dns6: 'fd00:228::2', dnsOther4: '10.228.0.3', evil4: '10.228.0.4',
  api4: '10.228.1.10', api6: 'fd00:228:1::10', other4: '10.228.1.11', other6: 'fd00:228:1::11',
  svcA4: '10.228.1.20', svcB4: '10.228.1.21', unasked4: '10.228.1.30', short1: '10.228.1.40', short2: '10.228.1.41',
  fresh4: '10.228.2.200', deny4: '10.228.1.50',
};

const SERVER_PY = `
import socket, socketserver
class T(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6; allow_reuse_address = True; daemon_threads = True
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b'ok')
        while True:
            d = self.request.recv(16)
            if not d: break
            self.request.sendall(d)
T(('::', ${PORT}), H).serve_forever()
`;
/** A TCP connection that gets the server's answer: exit 0; refused, dropped or silent: 1. */
const CONNECT_PY = `
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.settimeout(1.5)
try:
    s.connect((addr, port)); sys.exit(0 if s.recv(2) == b'ok' else 1)
except OSError:
    sys.exit(1)
`;
/**
 * dig-like: resolve NAME (A or AAAA) at SERVER over udp/tcp, then connect to every address at once
 * (the first connection after the lookup). Prints JSON {rcode, addrs, connected}; rcode -1: no answer.
 * With `--batch JSON` (a list of [SERVER, NAME, QTYPE, TRANSPORT, CONNECT]): the lookups one after
 * the other in this one process, one JSON line each; a lookup's connections are closed before the
 * next lookup, as the exit of a process of its own closed them.
 */
const LOOKUP_PY = `
import json, random, socket, struct, sys
def lookup(server, name, qtype, transport, connect, held):
    t = 1 if qtype == 'A' else 28
    qid = random.randrange(65536)
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\0' + struct.pack('>HH', t, 1)
    fam = socket.AF_INET6 if ':' in server else socket.AF_INET
    try:
        if transport == 'udp':
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(8); s.sendto(q, (server, 53)); m, src = s.recvfrom(4096)
            if src[0] != server: return {'rcode': -2, 'from': src[0]}
        else:
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(8); s.connect((server, 53)); s.sendall(struct.pack('>H', len(q)) + q)
            b = b''
            while len(b) < 2 or len(b) < 2 + struct.unpack('>H', b[:2])[0]:
                c = s.recv(4096)
                if not c: break
                b += c
            m = b[2:]
    except OSError:
        return {'rcode': -1, 'addrs': [], 'connected': []}
    rid, flags, qd, an = struct.unpack('>HHHH', m[:8])
    def skip(o):
        while True:
            l = m[o]
            if l == 0: return o + 1
            if l >= 0xc0: return o + 2
            o += 1 + l
    o = 12
    for _ in range(qd): o = skip(o) + 4
    addrs = []
    for _ in range(an):
        o = skip(o); rt, rc, ttl, rl = struct.unpack('>HHIH', m[o:o + 10]); o += 10
        if rt == 1: addrs.append(socket.inet_ntop(socket.AF_INET, m[o:o + 4]))
        if rt == 28: addrs.append(socket.inet_ntop(socket.AF_INET6, m[o:o + 16]))
        o += rl
    connected = []
    if connect:
        for a in addrs:
            c = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET); c.settimeout(1.5)
            try:
                c.connect((a, ${PORT})); connected.append(c.recv(2) == b'ok'); held.append(c)
            except OSError:
                connected.append(False)
    return {'rcode': flags & 15, 'id_ok': rid == qid, 'addrs': addrs, 'connected': connected}
if sys.argv[1] == '--batch':
    for server, name, qtype, transport, connect in json.loads(sys.argv[2]):
        held = []
        print(json.dumps(lookup(server, name, qtype, transport, connect, held)), flush=True)
        for c in held: c.close()
    sys.exit(0)
held = []
print(json.dumps(lookup(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == '1', held)), flush=True)
if len(sys.argv) > 6 and held:
    # hold the first connection until the file argv[6] exists, then check it still carries data
    import os, time
    deadline = time.time() + 120
    while not os.path.exists(sys.argv[6]) and time.time() < deadline: time.sleep(0.05)
    held[0].settimeout(5); held[0].sendall(b'x'); sys.exit(0 if held[0].recv(1) == b'x' else 1)
`;
/** FLOOD_CAP: dns.proxy.maxLearnedAddressesPerWorkload of this agent; the hostile workload asks for more. */
const FLOOD_CAP = 100;
/**
 * A workload resolving COUNT names of a wildcard it may look up, each with an address of its own
 * (dnsmasq's synth-domain: ip-10-229-X-Y.flood.test -> 10.229.X.Y), one after the other over UDP;
 * prints the rcodes (-1: no answer).
 */
const FLOOD_PY = `
import json, socket, struct, sys
server, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(8)
rcodes = []
for i in range(count):
    name = 'ip-10-229-%d-%d.flood.test' % (i // 250, 1 + i % 250)
    q = struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
    try:
        s.sendto(q, (server, 53)); m = s.recv(4096); rcodes.append(struct.unpack('>H', m[2:4])[0] & 15)
    except OSError:
        rcodes.append(-1)
print(json.dumps(rcodes))
`;
/**
 * A query the workload's own stack would never send out: to DST:53 (loopback, 0.0.0.0), crafted as a
 * raw frame on eth0 to the gateway, as a hostile workload can. Prints the rcode of the reply it sniffs
 * on eth0 (-1: none within 4 s).
 */
const RAW_QUERY_PY = `
import os, random, socket, struct, sys, time
dst, name = sys.argv[1], sys.argv[2]
gw = [l.split()[2] for l in os.popen('ip -4 route show default').read().splitlines() if ' via ' in ' ' + l][0]
src = os.popen('ip -4 -o addr show dev eth0').read().split()[3].split('/')[0]
os.system('ping -c1 -W1 %s >/dev/null 2>&1' % gw)
# the gateway's MAC on an L2 device (veth, netkit L2); an L3 netkit device has no link header at all
macs = [l.split()[3] for l in open('/proc/net/arp').read().splitlines()[1:] if l.split()[0] == gw]
mac = bytes.fromhex(macs[0].replace(':', '')) if macs else bytes(6)
qid, sport = random.randrange(65536), random.randrange(20000, 60000)
q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
udp = struct.pack('>HHHH', sport, 53, 8 + len(q), 0) + q
def csum(b):
    t = sum(struct.unpack('>10H', b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
hdr = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), qid, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
hdr = hdr[:10] + struct.pack('>H', csum(hdr)) + hdr[12:]
# a cooked packet socket: the kernel adds the device's link header, if it has one
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)); s.bind(('eth0', 0x0800)); s.settimeout(0.5)
s.sendto(hdr + udp, ('eth0', 0x0800, 0, 0, mac))
deadline = time.time() + 4
while time.time() < deadline:
    try: ip, meta = s.recvfrom(65535)
    except socket.timeout: continue
    if meta[2] == socket.PACKET_OUTGOING: continue
    if ip[9] != 17: continue
    ihl = (ip[0] & 15) * 4; u = ip[ihl:]
    if struct.unpack('>HH', u[:4]) != (53, sport): continue
    m = u[8:]
    if struct.unpack('>H', m[:2])[0] == qid: print(struct.unpack('>H', m[2:4])[0] & 15); sys.exit(0)
print(-1)
`;
/** A DNS listener on the host's loopback (UDP): writes FILE when a datagram reaches it, and answers it. */
const LOOPBACK_RESOLVER_PY = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 53))
while True:
    m, a = s.recvfrom(4096)
    open(sys.argv[2], 'a').write(a[0] + '\\n')
    s.sendto(m[:2] + b'\\x81\\x80' + m[4:6] + b'\\x00\\x00\\x00\\x00\\x00\\x00' + m[12:], a)
`;
/** Hostile queries from the workload to SERVER:53 (steered to the proxy): each is sent and not awaited. */
const HOSTILE_PY = `
import socket, struct, sys
server = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in [b'', b'\\x00', b'\\x12\\x34\\x01', bytes(11), b'\\xff' * 12 + b'\\xc0\\x0c' * 40,
          struct.pack('>HHHHHH', 7, 0x8180, 1, 1, 0, 0) + b'\\x03api\\x04test\\x00\\x00\\x01\\x00\\x01' + b'\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04\\x0a\\xe4\\x01\\x0b',
          struct.pack('>HHHHHH', 8, 0x0100, 1, 0, 0, 0) + b'\\x3f' + b'a' * 63 + b'\\x00\\x00\\x01\\x00\\x01' + b'x' * 3000]:
    try: s.sendto(p, (server, 53))
    except OSError: pass
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.settimeout(2)
try:
    t.connect((server, 53)); t.sendall(b'\\xff\\xff' + b'\\x00' * 100); t.close()
except OSError: pass
`;
/**
 * A resolver that lies, by the name asked: wrongid.test (reply id off by one), unasked.test (addresses
 * for another name), weird.test (a CNAME whose target holds quotes, a backslash, NUL, 0xff), garbage.test.
 */
const EVIL_PY = `
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('${EXT.evil4}', 53))
while True:
    m, a = s.recvfrom(4096)
    qid = struct.unpack('>H', m[:2])[0]; qend = m.index(b'\\0', 12) + 5; question = m[12:qend]
    name = m[12:qend - 4]
    def rr(owner, ip): return owner + struct.pack('>HHIH', 1, 1, 60, 4) + socket.inet_aton(ip)
    if b'wrongid' in name:
        r = struct.pack('>HHHHHH', qid ^ 1, 0x8180, 1, 1, 0, 0) + question + rr(b'\\xc0\\x0c', '${EXT.unasked4}')
    elif b'weird' in name:
        t = bytes([10]) + b'a"\\\\\\x00\\xff\\x7f<>{}' + b'\\x04test\\x00'
        r = struct.pack('>HHHHHH', qid, 0x8180, 1, 1, 0, 0) + question + b'\\xc0\\x0c' + struct.pack('>HHIH', 5, 1, 60, len(t)) + t
    elif b'unasked' in name:
        r = struct.pack('>HHHHHH', qid, 0x8180, 1, 1, 0, 0) + question + rr(b'\\x04api2\\x04test\\x00', '${EXT.unasked4}')
    else:
        r = m[:2] + b'\\x81\\x80' + b'\\xff' * 40
    s.sendto(r, a)
`;

type Lookup = { rcode: number; addrs: string[]; connected: boolean[]; id_ok?: boolean };
type Dns = { query: string; ips?: string[]; ttl?: number; cnames?: string[]; observation_source: string; rcode?: number; qtypes: string[]; rrtypes?: string[] };
type Ep = { identity: number; pod_name?: string; namespace?: string; labels: string[] };
type Flow = {
  uuid: string; verdict: string; Type: string; is_reply: boolean; traffic_direction: string; event_type: { type: number };
  IP: { source: string; destination: string }; l4: Record<string, { source_port: number; destination_port: number }>;
  source: Ep; destination: Ep; source_names?: string[]; destination_names?: string[];
  l7?: { type: string; latency_ns?: string; dns: Dns }; egress_denied_by?: Array<{ name: string; namespace: string; kind: string }>;
};

describe('DNS-aware egress policy: toFQDNs and DNS rules through the DNS proxy (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({ tag: 'dnsp', ipv4Pool: '10.227.0.0/16', ipv6Pool: 'fd00:227::/64', namespaces: ['dnsp'], overrides: { dns: { proxy: { minTTL: 600, maxLearnedAddressesPerWorkload: FLOOD_CAP } } } });
  const api = fx.api;
  const children: ChildProcess[] = [];
  const hostIf = `kdnsp${fx.id}`.slice(0, 15);
  let nsC: string;
  let nsH: string;
  let nsExt: string;


  const lookup = async (server: string, name: string, qtype: 'A' | 'AAAA' = 'A', transport: 'udp' | 'tcp' = 'udp', connect = true): Promise<Lookup> =>
    JSON.parse(await run('ip', ['netns', 'exec', nsC, 'python3', '-c', LOOKUP_PY, server, name, qtype, transport, connect ? '1' : '0'])) as Lookup;
  type LookupSpec = [server: string, name: string, qtype: 'A' | 'AAAA', transport: 'udp' | 'tcp', connect: boolean];
  /** Lookups as `lookup` makes them, one after the other in one Python process (one start instead of one each). */
  const lookups = async (specs: LookupSpec[]): Promise<Lookup[]> => {
    const out = await run('ip', ['netns', 'exec', nsC, 'python3', '-c', LOOKUP_PY, '--batch', JSON.stringify(specs)], { timeoutMs: 20_000 * specs.length });
    const rs = out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Lookup);
    assert.equal(rs.length, specs.length, `an answer per lookup: ${out}`);
    return rs;
  };
  const connects = async (addr: string) => (await status('ip', ['netns', 'exec', nsC, 'python3', '-c', CONNECT_PY, addr, String(PORT)])) === 0;
  const fqdnEntries = () => fx.agent.kernel.datapath.ipcacheList().filter(([, e]) => (e.identity & FQDN_IDENTITY_BASE) === FQDN_IDENTITY_BASE);

  after(async () => {
    for (const ch of children) ch.kill('SIGKILL');
    await fx.cleanup();
    await run('ip', ['link', 'del', hostIf]).catch(() => undefined);
    for (const r of [['-4', 'route', 'del', '10.228.1.0/24'], ['-4', 'route', 'del', '10.228.2.0/24'], ['-6', 'route', 'del', 'fd00:228:1::/64']]) await run('ip', r).catch(() => undefined);
  });

  before(async () => {
    nsC = await fx.netns('c');
    nsH = await fx.netns('h');
    nsExt = await fx.netns('ext');
    // The outside: a namespace behind a veth, routed by the host like any remote network.
    await run('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', nsExt]);
    await run('ip', ['addr', 'add', `${EXT.host4}/24`, 'dev', hostIf]);
    await run('ip', ['addr', 'add', `${EXT.host6}/64`, 'dev', hostIf, 'nodad']);
    await run('ip', ['link', 'set', hostIf, 'up']);
    const ex = (...a: string[]) => run('ip', ['netns', 'exec', nsExt, ...a]);
    await ex('ip', 'link', 'set', 'lo', 'up');
    await ex('ip', 'link', 'set', 'eth0', 'up');
    for (const a of [EXT.dns4, EXT.dnsOther4, EXT.evil4]) await ex('ip', 'addr', 'add', `${a}/24`, 'dev', 'eth0');
    await ex('ip', 'addr', 'add', `${EXT.dns6}/64`, 'dev', 'eth0', 'nodad');
    for (const a of [EXT.api4, EXT.other4, EXT.svcA4, EXT.svcB4, EXT.unasked4, EXT.short1, EXT.short2, EXT.fresh4, EXT.deny4]) await ex('ip', 'addr', 'add', `${a}/32`, 'dev', 'lo');
    for (let i = 0; i < ITERATIONS; i++) await ex('ip', 'addr', 'add', `${iterAddr(i)}/32`, 'dev', 'lo');
    for (const a of [EXT.api6, EXT.other6]) await ex('ip', 'addr', 'add', `${a}/128`, 'dev', 'lo', 'nodad');
    await ex('ip', 'route', 'add', 'default', 'via', EXT.host4);
    await ex('ip', '-6', 'route', 'add', 'default', 'via', EXT.host6);
    await run('ip', ['route', 'replace', '10.228.1.0/24', 'via', EXT.dns4]);
    await run('ip', ['route', 'replace', '10.228.2.0/24', 'via', EXT.dns4]);
    await run('ip', ['-6', 'route', 'replace', 'fd00:228:1::/64', 'via', EXT.dns6]);

    const conf = join(fx.dir, 'dnsmasq.conf');
    writeFileSync(
      conf,
      [
        'no-resolv', 'no-hosts', 'bind-interfaces', 'local-ttl=5', 'user=root',
        `listen-address=${EXT.dns4},${EXT.dnsOther4},${EXT.dns6}`,
        `host-record=api.test,${EXT.api4},${EXT.api6}`,
        `host-record=other.test,${EXT.other4},${EXT.other6}`,
        `host-record=a.svc.test,${EXT.svcA4}`,
        `host-record=b.c.svc.test,${EXT.svcB4}`,
        'cname=alias.test,api.test',
        'cname=alias2.test,other.test',
        ...Array.from({ length: ITERATIONS }, (_, i) => `host-record=n${i}.iter.test,${iterAddr(i)}`),
        `host-record=fresh.iter.test,${EXT.fresh4}`,
        'synth-domain=flood.test,10.229.0.0/16,ip-',
        `host-record=short1.test,${EXT.short1},1`,
        `host-record=short2.test,${EXT.short2},1`,
        // Long enough for the connect below (1.5 s timeout) to be judged against the merged entry, on a loaded lab VM too.
        `host-record=deny.test,${EXT.deny4},10`,
        `host-record=${MANY_STARS_NAME},${MANY_STARS_ADDR}`,
        '',
      ].join('\n'),
    );
    children.push(spawn('ip', ['netns', 'exec', nsExt, 'dnsmasq', '--keep-in-foreground', `--conf-file=${conf}`, `--pid-file=${join(fx.dir, 'dnsmasq.pid')}`], { stdio: 'ignore' }));
    children.push(spawn('ip', ['netns', 'exec', nsExt, 'python3', '-c', SERVER_PY], { stdio: 'ignore' }));
    children.push(spawn('ip', ['netns', 'exec', nsExt, 'python3', '-c', EVIL_PY], { stdio: 'ignore' }));
    await waitFor('dnsmasq and the servers', async () => (await status('ip', ['netns', 'exec', nsExt, 'sh', '-c', `ss -ltn | grep -q :${PORT} && ss -lun | grep -q '${EXT.dns4}:53' && ss -lun | grep -q '${EXT.evil4}:53'`])) === 0, 10_000);

    await fx.start();
    await api.call<Workload>('POST', '/v1/workloads', { name: 'c', namespace: 'dnsp', labels: { app: 'client' }, netns: `/var/run/netns/${nsC}` });
    await api.call<Workload>('POST', '/v1/workloads', { name: 'h', namespace: 'dnsp', labels: { app: 'hostile' }, netns: `/var/run/netns/${nsH}` });
    // Before any policy (DNS not steered): the resolver answers and both servers are reachable.
    const plain = await lookup(EXT.dns4, 'other.test');
    assert.deepEqual(plain, { rcode: 0, id_ok: true, addrs: [EXT.other4], connected: [true] });

    await api.call(
      'PUT',
      '/v1/policies',
      `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: dnsp}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toFQDNs: [{matchName: api.test}, {matchPattern: "*.svc.test"}, {matchName: api2.test}, {matchPattern: "short*.test"}, {matchPattern: "*.iter.test"}, {matchName: deny.test}]
      toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
    - toCIDR: [10.228.0.0/24, fd00:228::/64]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
              - matchName: api.test
              - matchName: alias.test
              - matchName: alias2.test
              - matchPattern: "*.svc.test"
              - matchName: b.c.svc.test
              - matchPattern: "*.evil.test"
              - matchPattern: "short*.test"
              - matchName: deny.test
              - matchPattern: "*.iter.test"
              - matchPattern: "${MANY_STARS}"
  egressDeny:
    - toCIDR: [${EXT.deny4}/32]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: flood, namespace: dnsp}
spec:
  endpointSelector: {matchLabels: {app: hostile}}
  egress:
    - toFQDNs: [{matchPattern: "*.flood.test"}]
      toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
    - toCIDR: [10.228.0.0/24]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchPattern: "*.flood.test"}]}
    - toEntities: [world]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchPattern: "*.loop.test"}]}
`,
      'application/yaml',
    );
  });

  test('api.test by name over IPv4: the first connection after the lookup goes through, the server next to it does not', async () => {
    const r = await lookup(EXT.dns4, 'api.test');
    assert.equal(r.rcode, 0, JSON.stringify(r));
    assert.equal(r.id_ok, true);
    assert.deepEqual(r.addrs, [EXT.api4]);
    assert.deepEqual(r.connected, [true], 'the connection right after the answer must succeed');
    assert.equal(await connects(EXT.other4), false, 'other.test was never looked up: not allowed');
    assert.ok(fqdnEntries().some(([cidr]) => cidr === `${EXT.api4}/32`));
  });

  test(`the first connection right after a lookup always goes through (${ITERATIONS} new addresses, each learned by its lookup)`, async () => {
    const failed: string[] = [];
    // One Python process for the lookups, still one after the other, each connecting right after its answer.
    const rs = await lookups(Array.from({ length: ITERATIONS }, (_, i): LookupSpec => [EXT.dns4, `n${i}.iter.test`, 'A', i % 2 ? 'tcp' : 'udp', true]));
    for (const [i, r] of rs.entries()) {
      if (r.rcode !== 0 || r.addrs[0] !== iterAddr(i) || r.connected[0] !== true) failed.push(`n${i}: ${JSON.stringify(r)}`);
    }
    assert.deepEqual(failed, []);
  });

  test('api.test by name over IPv6 (AAAA, query to an IPv6 resolver address)', async () => {
    const r = await lookup(EXT.dns6, 'api.test', 'AAAA');
    assert.equal(r.rcode, 0, JSON.stringify(r));
    assert.deepEqual(r.addrs, [EXT.api6]);
    assert.deepEqual(r.connected, [true]);
    assert.equal(await connects(EXT.other6), false);
  });

  test('matchPattern "*.svc.test" covers one label: a.svc.test reachable, b.c.svc.test (allowed lookup) not', async () => {
    const a = await lookup(EXT.dns4, 'a.svc.test');
    assert.deepEqual([a.rcode, a.addrs, a.connected], [0, [EXT.svcA4], [true]]);
    const b = await lookup(EXT.dns4, 'b.c.svc.test');
    assert.deepEqual([b.rcode, b.addrs, b.connected], [0, [EXT.svcB4], [false]]);
  });

  test('a name no DNS rule allows is REFUSED (UDP and TCP)', async () => {
    for (const transport of ['udp', 'tcp'] as const) {
      const r = await lookup(EXT.dns4, 'other.test', 'A', transport, false);
      assert.deepEqual([r.rcode, r.addrs], [5, []], `${transport}: ${JSON.stringify(r)}`);
    }
  });

  test('a DNS rule with many stars and a hostile name: answered at once, the proxy still serves', async () => {
    // As a backtracking regular expression this rule took hours on such a name (5.8 s at 6 stars).
    const hostile = await lookup(EXT.dns4, `${'a'.repeat(60)}.test`, 'A', 'udp', false);
    assert.deepEqual([hostile.rcode, hostile.addrs], [5, []], JSON.stringify(hostile));
    const allowed = await lookup(EXT.dns4, MANY_STARS_NAME, 'A', 'udp', false);
    assert.deepEqual([allowed.rcode, allowed.addrs], [0, [MANY_STARS_ADDR]], JSON.stringify(allowed));
    const a = await lookup(EXT.dns4, 'api.test');
    assert.deepEqual([a.rcode, a.connected], [0, [true]]);
  });

  test('no bypass: a query straight to another resolver address is steered (REFUSED for a denied name, the answer learned for an allowed one)', async () => {
    const denied = await lookup(EXT.dnsOther4, 'other.test', 'A', 'udp', false);
    assert.deepEqual([denied.rcode, denied.addrs], [5, []], 'dnsmasq listens there too: an answer would mean a bypass');
    const allowed = await lookup(EXT.dnsOther4, 'alias.test', 'A', 'tcp');
    assert.equal(allowed.rcode, 0, JSON.stringify(allowed));
    assert.deepEqual(allowed.addrs, [EXT.api4]);
    assert.deepEqual(allowed.connected, [true]);
  });

  test('a CNAME teaches the name asked, not its target: alias2.test -> other.test\'s address, other.test itself stays unknown', async () => {
    const r = await lookup(EXT.dns4, 'alias2.test', 'A', 'udp', false);
    assert.deepEqual([r.rcode, r.addrs], [0, [EXT.other4]], JSON.stringify(r));
    assert.equal(fx.agent.dns.cache.has('alias2.test', EXT.other4), true);
    assert.equal(fx.agent.dns.cache.has('other.test', EXT.other4), false, 'the chain\'s target was not asked: not learned');
    assert.equal(await connects(EXT.other4), false, 'no toFQDNs selector matches alias2.test: not allowed');
  });

  test('a query a workload allowed DNS to the world sends to the host\'s loopback or 0.0.0.0 is REFUSED, and nothing reaches a host-local resolver', async () => {
    const loop = '127.0.53.53';
    const heard = join(fx.dir, 'loopback-heard');
    children.push(spawn('python3', ['-c', LOOPBACK_RESOLVER_PY, loop, heard], { stdio: 'ignore' }));
    await waitFor('the host-local resolver', async () => (await status('sh', ['-c', `ss -lun | grep -q '${loop}:53'`])) === 0, 10_000);
    const before = Number(/^kitnet_dns_proxy_refused_resolver_total (\d+)$/m.exec(await fx.agent.metrics.registry.metrics())?.[1] ?? 'NaN');
    for (const dst of [loop, '0.0.0.0']) {
      const rcode = Number((await run('ip', ['netns', 'exec', nsH, 'python3', '-c', RAW_QUERY_PY, dst, 'x.loop.test'])).trim());
      assert.equal(rcode, 5, `${dst}: REFUSED`);
    }
    assert.equal(existsSync(heard), false, 'the host-local resolver heard nothing');
    const after = Number(/^kitnet_dns_proxy_refused_resolver_total (\d+)$/m.exec(await fx.agent.metrics.registry.metrics())?.[1] ?? 'NaN');
    assert.equal(after - before, 2);
  });

  test('DNS over TCP goes through the proxy and teaches it too', async () => {
    const r = await lookup(EXT.dns4, 'api.test', 'AAAA', 'tcp');
    assert.deepEqual([r.rcode, r.addrs, r.connected], [0, [EXT.api6], [true]]);
  });

  test('policy trace --to-fqdn answers from what the proxy learned: addresses, TTL left, identity, verdict per port, the lookup question', async () => {
    const trace = (to: string, ...more: string[]) => execFileP(process.execPath, [CLI, '-s', fx.socket, 'policy', 'trace', '--from', 'dnsp/c', '--to-fqdn', to, ...more]).then(
      (r) => ({ code: 0, out: r.stdout }),
      (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
    );
    const looked = await lookup(EXT.dns4, 'api.test', 'A', 'udp', false);
    assert.equal(looked.rcode, 0);
    const allowed = await trace('api.test', '--port', `${PORT}/TCP`);
    assert.equal(allowed.code, 0, allowed.out);
    assert.match(allowed.out, new RegExp(`${EXT.api4.replace(/\./g, '\\.')}  TTL (\\d+) s left  identity \\d+ \\(fqdn:matchName:api\\.test\\.`));
    assert.match(allowed.out, new RegExp(`TCP/${PORT}: allowed <- CiliumNetworkPolicy dnsp/fqdn egress\\[0\\]`));
    assert.match(allowed.out, /UDP and TCP to .*: allowed, by CiliumNetworkPolicy dnsp\/fqdn egress\[1\]/);
    const ttl = Number(/TTL (\d+) s left/.exec(allowed.out)![1]);
    assert.ok(ttl > 0 && ttl <= 600, `TTL left ${ttl} (minTTL 600)`);
    const json = await fx.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { workload: 'dnsp/c' }, to: { fqdn: 'API.test.' }, port: PORT + 1, protocol: 'TCP' });
    assert.equal(json.verdict, 'DENIED', 'another port: default deny');
    const addrs = (json.result as { addresses: Array<{ address: string; identity: number }> }).addresses;
    assert.ok(addrs.some((a) => a.address === EXT.api4 && (a.identity & FQDN_IDENTITY_BASE) === FQDN_IDENTITY_BASE), JSON.stringify(addrs));
    assert.ok(fqdnEntries().some(([cidr, e]) => cidr === `${EXT.api4}/32` && e.identity === addrs.find((a) => a.address === EXT.api4)!.identity), 'the identity the trace shows is the one in the ipcache');

    const never = await trace('never.svc.test');
    assert.equal(never.code, 3, never.out);
    assert.match(never.out, /no addresses learned for never\.svc\.test yet; the first lookup by a selected workload will learn them/);
    assert.match(never.out, /allowed, by CiliumNetworkPolicy dnsp\/fqdn egress\[1\]/);
    const refused = await trace('other.test', '--resolver', EXT.dns4);
    assert.match(refused.out, new RegExp(`${EXT.dns4.replace(/\./g, '\\.')} \\(identity .*REFUSED by the proxy, decided by CiliumNetworkPolicy dnsp/fqdn egress\\[1\\]`));
    const bad = await fx.api.call('POST', '/v1/policy/trace', { from: { workload: 'dnsp/c' }, to: { fqdn: '*.svc.test' } }).catch((e: unknown) => e);
    assert.ok(bad instanceof ApiError && bad.statusCode === 400 && /^to\.fqdn: .*is a pattern/.test(bad.message), String(bad));
    const cliBad = await trace('a..b');
    assert.notEqual(cliBad.code, 0);
  });

  test('hostile senders: malformed / oversized queries and lying resolvers create no identity and do not stop the proxy', async () => {
    const before = fqdnEntries().length;
    await run('ip', ['netns', 'exec', nsC, 'python3', '-c', HOSTILE_PY, EXT.dns4]);
    const wrongId = await lookup(EXT.evil4, 'wrongid.evil.test', 'A', 'udp', false);
    // Dropped as a forged answer would be: the proxy waits for the real one, and with none before its
    // upstream deadline (5 s) answers SERVFAIL (the client waits 8 s).
    assert.deepEqual([wrongId.rcode, wrongId.addrs], [2, []], `a reply with another id is not taken: SERVFAIL (${JSON.stringify(wrongId)})`);
    const garbage = await lookup(EXT.evil4, 'garbage.evil.test', 'A', 'udp', false);
    assert.deepEqual([garbage.rcode, garbage.addrs], [2, []], JSON.stringify(garbage));
    const unasked = await lookup(EXT.evil4, 'unasked.evil.test', 'A', 'udp', false);
    assert.equal(unasked.rcode, 0, JSON.stringify(unasked));
    assert.equal(await connects(EXT.unasked4), false, 'api2.test was not asked: its address learned nothing');
    assert.ok(!fqdnEntries().some(([cidr]) => cidr === `${EXT.unasked4}/32`));
    assert.ok(fqdnEntries().length <= before, "no new FQDN entries from the hostile packets (TTL expiry may only remove some)");
    // still answering
    const r = await lookup(EXT.dns4, 'a.svc.test');
    assert.deepEqual([r.rcode, r.connected], [0, [true]]);
  });

  test(`a workload resolving a wildcard of its own (a new address per name) is stopped at its share (${FLOOD_CAP} addresses); the others still learn`, async () => {
    const flood4 = () => fqdnEntries().filter(([cidr]) => cidr.startsWith('10.229.'));
    const rcodes = JSON.parse(await run('ip', ['netns', 'exec', nsH, 'python3', '-c', FLOOD_PY, EXT.dns4, String(FLOOD_CAP + 20)], { timeoutMs: 120_000 })) as number[];
    assert.deepEqual(rcodes.slice(0, FLOOD_CAP), Array(FLOOD_CAP).fill(0), 'its share is answered');
    assert.deepEqual(rcodes.slice(FLOOD_CAP), Array(20).fill(2), 'beyond its share: SERVFAIL, never an answer the maps do not have');
    assert.equal(flood4().length, FLOOD_CAP, 'the ipcache holds its share and no more');
    // The other workload still learns a new name, and its first connection goes through.
    const r = await lookup(EXT.dns4, 'fresh.iter.test');
    assert.deepEqual([r.rcode, r.addrs, r.connected], [0, [EXT.fresh4], [true]]);
    // The names it had already learned are answered again (nothing new to learn).
    const again = JSON.parse(await run('ip', ['netns', 'exec', nsH, 'python3', '-c', FLOOD_PY, EXT.dns4, '3'])) as number[];
    assert.deepEqual(again, [0, 0, 0]);
    const text = await fx.agent.metrics.registry.metrics();
    assert.match(text, /^kitnet_dns_proxy_learn_refused_total\{limit="workload"\} 20$/m);
    assert.match(text, /^kitnet_dns_proxy_learn_refused_total\{limit="total"\} 0$/m);
  });

  test("Hubble's DNS metrics count the proxy's queries and responses", async () => {
    const text = await fx.agent.metrics.registry.metrics();
    assert.match(text, /hubble_dns_queries_total\{rcode="Policy denied",qtypes="A",ips_returned="0"\} [1-9]/);
    assert.match(text, /hubble_dns_queries_total\{rcode="",qtypes="AAAA",ips_returned="0"\} [1-9]/);
    assert.match(text, /hubble_dns_responses_total\{rcode="No Error",qtypes="A",ips_returned="1"\} [1-9]/);
    assert.match(text, /hubble_dns_responses_total\{rcode="Server Failure",qtypes="A",ips_returned="0"\} [1-9]/);
  });

  describe('DNS flows (Hubble L7) and names on the L3/L4 flows', () => {
    const cli = hubbleCliOrSkip();
    const rest = async (query: string): Promise<Flow[]> => {
      const lines: string[] = [];
      await api.stream(`/v1/flows?last=4095&${query}`, (l) => lines.push(l));
      return lines.map((l) => (JSON.parse(l) as { flow?: Flow }).flow).filter((f): f is Flow => !!f);
    };
    const hubble = async (args: string[]) => {
      if (!('path' in cli)) throw new Error('no CLI');
      return hubbleRun(cli.path, [...args, '--server', `unix://${join(fx.dir, 'hubble.sock')}`]);
    };
    const hubbleFlows = async (args: string[]): Promise<Flow[]> => {
      const r = await hubble(['observe', '--last', '4095', '-o', 'json', ...args]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { flow?: Flow }).flow).filter((f): f is Flow => !!f);
    };
    let client: Workload;
    before(async () => {
      client = await api.call<Workload>('GET', '/v1/workloads/dnsp/c');
    });

    test('a lookup gives a REQUEST flow from the workload to the resolver and a RESPONSE flow back, with the answer', async () => {
      const r = await lookup(EXT.dns4, 'api.test');
      assert.deepEqual([r.rcode, r.connected], [0, [true]]);
      const { req, res } = await waitFor('the request and response flows of the lookup', async () => {
        const fs = await rest('protocol=dns');
        // the newest request for api.test over UDP and the response to the same client port
        const req = fs.filter((f) => f.l7?.type === 'REQUEST' && f.l7.dns.query === 'api.test.' && f.l4.UDP && f.IP.destination === EXT.dns4).at(-1);
        const res = req && fs.find((f) => f.l7?.type === 'RESPONSE' && f.l4.UDP?.destination_port === req.l4.UDP!.source_port && f.l7.dns.query === 'api.test.');
        return req && res ? { req, res } : undefined;
      }, 10_000);
      assert.deepEqual([req.Type, req.verdict, req.is_reply, req.traffic_direction, req.event_type.type], ['L7', 'FORWARDED', false, 'EGRESS', 129]);
      assert.deepEqual([req.IP.source, req.IP.destination, req.l4.UDP!.destination_port], [client.ipv4, EXT.dns4, 53]);
      assert.deepEqual([req.source.pod_name, req.source.namespace, req.source.identity], ['c', 'dnsp', client.identity]);
      // the resolver as the datapath sees it: the toCIDR rule's prefix gives it a CIDR identity (node-local)
      assert.ok((req.destination.identity & (1 << 24)) !== 0, JSON.stringify(req.destination));
      assert.ok(req.destination.labels.includes('cidr:10.228.0.0/24'), JSON.stringify(req.destination));
      assert.deepEqual(req.l7!.dns, { query: 'api.test.', observation_source: 'proxy', qtypes: ['A'] });
      assert.deepEqual([res.Type, res.verdict, res.is_reply, res.IP.source, res.IP.destination, res.source.identity, res.destination.identity], ['L7', 'FORWARDED', true, EXT.dns4, client.ipv4, req.destination.identity, client.identity]);
      const d = res.l7!.dns;
      assert.deepEqual([d.query, d.ips, d.rrtypes, d.qtypes, d.observation_source, d.rcode ?? 0], ['api.test.', [EXT.api4], ['A'], ['A'], 'proxy', 0]);
      assert.ok(d.ttl! > 0 && d.ttl! <= 5, `the resolver's TTL (5 s), not the proxy's floor: ${d.ttl}`);
      assert.ok(BigInt(res.l7!.latency_ns!) > 0n);
    });

    test('a refused query gives one DROPPED L7 flow naming the policy that denied it', async () => {
      const r = await lookup(EXT.dns4, 'other.test', 'A', 'tcp', false);
      assert.equal(r.rcode, 5);
      const drop = await waitFor('the dropped DNS flow', async () => (await rest('protocol=dns&verdict=DROPPED')).find((f) => f.l7?.dns.query === 'other.test.' && f.l4.TCP), 10_000);
      assert.deepEqual([drop.Type, drop.l7!.type, drop.l4.TCP!.destination_port, drop.source.pod_name], ['L7', 'REQUEST', 53, 'c']);
      assert.deepEqual(drop.egress_denied_by?.map((p) => [p.kind, p.namespace, p.name]), [['CiliumNetworkPolicy', 'dnsp', 'fqdn']]);
      const responses = (await rest('protocol=dns')).filter((f) => f.l7?.type === 'RESPONSE' && f.l7.dns.query === 'other.test.');
      assert.deepEqual(responses, [], 'no response flow for a refused query');
    });

    test('destination_names on the TCP flows to a learned address; --to-fqdn selects them (REST)', async () => {
      for (const name of ['api.test', 'a.svc.test']) {
        const r = await lookup(EXT.dns4, name);
        assert.deepEqual([r.rcode, r.connected], [0, [true]], name);
      }
      const toApi = await waitFor('TCP flows to api.test by name', async () => {
        const fs = await rest('destination_fqdn=api.test');
        return fs.some((f) => f.l4.TCP?.destination_port === PORT) ? fs : undefined;
      }, 10_000);
      for (const f of toApi) {
        assert.ok([EXT.api4, EXT.api6].includes(f.IP.destination), f.IP.destination);
        assert.ok(f.destination_names?.includes('api.test'), JSON.stringify(f.destination_names));
      }
      const svc = await waitFor('flows to a.svc.test', async () => {
        const fs = await rest('destination_fqdn=*.svc.test');
        return fs.some((f) => f.l4.TCP?.destination_port === PORT) ? fs : undefined;
      }, 10_000);
      assert.ok(svc.every((f) => f.IP.destination === EXT.svcA4 || f.IP.destination === EXT.svcB4));
      assert.deepEqual(await rest('destination_fqdn=nothing.test'), []);
      const fromApi = await rest('source_fqdn=api.test');
      assert.ok(fromApi.length > 0, 'the replies of the connection to api.test carry source_names');
      assert.ok(fromApi.every((f) => [EXT.api4, EXT.api6].includes(f.IP.source) && f.source_names?.includes('api.test')));
      await assert.rejects(api.call('GET', '/v1/flows?destination_fqdn=a%2Bb'), (e: ApiError) => e.statusCode === 400 && /destination_fqdn/.test(e.message));
    });

    test('hostile answer: a CNAME with quotes, backslashes, NUL and 0xff in its name: escaped in the flow, REST and gRPC still serve it', async () => {
      const r = await lookup(EXT.evil4, 'weird.evil.test', 'A', 'udp', false);
      assert.equal(r.rcode, 0, JSON.stringify(r));
      const res = await waitFor('the response flow', async () => (await rest('protocol=dns')).find((f) => f.l7?.type === 'RESPONSE' && f.l7.dns.query === 'weird.evil.test.'), 10_000);
      assert.deepEqual(res.l7!.dns.cnames, ['a\\034\\092\\000\\255\\127\\060\\062\\123\\125.test.']);
      if ('path' in cli) {
        const viaGrpc = (await hubbleFlows(['--protocol', 'dns'])).find((f) => f.uuid === res.uuid);
        assert.deepEqual(viaGrpc?.l7?.dns.cnames, res.l7!.dns.cnames);
      }
    });

    test('the real hubble CLI: --to-fqdn and --protocol dns give what REST gives; a bad pattern is refused naming the field', { skip: cli.skip || false }, async () => {
      await waitFor('hubble observe --to-fqdn api.test and GET /v1/flows?destination_fqdn=api.test to agree', async () => {
        const [viaCli, viaRest] = [await hubbleFlows(['--to-fqdn', 'api.test']), await rest('destination_fqdn=api.test')];
        assert.ok(viaCli.length > 0);
        assert.ok(viaCli.every((f) => f.destination_names?.includes('api.test')), 'destination_names over gRPC');
        return JSON.stringify(viaCli.map((f) => f.uuid)) === JSON.stringify(viaRest.map((f) => f.uuid));
      }, 20_000);
      const dns = await hubbleFlows(['--protocol', 'dns']);
      const restDns = await rest('protocol=dns');
      assert.deepEqual(dns.map((f) => f.uuid), restDns.map((f) => f.uuid));
      assert.deepEqual((await hubbleFlows(['--type', 'l7'])).map((f) => f.uuid), restDns.map((f) => f.uuid), '--type l7: event type 129');
      const resp = dns.find((f) => f.l7?.type === 'RESPONSE' && f.l7.dns.query === 'api.test.');
      assert.deepEqual([resp?.Type, resp?.l7?.dns.ips, resp?.l7?.dns.observation_source], ['L7', [EXT.api4], 'proxy']);
      const dropped = dns.find((f) => f.verdict === 'DROPPED' && f.l7?.dns.query === 'other.test.');
      assert.equal(dropped?.egress_denied_by?.[0]?.name, 'fqdn');
      const compact = await hubble(['observe', '--last', '4095', '--protocol', 'dns', '-o', 'compact']);
      assert.equal(compact.code, 0, compact.stderr);
      assert.match(compact.stdout, /dnsp\/c:\d+ \(ID:\d+\) -> 10\.228\.0\.2:53 .*dns-request.*FORWARDED \(DNS Query api\.test\. A\)/);
      const bad = await hubble(['observe', '--last', '1', '--to-fqdn', 'a(b']);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /destination_fqdn/);
    });
  });

  test('an agent restart keeps the learned names: a connection without a new lookup goes through; a corrupt state file is ignored', async () => {
    const r = await lookup(EXT.dns4, 'api.test');
    assert.deepEqual([r.rcode, r.connected], [0, [true]]);
    const file = join(fx.dir, 'state', 'dns-learned.json');
    await waitFor('the learned state on disk', async () => existsSync(file));
    const ttlLeft = async () => {
      const t = await fx.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { workload: 'dnsp/c' }, to: { fqdn: 'api.test' }, port: PORT, protocol: 'TCP' });
      return (t.result as { addresses: Array<{ address: string; ttlSeconds: number }> }).addresses.find((a) => a.address === EXT.api4)?.ttlSeconds;
    };
    const before = await ttlLeft();
    await fx.stop();
    // A clean stop writes every expiry as it was: the restore does not extend them (after a crash it
    // extends them by the seconds an expiry-only change may take to reach the file).
    assert.equal((JSON.parse(readFileSync(file, 'utf8')) as { complete?: boolean }).complete, true, 'a clean stop marks the file complete');
    await fx.start();
    const after = await ttlLeft();
    assert.ok(before !== undefined && after !== undefined && after <= before, `TTL left ${before} s before the restart, ${after} s after: not extended`);
    assert.equal(await connects(EXT.api4), true, 'restored before the first compile: no lookup needed');
    assert.equal(await connects(EXT.other4), false);
    // The flooding workload's addresses still count against it: its share is still full.
    const flood = JSON.parse(await run('ip', ['netns', 'exec', nsH, 'python3', '-c', FLOOD_PY, EXT.dns4, String(FLOOD_CAP + 1)], { timeoutMs: 120_000 })) as number[];
    assert.deepEqual(flood, [...Array(FLOOD_CAP).fill(0), 2], 'its share survives the restart');
    await fx.stop();
    writeFileSync(file, '{"version": 1, "names": [{"name": "api.test", "addresses": [{"address": "not-an-ip", "expiresAt": 1}]}], "identities": []}');
    await fx.start();
    assert.equal(await connects(EXT.api4), false, 'nothing restored from an invalid file');
    const again = await lookup(EXT.dns4, 'api.test');
    assert.deepEqual([again.rcode, again.connected], [0, [true]], 'and lookups learn again');
  });

  test('TTL expiry (minTTL 0): an address no connection uses goes, new connections to it fail; one an open connection uses stays', async () => {
    await fx.stop();
    fx.overrides.dns = { proxy: { minTTL: 0 } };
    await fx.start();
    const entry = (addr: string) => fqdnEntries().some(([cidr]) => cidr === `${addr}/32`);
    // short2.test: looked up and connected to at once by one process, which holds the connection
    const flag = join(fx.dir, 'hold-release');
    const hold = spawn('ip', ['netns', 'exec', nsC, 'python3', '-c', LOOKUP_PY, EXT.dns4, 'short2.test', 'A', 'udp', '1', flag], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.push(hold);
    let out = '';
    hold.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => hold.on('exit', (code) => resolve(code)));
    const two = await waitFor('the held connection to short2.test', async () => (out.includes('\n') ? (JSON.parse(out) as Lookup) : undefined), 10_000);
    assert.deepEqual([two.rcode, two.addrs, two.connected], [0, [EXT.short2], [true]]);
    // short1.test after it, same TTL: once short1 is gone, the expiry pass that removed it saw short2 expired too
    const one = await lookup(EXT.dns4, 'short1.test', 'A', 'udp', false);
    assert.deepEqual([one.rcode, one.addrs], [0, [EXT.short1]]);
    await waitFor('short1.test (TTL 1 s, no connection) to leave the ipcache', async () => !entry(EXT.short1), 15_000);
    assert.equal(await connects(EXT.short1), false, 'expired: new connections are not allowed');
    assert.ok(entry(EXT.short2), 'expired too, but a tracked connection still uses it');
    writeFileSync(flag, '');
    assert.equal(await exited, 0, 'the open connection kept working past the TTL');
  });

  test('a learned address on a policy\'s own /32 (egressDeny toCIDR): merged while learned, the deny holds; at expiry the policy\'s entry is back, not deleted', async () => {
    const at = () => fx.agent.kernel.datapath.ipcacheList().find(([cidr]) => cidr === `${EXT.deny4}/32`)?.[1];
    const isFqdn = (e: { identity: number } | undefined) => e !== undefined && (e.identity & FQDN_IDENTITY_BASE) === FQDN_IDENTITY_BASE;
    const cidrEntry = at();
    assert.ok(cidrEntry && !isFqdn(cidrEntry), JSON.stringify(cidrEntry));
    const r = await lookup(EXT.dns4, 'deny.test', 'A', 'udp', false);
    assert.deepEqual([r.rcode, r.addrs], [0, [EXT.deny4]], JSON.stringify(r));
    assert.ok(isFqdn(at()), `learned: ${JSON.stringify(at())}`);
    assert.equal(await connects(EXT.deny4), false, 'toFQDNs allows deny.test, the deny on its /32 wins');
    assert.ok(isFqdn(at()), `still learned after the connect (else it was judged against the policy's own entry): ${JSON.stringify(at())}`);
    await waitFor('deny.test (TTL 10 s) to expire', async () => !fx.agent.dns.cache.has('deny.test', EXT.deny4), 40_000);
    await waitFor('the policy\'s entry written back', async () => !isFqdn(at()), 10_000);
    assert.deepEqual(at(), cidrEntry, 'the deny\'s own entry, not deleted');
  });
});
