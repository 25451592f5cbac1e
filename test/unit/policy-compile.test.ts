import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { identityLabels, labelFormat } from '../../common/labels.js';
import { LOCAL_IDENTITY_FLAG, reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { addressParse, cidrParse } from '../../agent/ipam.js';
import { policiesParse, policyCompile, policyTrace } from '../../agent/policy/index.js';
import type { CompiledPolicy, CompileInput, PolicyEntry, TraceQuery } from '../../agent/policy/index.js';

// identities: 1..10 reserved; 300 prod/web, 301 prod/client, 302 dev/client
const ids = new Map<number, string[]>();
for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
ids.set(300, identityLabels({ app: 'web' }, 'prod').map(labelFormat));
ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
ids.set(302, identityLabels({ app: 'client' }, 'dev', { team: 'blue' }).map(labelFormat));
const WEB = 1;
const CLIENT = 2;
const endpoints = [
  { endpointId: WEB, identity: 300, namedPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }] },
  { endpointId: CLIENT, identity: 301 },
];

function compile(yaml: string, extra: Partial<CompileInput> = {}): CompiledPolicy {
  return policyCompile({ policies: policiesParse(yaml), identities: ids, endpoints, ...extra });
}
const ep = (s: CompiledPolicy, id: number) => s.endpoints.find((e) => e.endpointId === id)!;
const strip = (e: PolicyEntry) => `${e.direction} id=${e.identity} ${e.protocol}/${e.port}/${e.portPrefixLen}${e.deny ? ' DENY' : ''}`;
const verdict = (s: CompiledPolicy, q: Partial<TraceQuery> & Pick<TraceQuery, 'from' | 'to'>) =>
  policyTrace(s, { protocol: 'TCP', port: 80, ...q }).verdict;

const cnp = (spec: string, name = 'p', ns = 'prod') => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}, namespace: ${ns}}
spec:
${spec.replace(/^/gm, '  ')}
`;

describe('enforcement', () => {
  test('no policy: both directions allow-all, no enforcement', () => {
    const s = policyCompile({ policies: [], identities: ids, endpoints });
    assert.deepEqual(ep(s, WEB).entries.map(strip), ['ingress id=0 0/0/0', 'egress id=0 0/0/0']);
    assert.equal(ep(s, WEB).ingressEnforced, false);
    assert.equal(ep(s, WEB).entries[0]!.implicit, 'not-enforced');
  });
  test('selection with an ingress section enforces ingress only', () => {
    const s = compile(cnp('endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]'));
    const e = ep(s, WEB);
    assert.equal(e.ingressEnforced, true);
    assert.equal(e.egressEnforced, false);
    assert.deepEqual(e.entries.map(strip), ['ingress id=1 0/0/0', 'ingress id=301 0/0/0', 'egress id=0 0/0/0']);
    assert.deepEqual(e.entries[1]!.rules, ['CiliumNetworkPolicy prod/p ingress[0]']);
    assert.equal(ep(s, CLIENT).ingressEnforced, false, 'client is not selected');
  });
  test('ingressDeny alone enforces (upstream), unless enableDefaultDeny is false', () => {
    const deny = 'ingressDeny: [{fromEntities: [world]}]';
    assert.equal(ep(compile(cnp(`endpointSelector: {}\n${deny}`)), WEB).ingressEnforced, true);
    const s = compile(cnp(`endpointSelector: {}\nenableDefaultDeny: {ingress: false}\n${deny}`));
    assert.equal(ep(s, WEB).ingressEnforced, false);
    assert.equal(verdict(s, { from: { identity: 301 }, to: { endpointId: WEB } }), 'ALLOWED');
    assert.equal(verdict(s, { from: { ip: '8.8.8.8' }, to: { endpointId: WEB } }), 'DENIED');
  });
  test('enableDefaultDeny false on one policy does not lift another policy\'s enforcement', () => {
    const s = compile(
      `${cnp('endpointSelector: {}\nenableDefaultDeny: {ingress: false}\ningress: [{fromEntities: [world]}]', 'a')}---\n${cnp('endpointSelector: {}\ningress: [{fromEntities: [host]}]', 'b')}`,
    );
    assert.equal(ep(s, WEB).ingressEnforced, true);
    assert.equal(verdict(s, { from: { identity: 301 }, to: { endpointId: WEB } }), 'DENIED');
  });
  test('allow-localhost: host reaches enforced endpoints unless denied or disabled', () => {
    const yaml = cnp('endpointSelector: {}\ningress: [{}]');
    assert.equal(verdict(compile(yaml), { from: { identity: 1 }, to: { endpointId: WEB } }), 'ALLOWED');
    assert.equal(verdict(compile(yaml, { options: { allowLocalhost: false } }), { from: { identity: 1 }, to: { endpointId: WEB } }), 'DENIED');
    const denied = compile(cnp('endpointSelector: {}\ningressDeny: [{fromEntities: [host]}]'));
    const t = policyTrace(denied, { from: { identity: 1 }, to: { endpointId: WEB }, protocol: 'TCP', port: 80 });
    assert.equal(t.ingress?.reason, 'explicit-deny');
    assert.equal(t.ingress?.dropReason, 181);
  });
  test('trace reports default deny (133) and not-enforced', () => {
    const s = compile(cnp('endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEntities: [world]}]'));
    const t = policyTrace(s, { from: { endpointId: CLIENT }, to: { endpointId: WEB }, protocol: 'TCP', port: 80 });
    assert.equal(t.verdict, 'DENIED');
    assert.equal(t.egress?.reason, 'not-enforced');
    assert.equal(t.ingress?.reason, 'default-deny');
    assert.equal(t.ingress?.dropReason, 133);
  });
});

describe('entries: ports, protocols, ICMP, dedupe', () => {
  test('ANY with a port means TCP, UDP and SCTP; L3-only means any protocol', () => {
    const s = compile(cnp('endpointSelector: {matchLabels: {app: web}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts: [{ports: [{port: "53"}]}]\n- fromEntities: [world]'));
    const e = ep(s, WEB).entries.filter((x) => x.direction === 'ingress' && x.identity !== 1).map(strip);
    assert.deepEqual(e, [
      'ingress id=2 0/0/0',
      'ingress id=9 0/0/0',
      'ingress id=10 0/0/0',
      'ingress id=301 6/53/16',
      'ingress id=301 17/53/16',
      'ingress id=301 132/53/16',
    ]);
  });
  test('ICMP types go in the port slot with a full prefix', () => {
    const s = compile(cnp('endpointSelector: {matchLabels: {app: web}}\ningress:\n- icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}, {type: 0}]}]'));
    const e = ep(s, WEB).entries.filter((x) => x.identity === 0).map(strip);
    assert.deepEqual(e, ['ingress id=0 1/0/16', 'ingress id=0 1/8/16', 'ingress id=0 58/128/16', 'egress id=0 0/0/0']);
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, protocol: 'ICMP', port: 8 }), 'ALLOWED');
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, protocol: 'ICMP', port: 3 }), 'DENIED');
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, protocol: 'ICMPv6', port: 128 }), 'ALLOWED');
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, protocol: 'TCP', port: 8 }), 'DENIED');
  });
  test('port ranges become prefix entries', () => {
    const s = compile(cnp('endpointSelector: {matchLabels: {app: web}}\ningress:\n- toPorts: [{ports: [{port: "1024", endPort: 65535, protocol: TCP}]}]'));
    assert.equal(ep(s, WEB).entries.filter((x) => x.identity === 0 && x.direction === 'ingress').length, 6);
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, port: 1023 }), 'DENIED');
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, port: 1024 }), 'ALLOWED');
    assert.equal(verdict(s, { from: { identity: 302 }, to: { endpointId: WEB }, port: 65535 }), 'ALLOWED');
  });
  test('duplicates merge their rule references; covered entries are dropped', () => {
    const s = compile(
      `${cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]', 'a')}---\n` +
        `${cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]', 'b')}---\n` +
        `${cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "0", protocol: TCP}]}]}]', 'c')}---\n` +
        `${cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}, {fromEntities: [all], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]', 'd')}`,
    );
    const e = ep(s, WEB).entries.filter((x) => x.direction === 'ingress' && x.identity !== 1);
    assert.deepEqual(e.map(strip), ['ingress id=0 6/443/16', 'ingress id=301 6/0/0']);
    const s2 = compile(
      `${cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]', 'a')}---\n` +
        `${cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]', 'b')}`,
    );
    const merged = ep(s2, WEB).entries.find((x) => x.identity === 301)!;
    assert.deepEqual(merged.rules, ['CiliumNetworkPolicy prod/a ingress[0]', 'CiliumNetworkPolicy prod/b ingress[0]']);
  });
  test('named ports: ingress from the endpoint, egress from the remote identity', () => {
    const yaml = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: http}]}]
  egress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]
`;
    const s = compile(yaml, {
      remoteNamedPorts: new Map([
        [300, [{ name: 'http', port: 8080, protocol: 'TCP' }]],
        [302, [{ name: 'http', port: 9090, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }]],
      ]),
    });
    assert.deepEqual(ep(s, WEB).entries.filter((x) => x.direction === 'ingress' && x.identity === 0).map(strip), ['ingress id=0 6/8080/16']);
    assert.deepEqual(ep(s, CLIENT).entries.filter((x) => x.direction === 'ingress' && x.identity !== 1).map(strip), [], 'client has no named port');
    assert.deepEqual(ep(s, CLIENT).entries.filter((x) => x.direction === 'egress').map(strip), [
      'egress id=300 6/8080/16',
      'egress id=302 6/9090/16',
      'egress id=302 17/53/16',
    ]);
  });
});

describe('deny wins over allow', () => {
  test('an allow under a shorter deny is dropped (issue example: allow 80, deny 0-1023)', () => {
    const s = compile(
      cnp(
        'endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "2000", protocol: TCP}]}]}]\n' +
          'ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "0", endPort: 1023, protocol: TCP}]}]}]',
      ),
    );
    const e = ep(s, WEB).entries.filter((x) => x.identity === 301).map(strip);
    assert.deepEqual(e, ['ingress id=301 6/0/6 DENY', 'ingress id=301 6/2000/16']);
    assert.equal(verdict(s, { from: { identity: 301 }, to: { endpointId: WEB }, port: 80 }), 'DENIED');
    assert.equal(verdict(s, { from: { identity: 301 }, to: { endpointId: WEB }, port: 2000 }), 'ALLOWED');
  });
  test('deny for any identity beats an identity-specific allow (two lookups)', () => {
    const s = compile(cnp('endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]\ningressDeny: [{toPorts: [{ports: [{port: "22", protocol: TCP}]}]}]'));
    assert.equal(verdict(s, { from: { identity: 301 }, to: { endpointId: WEB }, port: 22 }), 'DENIED');
    assert.equal(verdict(s, { from: { identity: 301 }, to: { endpointId: WEB }, port: 23 }), 'ALLOWED');
    const t = policyTrace(s, { from: { identity: 301 }, to: { endpointId: WEB }, protocol: 'TCP', port: 22 });
    assert.deepEqual(t.ingress?.rules, ['CiliumNetworkPolicy prod/p ingressDeny[0]']);
  });

  // Random rule sets: the two-lookup LPM verdict must equal the naive "any deny matches -> deny, any
  // allow matches -> allow, else default deny" over the rules.
  test('randomised: LPM over compiled entries equals the naive rule semantics', () => {
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8) % n;
    const sources = [301, 302];
    for (let round = 0; round < 60; round++) {
      type R = { deny: boolean; src: 'all' | number; proto: 'TCP' | 'UDP' | 'ANY' | 'L3'; lo: number; hi: number };
      const rules: R[] = [];
      const n = 1 + rnd(6);
      for (let i = 0; i < n; i++) {
        const lo = rnd(64);
        rules.push({
          deny: rnd(3) === 0,
          src: rnd(3) === 0 ? 'all' : sources[rnd(2)]!,
          proto: (['TCP', 'UDP', 'ANY', 'L3'] as const)[rnd(4)]!,
          lo,
          hi: rnd(4) === 0 ? lo : lo + rnd(64),
        });
      }
      const section = (r: R) => {
        const from = r.src === 'all' ? '' : `fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: ${r.src === 301 ? 'prod' : 'dev'}}}]`;
        const ports = r.proto === 'L3' ? '' : `toPorts: [{ports: [{port: "${r.lo}"${r.hi > 0 ? `, endPort: ${r.hi}` : ''}, protocol: ${r.proto}}]}]`;
        const body = [from, ports].filter(Boolean).join(', ');
        return `- {${body || 'fromEntities: [all]'}}`;
      };
      const allow = rules.filter((r) => !r.deny).map(section);
      const deny = rules.filter((r) => r.deny).map(section);
      const spec = `endpointSelector: {matchLabels: {app: web}}\n${allow.length ? `ingress:\n${allow.join('\n')}\n` : ''}${deny.length ? `ingressDeny:\n${deny.join('\n')}\n` : ''}`;
      const s = compile(cnp(spec), { options: { allowLocalhost: false } });
      const matches = (r: R, src: number, proto: number, port: number) =>
        (r.src === 'all' || r.src === src) &&
        (r.proto === 'L3' ||
          ((r.proto === 'ANY' ? [6, 17, 132].includes(proto) : proto === (r.proto === 'TCP' ? 6 : 17)) && (r.lo === 0 && r.hi === 0 ? true : port >= r.lo && port <= r.hi)));
      for (const src of sources) {
        for (const proto of [6, 17, 132, 1]) {
          for (let port = 0; port < 140; port++) {
            const m = rules.filter((r) => matches(r, src, proto, port));
            const want = m.some((r) => r.deny) ? 'DENIED' : m.length > 0 ? 'ALLOWED' : 'DENIED';
            const got = verdict(s, { from: { identity: src }, to: { endpointId: WEB }, protocol: proto, port });
            if (got !== want) assert.fail(`round ${round} src ${src} ${proto}/${port}: want ${want} got ${got}\n${spec}\n${ep(s, WEB).entries.map(strip).join('\n')}`);
          }
        }
      }
    }
  });
});

describe('entities', () => {
  const from = (entity: string) => compile(cnp(`endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEntities: [${entity}]}]`), { options: { allowLocalhost: false } });
  const ingressIds = (s: CompiledPolicy) => [...new Set(ep(s, WEB).entries.filter((e) => e.direction === 'ingress').map((e) => e.identity))];
  test('world = reserved world, world-ipv4, world-ipv6', () => assert.deepEqual(ingressIds(from('world')), [2, 9, 10]));
  test('world-ipv6', () => assert.deepEqual(ingressIds(from('world-ipv6')), [10]));
  test('cluster = label-derived + host, remote-node, init, ingress, health, unmanaged, kube-apiserver', () =>
    assert.deepEqual(ingressIds(from('cluster')), [1, 3, 4, 5, 6, 7, 8, 300, 301, 302]));
  test('all = identity 0', () => assert.deepEqual(ingressIds(from('all')), [0]));
  test('host, remote-node, kube-apiserver, health, init, unmanaged, ingress', () => {
    assert.deepEqual(ingressIds(from('host')), [1]);
    assert.deepEqual(ingressIds(from('remote-node')), [6]);
    assert.deepEqual(ingressIds(from('kube-apiserver')), [7]);
    assert.deepEqual(ingressIds(from('health')), [4]);
    assert.deepEqual(ingressIds(from('init')), [5]);
    assert.deepEqual(ingressIds(from('unmanaged')), [3]);
    assert.deepEqual(ingressIds(from('ingress')), [8]);
  });
  test('world includes CIDR identities', () => {
    const s = compile(
      `${cnp('endpointSelector: {matchLabels: {app: web}}\ningress: [{fromEntities: [world]}]', 'a')}---\n${cnp('endpointSelector: {matchLabels: {app: nothing}}\ningress: [{fromCIDR: [192.0.2.0/24]}]', 'b')}`,
      { options: { allowLocalhost: false } },
    );
    assert.deepEqual(ingressIds(s), [2, 9, 10, LOCAL_IDENTITY_FLAG | 1]);
    assert.equal(verdict(s, { from: { ip: '192.0.2.1' }, to: { endpointId: WEB } }), 'ALLOWED');
  });
});

describe('CIDR identities and ipcache', () => {
  test('deterministic allocation, stable with previous allocations', () => {
    const y = cnp('endpointSelector: {}\negress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}, {cidr: "fd00::/8"}]}, {toCIDR: [0.0.0.0/0]}]');
    const s = compile(y);
    assert.deepEqual(s.ipcache, [
      { cidr: '10.0.0.0/8', identity: LOCAL_IDENTITY_FLAG | 1 },
      { cidr: '10.1.0.0/16', identity: LOCAL_IDENTITY_FLAG | 2 },
      { cidr: 'fd00::/8', identity: LOCAL_IDENTITY_FLAG | 3 },
    ]);
    assert.deepEqual(s.cidrIdentities[0]!.labels, ['cidr:10.0.0.0/8', 'reserved:world', 'reserved:world-ipv4']);
    const prev = new Map([['fd00::/8', LOCAL_IDENTITY_FLAG | 1]]);
    const s2 = compile(y, { options: { previousCidrIdentities: prev } });
    assert.deepEqual(s2.ipcache.map((e) => e.identity), [LOCAL_IDENTITY_FLAG | 2, LOCAL_IDENTITY_FLAG | 3, LOCAL_IDENTITY_FLAG | 1]);
  });
  test('except ranges and nested prefixes resolve correctly through the LPM (v4 and v6)', () => {
    const s = compile(
      cnp(
        'endpointSelector: {matchLabels: {app: web}}\negress:\n' +
          '- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16]}, {cidr: "fd00::/16", except: ["fd00:1::/32"]}]\n' +
          '- toCIDRSet: [{cidr: 10.1.2.0/24, except: [10.1.2.128/25]}]\n' +
          '- toCIDR: [10.2.3.4/32]',
      ),
    );
    const to = (ip: string) => verdict(s, { from: { endpointId: WEB }, to: { ip } });
    assert.equal(to('10.0.0.1'), 'ALLOWED');
    assert.equal(to('10.255.0.1'), 'ALLOWED');
    assert.equal(to('10.1.0.1'), 'DENIED', 'in except');
    assert.equal(to('10.1.2.1'), 'ALLOWED', 'nested allow inside the except');
    assert.equal(to('10.1.2.200'), 'DENIED', 'except of the nested allow');
    assert.equal(to('10.2.3.4'), 'ALLOWED', 'host route inside the other except');
    assert.equal(to('10.2.3.5'), 'DENIED');
    assert.equal(to('11.0.0.1'), 'DENIED', 'outside: world');
    assert.equal(to('fd00::1'), 'ALLOWED');
    assert.equal(to('fd00:1::1'), 'DENIED');
    assert.equal(to('fd01::1'), 'DENIED');
    // a workload address inside a CIDR keeps its own identity (CIDR rules do not select endpoints)
    const t = policyTrace(s, { from: { endpointId: WEB }, to: { ip: '10.0.0.9' }, protocol: 'TCP', port: 80 }, { ipcache: [{ cidr: '10.0.0.9/32', identity: 302 }] });
    assert.equal(t.verdict, 'DENIED');
  });
  test('/0 selects the world identities, with except', () => {
    const s = compile(cnp('endpointSelector: {matchLabels: {app: web}}\negress: [{toCIDRSet: [{cidr: 0.0.0.0/0, except: [192.168.0.0/16]}]}]'));
    const to = (ip: string) => verdict(s, { from: { endpointId: WEB }, to: { ip } });
    assert.equal(to('8.8.8.8'), 'ALLOWED');
    assert.equal(to('192.168.1.1'), 'DENIED');
    assert.equal(to('2001:db8::1'), 'DENIED', 'IPv4 /0 does not cover IPv6');
  });
  test('randomised nested CIDRs with excepts agree with set semantics', () => {
    let seed = 99;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8) % n;
    for (let round = 0; round < 15; round++) {
      const rules: Array<{ cidr: string; except: string[] }> = [];
      for (let i = 0; i < 1 + rnd(4); i++) {
        const len = 8 + rnd(12);
        const base = (10 << 24) | (rnd(4) << 20) | (rnd(16) << 12);
        const c = cidrParse(`${[base >>> 24, (base >> 16) & 255, (base >> 8) & 255, 0].join('.')}/${len}`);
        const except: string[] = [];
        for (let j = 0; j < rnd(3); j++) {
          const elen = len + 1 + rnd(8);
          const off = BigInt(rnd(1 << (elen - len))) << BigInt(32 - elen);
          except.push(cidrParse(`${addr4(c.network + off)}/${elen}`).text);
        }
        rules.push({ cidr: c.text, except });
      }
      const set = rules.map((r) => `{cidr: ${r.cidr}, except: [${r.except.join(', ')}]}`).join(', ');
      const s = compile(cnp(`endpointSelector: {matchLabels: {app: web}}\negress: [{toCIDRSet: [${set}]}]`));
      for (let k = 0; k < 300; k++) {
        const a = BigInt((10 << 24) | (rnd(4) << 20) | rnd(1 << 20)) & 0xffffffffn;
        const ip = addr4(a);
        const inside = (c: string) => {
          const x = cidrParse(c);
          const sh = BigInt(32 - x.prefixLength);
          return addressParse(ip).value >> sh === x.network >> sh;
        };
        const want = rules.some((r) => inside(r.cidr) && !r.except.some(inside)) ? 'ALLOWED' : 'DENIED';
        const got = verdict(s, { from: { endpointId: WEB }, to: { ip } });
        if (got !== want) assert.fail(`round ${round}: ${ip} want ${want} got ${got}: ${set}`);
      }
    }
  });
});

function addr4(v: bigint): string {
  const n = Number(v & 0xffffffffn);
  return [n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255].join('.');
}

describe('NetworkPolicy specifics', () => {
  test('from: [] / missing from = all sources including world', () => {
    const s = compile('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: prod}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n');
    assert.equal(verdict(s, { from: { ip: '8.8.8.8' }, to: { endpointId: WEB } }), 'ALLOWED');
    assert.equal(verdict(s, { from: { ip: '8.8.8.8' }, to: { endpointId: WEB }, protocol: 'UDP' }), 'DENIED');
  });
  test('policy in another namespace does not select', () => {
    const s = compile('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: dev}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n');
    assert.equal(ep(s, WEB).ingressEnforced, false);
    assert.equal(ep(s, WEB).egressEnforced, false);
  });
  test('explicit policyTypes Egress with ingress rules ignores the ingress rules', () => {
    const s = compile('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: prod}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{from: [{podSelector: {}}]}]\n');
    assert.equal(ep(s, WEB).ingressEnforced, false);
    assert.equal(ep(s, WEB).egressEnforced, true);
    assert.deepEqual(ep(s, WEB).entries.filter((e) => e.direction === 'egress'), []);
  });
});

describe('NetworkPolicy ipBlock and workload addresses', () => {
  // 300 prod/web (WEB), 301 prod/client (CLIENT), 302 dev/client: the subject is WEB, the peers 301 and 302.
  const np = (from: string) =>
    `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: blocks, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: ${from}\n`;
  const at = (addresses: Record<number, string[]>) => ({
    endpoints: [
      { endpointId: WEB, identity: 300, addresses: ['10.9.0.1', 'fd09::1'] },
      ...Object.entries(addresses).map(([id, a], i) => ({ endpointId: 10 + i, identity: Number(id), addresses: a })),
    ],
  });
  const ingressIds = (s: CompiledPolicy) => ep(s, WEB).entries.filter((e) => e.direction === 'ingress' && e.identity < LOCAL_IDENTITY_FLAG).map((e) => e.identity);
  const BOTH = '[{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.9.0/24]}}, {ipBlock: {cidr: "fd01::/64", except: ["fd01::9:0/112"]}}]';

  test('an ipBlock pair covering both addresses of a workload selects its identity; except and the other family leave it out', () => {
    const s = compile(np(BOTH), at({ 301: ['10.1.0.5', 'fd01::5'], 302: ['10.1.9.5', 'fd01::6'] }));
    assert.deepEqual(ingressIds(s), [1, 301], '301 covered in both families; 302 is in the IPv4 except (host 1 is allow-localhost)');
    // only the IPv4 address covered: selecting the identity would also admit its IPv6 traffic, which
    // Kubernetes does not: not selected (fail closed)
    const v4 = compile(np('[{ipBlock: {cidr: 10.1.0.0/16}}]'), at({ 301: ['10.1.0.5', 'fd01::5'] }));
    assert.deepEqual(ingressIds(v4), [1]);
    // CIDR identities for the outside world stay as they were
    assert.equal(verdict(s, { from: { ip: '10.1.200.1' }, to: { endpointId: WEB } }), 'ALLOWED');
    assert.equal(verdict(s, { from: { ip: '10.1.9.1' }, to: { endpointId: WEB } }), 'DENIED');
  });

  test('two workloads share an identity: selected only when the blocks cover both', () => {
    const one = compile(np(BOTH), { endpoints: [...at({ 301: ['10.1.0.5', 'fd01::5'] }).endpoints, { endpointId: 20, identity: 301, addresses: ['10.2.0.5', 'fd01::7'] }] });
    assert.deepEqual(ingressIds(one), [1], 'the second client (10.2.0.5) is outside: an entry for 301 would admit it');
    const both = compile(np(BOTH), { endpoints: [...at({ 301: ['10.1.0.5', 'fd01::5'] }).endpoints, { endpointId: 20, identity: 301, addresses: ['10.1.0.6', 'fd01::7'] }] });
    assert.deepEqual(ingressIds(both), [1, 301]);
  });

  test('egress ipBlocks select destination workloads the same way', () => {
    const y = `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n  - to: ${BOTH}\n`;
    const s = compile(y, at({ 301: ['10.1.0.5', 'fd01::5'], 302: ['10.3.0.1', 'fd01::8'] }));
    assert.equal(verdict(s, { from: { endpointId: WEB }, to: { endpointId: 10 } }), 'ALLOWED');
    assert.equal(verdict(s, { from: { endpointId: WEB }, to: { endpointId: 11 } }), 'DENIED');
  });

  test('the same CIDRs in a CiliumNetworkPolicy do not select workloads (cilium#9209)', () => {
    const y = cnp('endpointSelector: {matchLabels: {app: web}}\ningress: [{fromCIDRSet: [{cidr: 10.1.0.0/16}, {cidr: "fd01::/64"}]}]');
    const s = compile(y, at({ 301: ['10.1.0.5', 'fd01::5'] }));
    assert.deepEqual(ingressIds(s), [1]);
    assert.equal(verdict(s, { from: { endpointId: 10 }, to: { endpointId: WEB } }), 'DENIED');
    assert.deepEqual(s.ipBlocks, [], 'no ipBlock view: by address too, nothing selects the workload');
    assert.equal(verdict(s, { from: { ip: '10.1.0.5' }, to: { endpointId: WEB } }), 'ALLOWED', 'as an address outside the cluster it is selected');
  });

  test('per address: a v4-only ipBlock selects the IPv4 address of a dual-stack workload, not its IPv6 one; except carves out', () => {
    const s = compile(np('[{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.9.0/24]}}]'), at({ 301: ['10.1.0.5', 'fd01::5'], 302: ['10.1.9.5', 'fd01::6'] }));
    assert.deepEqual(ingressIds(s), [1], 'no identity is covered in both families');
    assert.deepEqual(s.ipBlocks.map((b) => b.cidr), ['10.0.0.0/8', '10.1.9.0/24']);
    const [whole] = s.ipBlocks;
    const viewIds = ep(s, WEB).entries.filter((e) => e.direction === 'ingress' && e.identity >= 2 ** 25).map((e) => e.identity);
    assert.deepEqual(viewIds, [whole!.identity], 'the ipBlock view identity of 10.0.0.0/8 is selected, the except is not');
    assert.deepEqual(s.identities.get(whole!.identity), ['ipblock:10.0.0.0/8']);
    // remotes given by address as the ipcache holds them: workload identities
    const resolveIp = (ip: string) => ({ '10.1.0.5': { identity: 301 }, 'fd01::5': { identity: 301 }, '10.1.9.5': { identity: 302 } })[ip];
    const v = (ip: string) => policyTrace(s, { from: { ip }, to: { endpointId: WEB }, protocol: 'TCP', port: 80 }, { resolveIp });
    assert.equal(v('10.1.0.5').verdict, 'ALLOWED');
    assert.equal(v('10.1.0.5').ingress?.ipBlock?.cidr, '10.0.0.0/8');
    assert.equal(v('fd01::5').verdict, 'DENIED');
    assert.equal(v('10.1.9.5').verdict, 'DENIED');
    assert.equal(v('10.1.9.5').ingress?.ipBlock?.cidr, '10.1.9.0/24');
    // a /0 ipBlock (the usual "anywhere") has a view entry per family of its own
    const any = compile(np('[{ipBlock: {cidr: 0.0.0.0/0, except: [10.1.9.0/24]}}]'), at({ 301: ['10.1.0.5', 'fd01::5'] }));
    assert.deepEqual(any.ipBlocks.map((b) => b.cidr), ['0.0.0.0/0', '10.1.9.0/24']);
    assert.equal(policyTrace(any, { from: { ip: '10.1.0.5' }, to: { endpointId: WEB }, protocol: 'TCP', port: 80 }, { resolveIp }).verdict, 'ALLOWED');
    assert.equal(policyTrace(any, { from: { ip: 'fd01::5' }, to: { endpointId: WEB }, protocol: 'TCP', port: 80 }, { resolveIp }).verdict, 'DENIED');
  });
});

describe("cluster mode: a selector that does not name the cluster selects this cluster's identities only (Cilium's policy-default-local-cluster)", () => {
  // 400: this cluster's workload on another host; 262145: a peer cluster's, with the same labels
  const clustered = (cluster: string, labels: Record<string, string>) => [...identityLabels(labels, 'prod').map(labelFormat), `k8s:io.cilium.k8s.policy.cluster=${cluster}`];
  const all = new Map(ids);
  all.set(300, clustered('c1', { app: 'web' }));
  all.set(301, clustered('c1', { app: 'client' }));
  all.set(400, clustered('c1', { app: 'frontend' }));
  all.set(262145, clustered('cilium1', { app: 'frontend' }));
  const from = (peers: string) => cnp(`endpointSelector: {matchLabels: {app: web}}\ningress: [{${peers}}]`);
  const ingress = (s: CompiledPolicy) => ep(s, WEB).entries.filter((e) => e.direction === 'ingress' && e.identity !== 1).map((e) => e.identity).sort((a, b) => a - b);
  const inCluster = (yaml: string, localCluster?: string) =>
    policyCompile({ policies: policiesParse(yaml), identities: all, endpoints, ...(localCluster ? { options: { localCluster } } : {}) });

  test('fromEndpoints without a cluster label: this cluster\'s frontend, not the peer\'s', () => {
    assert.deepEqual(ingress(inCluster(from('fromEndpoints: [{matchLabels: {app: frontend}}]'), 'c1')), [400]);
    assert.deepEqual(ingress(inCluster(from('fromEndpoints: [{matchExpressions: [{key: app, operator: Exists}]}]'), 'c1')), [300, 301, 400]);
  });
  test('a selector naming the peer cluster selects it', () => {
    assert.deepEqual(ingress(inCluster(from('fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: cilium1}}]'), 'c1')), [262145]);
    assert.deepEqual(ingress(inCluster(from('fromEndpoints: [{matchLabels: {app: frontend}, matchExpressions: [{key: io.cilium.k8s.policy.cluster, operator: Exists}]}]'), 'c1')), [400, 262145]);
  });
  test('the cluster entity is this cluster\'s: no peer identity', () => {
    const got = ingress(inCluster(from('fromEntities: [cluster]'), 'c1'));
    assert.ok(got.includes(400) && got.includes(301));
    assert.ok(!got.includes(262145), `the peer's identity in ${got.join(',')}`);
  });
  test('without a local cluster name (single host: no peers) nothing is filtered', () => {
    assert.deepEqual(ingress(inCluster(from('fromEndpoints: [{matchLabels: {app: frontend}}]'))), [400, 262145]);
  });
});
