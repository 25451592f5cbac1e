import assert from 'node:assert/strict';
import { after, before, describe, mock, test } from 'node:test';
import { pino } from 'pino';
import { configParse } from '../../agent/config.js';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import { NODE_CIDRS_PREFIX, nodeCidrClaim, nodeCidrFree } from '../../agent/cluster/node-cidr.js';
import { claimKeyCidr, nodeClaimProblem, nodeClaimsSettle, NodeRegistry, NODES_PREFIX, nodeJson, nodeValueJudge, type LocalNode, type NodeCidrClaim, type PeerNode } from '../../agent/cluster/node-registry.js';
import { NodeRoutes } from '../../agent/cluster/node-routes.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import { cidrParse } from '../../agent/ipam.js';
import { KernelError } from '../../common/kernel-error.js';
import { Rtnl, type NlMessage } from '../../netkit/socket.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { waitFor } from '../helpers/sys.js';

const log = pino({ level: 'silent' });
const pools = { 4: cidrParse('10.210.0.0/16'), 6: cidrParse('fd00:210::/64') } as const;
const self: LocalNode = { name: 'n1', cluster: 'kc', clusterId: 7, addresses: ['192.0.2.1', '2001:db8::1'], ipv4Cidr: cidrParse('10.210.0.0/24'), ipv6Cidr: cidrParse('fd00:210::/112') };
const rules = { self, pools };
const peerOf = (over: Partial<LocalNode> = {}) => ({ ...self, name: 'n2', addresses: ['192.0.2.2', '2001:db8::2'], ipv4Cidr: cidrParse('10.210.1.0/24'), ipv6Cidr: cidrParse('fd00:210::1:0/112'), ...over });
const key = (name: string) => `${NODES_PREFIX}/kc/${name}`;

describe('cluster nodes: Cilium\'s node JSON', () => {
  test('field names and order as Cilium writes them; CIDRs as Go\'s net.IPNet (mask base64)', () => {
    const v = JSON.parse(nodeJson(self, 'boot-1')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(v), ['Name', 'Cluster', 'IPAddresses', 'IPv4AllocCIDR', 'IPv4SecondaryAllocCIDRs', 'IPv6AllocCIDR', 'IPv6SecondaryAllocCIDRs', 'IPv4HealthIP', 'IPv6HealthIP', 'IPv4IngressIP', 'IPv6IngressIP', 'ClusterID', 'Source', 'EncryptionKey', 'Labels', 'Annotations', 'NodeIdentity', 'WireguardPubKey', 'BootID']);
    assert.deepEqual(v.IPAddresses, [{ Type: 'InternalIP', IP: '192.0.2.1' }, { Type: 'InternalIP', IP: '2001:db8::1' }]);
    assert.deepEqual(v.IPv4AllocCIDR, { IP: '10.210.0.0', Mask: '////AA==' });
    assert.deepEqual(v.IPv6AllocCIDR, { IP: 'fd00:210::', Mask: Buffer.from([...Array(14).fill(0xff), 0, 0]).toString('base64') });
    assert.equal(v.ClusterID, 7);
  });

  test('another node\'s entry is read back: its addresses and CIDRs', () => {
    const verdict = nodeValueJudge(key('n2'), nodeJson(peerOf()), rules);
    assert.ok('peer' in verdict, 'reason' in verdict ? verdict.reason : 'own');
    assert.equal(verdict.peer.ipv4, '192.0.2.2');
    assert.equal(verdict.peer.ipv6, '2001:db8::2');
    assert.equal(verdict.peer.ipv4Cidr?.text, '10.210.1.0/24');
    assert.equal(verdict.peer.ipv6Cidr?.text, 'fd00:210::1:0/112');
    assert.deepEqual(nodeValueJudge(key('n1'), nodeJson(self), rules), { own: true });
  });

  test('hostile entries are refused with a reason: never a route over this node\'s CIDR, the pool or special addresses', () => {
    const reason = (k: string, v: string) => {
      const verdict = nodeValueJudge(k, v, rules);
      assert.ok('reason' in verdict, `accepted: ${k} ${v.slice(0, 100)}`);
      return verdict.reason;
    };
    const good = JSON.parse(nodeJson(peerOf())) as Record<string, unknown>;
    const with_ = (o: Record<string, unknown>) => JSON.stringify({ ...good, ...o });
    assert.match(reason(key('n2'), 'garbage{'), /not JSON/);
    assert.match(reason(key('n2'), '[1,2]'), /not a JSON object/);
    assert.match(reason(key('n2'), with_({ Labels: { pad: 'x'.repeat(20_000) } })), /bytes, more than/);
    assert.match(reason(key('bad/name'), with_({ Name: 'bad/name' })), /not a node name/);
    assert.match(reason(key('n2'), with_({ Name: 'n3' })), /does not match the key/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [{ Type: 'InternalIP', IP: '2001:db8::2%eth0' }] })), /InternalIP "2001:db8::2%eth0" is not an IP address/);
    assert.match(reason(key('n2'), with_({ IPv6AllocCIDR: { IP: 'fd00:210::1:0%x', Mask: Buffer.from([...Array(14).fill(0xff), 0, 0]).toString('base64') } })), /IPv6AllocCIDR is not a network/);
    assert.match(reason(key('n2'), with_({ Cluster: 'other' })), /not this cluster/);
    assert.match(reason(key('n2'), with_({ ClusterID: 8 })), /not this cluster's 7/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: { IP: '10.210.0.0', Mask: '////AA==' } })), /overlaps this node's own 10\.210\.0\.0\/24/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: { IP: '10.210.0.0', Mask: '//8AAA==' } })), /overlaps this node's own/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: { IP: '0.0.0.0', Mask: 'AAAAAA==' } })), /outside the cluster pool/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: { IP: '10.1.0.0', Mask: '////AA==' } })), /outside the cluster pool/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: { IP: '10.210.1.5', Mask: '////AA==' } })), /not a network/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: { IP: '10.210.1.0', Mask: '/w//AA==' } })), /not a network/);
    assert.match(reason(key('n2'), with_({ IPv4AllocCIDR: '10.210.1.0/24' })), /not a network/);
    assert.match(reason(key('n2'), with_({ IPv6AllocCIDR: { IP: '10.210.1.0', Mask: '////AA==' } })), /not IPv6/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [{ Type: 'InternalIP', IP: '10.210.0.7' }] })), /inside the cluster pool/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [{ Type: 'InternalIP', IP: '127.0.0.1' }] })), /loopback/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [{ Type: 'InternalIP', IP: 'fe80::1' }] })), /link-local/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [{ Type: 'InternalIP', IP: '192.0.2.1' }] })), /this node's own address/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [{ Type: 'InternalIP', IP: 'nope' }] })), /not an IP address/);
    assert.match(reason(key('n2'), with_({ IPAddresses: Array(17).fill({ Type: 'InternalIP', IP: '192.0.2.9' }) })), /at most 16/);
    assert.match(reason(key('n2'), with_({ IPAddresses: [] })), /no InternalIP/);
  });

  test('CIDR claims: the first claimant owns a CIDR; a rewritten claim, or one overlapping an earlier one, owns nothing', () => {
    const c = (cidr: string, node: string, createRevision: number, version = 1): NodeCidrClaim => ({ cidr: cidrParse(cidr), node, createRevision: BigInt(createRevision), version: BigInt(version) });
    const owners = nodeClaimsSettle([
      c('10.210.1.0/24', 'n2', 10),
      c('10.210.1.0/25', 'evil', 20), // inside n2's, later
      c('10.210.2.0/25', 'early', 5), // inside a later /24
      c('10.210.2.0/24', 'late', 30),
      c('10.210.3.0/24', 'n3', 12, 2), // rewritten
      c('10.210.4.0/24', 'a', 40),
      c('10.210.4.0/23', 'b', 40), // same revision: neither
      c('fd00:210::1:0/112', 'n2', 11),
      c('10.0.0.0/8', 'huge', 50), // overlaps them all, last
    ]);
    assert.deepEqual(owners.get('10.210.1.0/24'), { node: 'n2' });
    assert.deepEqual(owners.get('fd00:210::1:0/112'), { node: 'n2' });
    assert.deepEqual(owners.get('10.210.2.0/25'), { node: 'early' });
    const why = (cidr: string) => {
      const o = owners.get(cidr);
      assert.ok(o && 'reason' in o, `${cidr} owned: ${JSON.stringify(o)}`);
      return o.reason;
    };
    assert.match(why('10.210.1.0/25'), /overlaps node "n2"'s claim 10\.210\.1\.0\/24, made earlier/);
    assert.match(why('10.210.2.0/24'), /overlaps node "early"'s claim 10\.210\.2\.0\/25, made earlier/);
    assert.match(why('10.210.3.0/24'), /rewritten after its creation \(version 2/);
    assert.match(why('10.210.4.0/24'), /same revision/);
    assert.match(why('10.210.4.0/23'), /same revision/);
    assert.match(why('10.0.0.0/8'), /made earlier/);
    // An entry's CIDRs: its own claim, someone else's, a void one, none.
    const peer = (name: string, v4: string): PeerNode => ({ name, ipv4: '192.0.2.9', ipv4Cidr: cidrParse(v4) });
    assert.equal(nodeClaimProblem({ ...peer('n2', '10.210.1.0/24'), ipv6Cidr: cidrParse('fd00:210::1:0/112') }, owners, 'kc'), undefined);
    assert.deepEqual(nodeClaimProblem(peer('z-evil', '10.210.1.0/24'), owners, 'kc'), { cidr: '10.210.1.0/24', reason: 'IPv4AllocCIDR 10.210.1.0/24 is claimed by node "n2" (kitnet/state/node-cidrs/v1/kc/10.210.1.0/24), not by z-evil' });
    assert.match(nodeClaimProblem(peer('evil', '10.210.1.0/25'), owners, 'kc')!.reason, /^IPv4AllocCIDR 10\.210\.1\.0\/25: its claim kitnet\/state\/node-cidrs\/v1\/kc\/10\.210\.1\.0\/25 owns nothing: it overlaps node "n2"'s claim/);
    assert.deepEqual(nodeClaimProblem(peer('n9', '10.210.9.0/24'), owners, 'kc'), { cidr: '10.210.9.0/24', missing: true, reason: 'IPv4AllocCIDR 10.210.9.0/24 is claimed by no node (no key kitnet/state/node-cidrs/v1/kc/10.210.9.0/24; a node claims its CIDRs before it announces them)' });
    // Claim keys count only in the canonical form nodes write.
    assert.equal(claimKeyCidr(`${NODE_CIDRS_PREFIX}/kc/10.210.1.0/24`, 'kc')?.text, '10.210.1.0/24');
    assert.equal(claimKeyCidr(`${NODE_CIDRS_PREFIX}/kc/10.210.1.5/24`, 'kc'), undefined);
    assert.equal(claimKeyCidr(`${NODE_CIDRS_PREFIX}/kc/nonsense`, 'kc'), undefined);
  });
});

describe('cluster nodes: per-node CIDRs', () => {
  test('the lowest free block, past claims of any size; none when the pool is full', () => {
    const pool = cidrParse('10.0.0.0/22');
    assert.equal(nodeCidrFree(pool, 24, [])?.text, '10.0.0.0/24');
    assert.equal(nodeCidrFree(pool, 24, [cidrParse('10.0.0.0/24'), cidrParse('10.0.2.0/24')])?.text, '10.0.1.0/24');
    assert.equal(nodeCidrFree(pool, 24, [cidrParse('10.0.0.0/23'), cidrParse('10.0.2.128/25')])?.text, '10.0.3.0/24');
    assert.equal(nodeCidrFree(pool, 24, [cidrParse('10.0.0.0/22')]), undefined);
    assert.equal(nodeCidrFree(pool, 24, [cidrParse('10.0.0.0/8')]), undefined);
    assert.equal(nodeCidrFree(pool, 24, [cidrParse('fd00::/8'), cidrParse('10.9.0.0/24')])?.text, '10.0.0.0/24');
    assert.equal(nodeCidrFree(cidrParse('fd00:210::/64'), 112, [cidrParse('fd00:210::/112')])?.text, 'fd00:210::1:0/112');
  });

  test('config: mask sizes must fit the pools and leave room, with errors naming the key', () => {
    const base = { name: 'kc', id: 7, etcd: { endpoints: ['http://127.0.0.1:2379'] } };
    const c = configParse({ cluster: base });
    assert.deepEqual(c.cluster?.ipam, { ipv4MaskSize: 24, ipv6MaskSize: 112 });
    assert.equal(c.cluster?.leaseTTLSeconds, 60);
    assert.equal(c.cluster?.autoDirectNodeRoutes, true);
    assert.throws(() => configParse({ ipam: { ipv4Pool: '10.9.0.0/24' }, cluster: { ...base, ipam: { ipv4MaskSize: 16 } } }), /cluster\.ipam\.ipv4MaskSize: \/16 is larger than the cluster pool ipam\.ipv4Pool 10\.9\.0\.0\/24/);
    assert.throws(() => configParse({ cluster: { ...base, ipam: { ipv4MaskSize: 30 } } }), /cluster\.ipam\.ipv4MaskSize: \/30 leaves a node fewer than 4 addresses/);
    assert.throws(() => configParse({ cluster: { ...base, ipam: { ipv6MaskSize: 127 } } }), /cluster\.ipam\.ipv6MaskSize: \/127 leaves/);
    assert.throws(() => configParse({ cluster: { ...base, leaseTTLSeconds: 1 } }), /cluster\.leaseTTLSeconds: must be 5-3600/);
    assert.throws(() => configParse({ cluster: { ...base, nodeIPv6: '10.0.0.1' } }), /cluster\.nodeIPv6: must be an IPv6 address/);
    // Broken neighbours are reported against their own keys, not as a crash or a mask problem.
    assert.throws(() => configParse({ ipam: { ipv4Pool: 'bad' }, cluster: base }), (e: Error) => e.name === 'ConfigError' && /ipam\.ipv4Pool: must be an IPv4 CIDR/.test(e.message) && !/MaskSize/.test(e.message));
    assert.throws(() => configParse({ ipam: { ipv4Pool: '10.0.0.0/30' }, cluster: base }), (e: Error) => /ipam\.ipv4Pool: 10\.0\.0\.0\/30 is too small/.test(e.message) && !/MaskSize/.test(e.message));
    assert.throws(() => configParse({ cluster: 'yes' }), /cluster: /);
    assert.throws(() => configParse({ cluster: { ...base, ipam: { ipv4MaskSize: 'x' } } }), /cluster\.ipam\.ipv4MaskSize: Invalid input/);
  });
});

describe('cluster nodes: routes', () => {
  test('a pass that fails as a whole (the route dump refused) is retried after the short retry delay, not at the next resync', async () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    let dumps = 0;
    // the first route dump is refused as a second dump on a shared socket is (EBUSY); the rest list nothing
    const nl = new Rtnl({
      exchange: async (): Promise<NlMessage[]> => {
        if (dumps++ === 0) throw new KernelError({ op: 'RTM_GETROUTE', errno: 16 });
        return [];
      },
      sysctlWrite: async () => undefined,
      close: () => undefined,
    });
    const routes = new NodeRoutes(nl, log);
    try {
      // the fake socket answers at once: one turn of the event loop runs a whole pass
      const settled = () => new Promise((resolve) => setImmediate(resolve));
      routes.apply([], []);
      await settled();
      assert.equal(dumps, 1, 'the failed pass');
      mock.timers.tick(2_999);
      await settled();
      assert.equal(dumps, 1, 'not retried at once');
      mock.timers.tick(1);
      await settled();
      assert.equal(dumps, 3, 'retried 3 s later (IPv4 and IPv6 dumps)');
    } finally {
      await routes.close();
      mock.timers.reset();
    }
  });
});

describe('cluster nodes: CIDR claims in etcd (real etcd)', { timeout: 60_000 }, () => {
  let etcd: EtcdServer | undefined;
  before(async () => {
    etcd = await etcdStart();
  });
  after(async () => {
    await etcd?.stop();
  });

  test('concurrent nodes get distinct CIDRs; a node gets its own back; a full pool is a clear error', async () => {
    const sessions = await Promise.all(Array.from({ length: 6 }, () => ClusterSession.open(etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined), log, 10)));
    try {
      const pool = cidrParse('10.77.0.0/22');
      const req = (nodeName: string) => ({ cluster: 'kc', nodeName, pool, maskSize: 24, poolKey: 'ipam.ipv4Pool' });
      const got = await Promise.all(sessions.slice(0, 4).map((s, i) => nodeCidrClaim(s, req(`n${i}`), log)));
      assert.deepEqual(got.map((c) => c.text).sort(), ['10.77.0.0/24', '10.77.1.0/24', '10.77.2.0/24', '10.77.3.0/24']);
      const again = await nodeCidrClaim(sessions[4]!, req('n2'), log);
      assert.equal(again.text, got[2]!.text, 'n2 restarted gets its CIDR back');
      await assert.rejects(nodeCidrClaim(sessions[5]!, req('n9'), log), /ipam\.ipv4Pool: 10\.77\.0\.0\/22 has no free \/24 left for node n9 \(4 claimed under kitnet\/state\/node-cidrs\/v1\/kc\/\)/);
      const claim = await sessions[0]!.client.get(`${NODE_CIDRS_PREFIX}/kc/${got[0]!.text}`).string();
      assert.equal(claim, 'n0');
    } finally {
      await Promise.all(sessions.map((s) => s.close({ revoke: true })));
    }
  });
});

describe('cluster nodes: the registry follows the node list (real etcd)', { timeout: 60_000 }, () => {
  let etcd: EtcdServer | undefined;
  before(async () => {
    etcd = await etcdStart();
  });
  after(async () => {
    await etcd?.stop();
  });
  /** A CIDR claim as nodeCidrClaim writes it (create-only): true if it was created. */
  const claimPut = async (s: ClusterSession, cidr: string, node: string) => {
    const k = `${NODE_CIDRS_PREFIX}/kc/${cidr}`;
    return (await s.client.if(k, 'Create', '==', 0).then(s.client.put(k).value(node)).commit()).succeeded;
  };
  /** n2's claims, as its nodeJoin makes them before its entry. */
  const claimN2 = async (s: ClusterSession) => {
    assert.ok(await claimPut(s, '10.210.1.0/24', 'n2'));
    assert.ok(await claimPut(s, 'fd00:210::1:0/112', 'n2'));
  };
  /** Each test leaves etcd without node entries or claims. */
  const wipe = async (s: ClusterSession) => {
    await s.client.delete().prefix(`${NODES_PREFIX}/`).exec();
    await s.client.delete().prefix(`${NODE_CIDRS_PREFIX}/`).exec();
  };
  /** A logger whose warnings the test reads. */
  const logged = () => {
    const lines: Array<Record<string, unknown>> = [];
    return { lines, log: pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) }) };
  };

  test('peers join and leave; a value turned bad withdraws the peer; a CIDR claimed by another node is refused; a clean stop deletes the own entry', async () => {
    const open = () => ClusterSession.open(etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined), log, 10);
    const [s1, s2, raw] = await Promise.all([open(), open(), open()]);
    const held = new Map<string, PeerNode>();
    let lists = 0;
    const sink = { apply: (set: readonly PeerNode[], gone: readonly string[]) => {
      lists++;
      for (const g of gone) held.delete(g);
      for (const p of set) held.set(p.name, p);
    } };
    const r1 = new NodeRegistry(s1, rules, log);
    const n2 = peerOf();
    const r2 = new NodeRegistry(s2, { self: n2, pools }, log);
    try {
      await r1.start(sink);
      assert.equal(lists, 1, 'the first list reaches the sink even with no peer');
      assert.equal(held.size, 0);
      // Its own entry deleted by someone else: written again.
      await raw.client.delete().key(key('n1')).exec();
      await waitFor('n1\'s entry written again', async () => (await raw.client.get(key('n1')).string()) !== null || undefined, 10_000);
      await claimN2(raw);
      await r2.start({ apply: () => undefined });
      await waitFor('n2 on n1', async () => held.get('n2')?.ipv4Cidr?.text === '10.210.1.0/24' || undefined, 10_000);
      assert.equal(r1.counts.added, 1);
      // Another writer announces n2's IPv4 CIDR for n3: ignored (n2's claim owns it).
      await raw.client.put(key('n3')).value(nodeJson({ ...n2, name: 'n3', addresses: ['192.0.2.3'], ipv6Cidr: cidrParse('fd00:210::3:0/112') }));
      await waitFor('n3 counted as ignored', async () => r1.counts.ignored >= 1 || undefined, 10_000);
      assert.equal(held.has('n3'), false);
      await raw.client.delete().key(key('n3')).exec();
      // n4 (no agent behind it to write it again) turns bad: n4 is withdrawn.
      const n4 = { ...n2, name: 'n4', addresses: ['192.0.2.4'], ipv4Cidr: cidrParse('10.210.4.0/24'), ipv6Cidr: cidrParse('fd00:210::4:0/112') };
      await claimPut(raw, '10.210.4.0/24', 'n4');
      await claimPut(raw, 'fd00:210::4:0/112', 'n4');
      await raw.client.put(key('n4')).value(nodeJson(n4));
      await waitFor('n4 on n1', async () => held.has('n4') || undefined, 10_000);
      await raw.client.put(key('n4')).value('not json');
      await waitFor('n4 withdrawn', async () => !held.has('n4') || undefined, 10_000);
      assert.equal(r1.counts.removed, 1);
      await raw.client.delete().key(key('n4')).exec();
      // n2 stops cleanly: its entry is deleted at once, n1 sees it leave.
      await r2.close();
      assert.equal(await raw.client.get(key('n2')).string(), null);
      await waitFor('n2 gone after its clean stop', async () => !held.has('n2') || undefined, 10_000);
    } finally {
      await r1.close();
      await r2.close();
      await wipe(raw);
      await Promise.all([s1, s2, raw].map((s) => s.close({ revoke: true })));
    }
  });

  test('an entry is taken only for CIDRs its node claimed: a hostile entry over an unclaimed or another\'s CIDR is refused, naming the node, CIDR and why; an entry seen before its claim is taken when the claim comes', async () => {
    const open = () => ClusterSession.open(etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined), log, 10);
    const [s1, raw] = await Promise.all([open(), open()]);
    const { lines, log: wlog } = logged();
    const held = new Map<string, PeerNode>();
    const r1 = new NodeRegistry(s1, rules, wlog);
    const refusals = (node: string) => lines.filter((l) => l.msg === 'cluster node entry ignored' && l.node === node);
    try {
      await claimN2(raw);
      await raw.client.put(key('n2')).value(nodeJson(peerOf()));
      await r1.start({ apply: (set, gone) => {
        for (const g of gone) held.delete(g);
        for (const p of set) held.set(p.name, p);
      } });
      assert.equal(held.get('n2')?.ipv4, '192.0.2.2', 'n2 (claim, then entry) taken at the first list');
      // A node nobody claimed a CIDR for: never taken; after the grace for a late claim, logged and counted.
      const ghost = { ...peerOf(), name: 'ghost', addresses: ['192.0.2.66'], ipv4Cidr: cidrParse('10.210.6.0/24'), ipv6Cidr: cidrParse('fd00:210::6:0/112') };
      await raw.client.put(key('ghost')).value(nodeJson(ghost));
      const [line] = await waitFor('ghost logged as ignored', async () => refusals('ghost').length > 0 && refusals('ghost'), 10_000);
      assert.equal(held.has('ghost'), false, 'ghost is not taken');
      assert.equal(line!.cidr, '10.210.6.0/24');
      assert.equal(line!.key, key('ghost'));
      assert.match(String(line!.reason), /^IPv4AllocCIDR 10\.210\.6\.0\/24 is claimed by no node \(no key kitnet\/state\/node-cidrs\/v1\/kc\/10\.210\.6\.0\/24;/);
      const ignored = r1.counts.ignored;
      assert.ok(ignored >= 1);
      // Its claims come later (an entry seen before its claim): judged again, taken; not logged again meanwhile.
      await claimPut(raw, '10.210.6.0/24', 'ghost');
      await claimPut(raw, 'fd00:210::6:0/112', 'ghost');
      await waitFor('ghost taken once claimed', async () => held.get('ghost')?.ipv4Cidr?.text === '10.210.6.0/24' || undefined, 10_000);
      // (one line per reason: with only the IPv4 claim in, the IPv6 CIDR was the one unclaimed)
      const ghostLines = refusals('ghost').length;
      assert.ok(refusals('ghost').every((l) => /is claimed by no node/.test(String(l.reason))));
      // The review's reproduction: z-evil announces n2's CIDR via a hostile address. n2's claim owns it.
      await raw.client.put(key('z-evil')).value(nodeJson({ ...ghost, name: 'z-evil', ipv4Cidr: cidrParse('10.210.1.0/24'), ipv6Cidr: cidrParse('fd00:210::7:0/112') }));
      const [evil] = await waitFor('z-evil logged as ignored', async () => refusals('z-evil').length > 0 && refusals('z-evil'), 10_000);
      assert.equal(evil!.reason, 'IPv4AllocCIDR 10.210.1.0/24 is claimed by node "n2" (kitnet/state/node-cidrs/v1/kc/10.210.1.0/24), not by z-evil');
      assert.equal(held.has('z-evil'), false);
      assert.equal(held.get('n2')?.ipv4, '192.0.2.2');
      // A claim made inside n2's CIDR after it (a more specific route would win over n2's): owns nothing.
      assert.ok(await claimPut(raw, '10.210.1.0/25', 'half'));
      await raw.client.put(key('half')).value(nodeJson({ ...ghost, name: 'half', ipv4Cidr: cidrParse('10.210.1.0/25'), ipv6Cidr: undefined as never }));
      const [half] = await waitFor('half logged as ignored', async () => refusals('half').length > 0 && refusals('half'), 10_000);
      assert.match(String(half!.reason), /^IPv4AllocCIDR 10\.210\.1\.0\/25: its claim .* owns nothing: it overlaps node "n2"'s claim 10\.210\.1\.0\/24, made earlier/);
      // n2's claim rewritten to z-evil (claims are create-only): it owns nothing, so z-evil gets no route (nor does n2).
      await raw.client.put(`${NODE_CIDRS_PREFIX}/kc/10.210.1.0/24`).value('z-evil');
      await waitFor('n2 withdrawn with its claim rewritten', async () => !held.has('n2') || undefined, 10_000);
      assert.equal(held.has('z-evil'), false, 'z-evil is not taken over a rewritten claim');
      assert.ok(refusals('z-evil').some((l) => /owns nothing: it was rewritten after its creation/.test(String(l.reason))));
      assert.ok(r1.counts.ignored > ignored);
      assert.equal(refusals('ghost').length, ghostLines, 'ghost, taken, is not logged again when the claims change');
      assert.ok(held.has('ghost'));
    } finally {
      await r1.close();
      await wipe(raw);
      await Promise.all([s1, raw].map((s) => s.close({ revoke: true })));
    }
  });

  test('overlapping entries in one list (a restart): only the claimant is routed, whatever the order; unclaimed, neither', async () => {
    const open = () => ClusterSession.open(etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined), log, 10);
    const [s1, raw] = await Promise.all([open(), open()]);
    // Routes as node-routes.ts wants them, over a socket that lists no routes and reaches nothing.
    const nl = new Rtnl({ exchange: async (): Promise<NlMessage[]> => [], sysctlWrite: async () => undefined, close: () => undefined });
    const routes = new NodeRoutes(nl, log);
    const r1 = new NodeRegistry(s1, rules, log);
    try {
      await claimN2(raw);
      const evil = (name: string, v4: string) => nodeJson({ ...peerOf(), name, addresses: ['192.0.2.66'], ipv4Cidr: cidrParse(v4), ipv6Cidr: undefined as never });
      // Around n2 in the list's (key) order: a-evil before it, z-evil after it.
      await raw.client.put(key('a-evil')).value(evil('a-evil', '10.210.1.0/24'));
      await raw.client.put(key('n2')).value(nodeJson(peerOf()));
      await raw.client.put(key('z-evil')).value(evil('z-evil', '10.210.1.0/24'));
      // Two entries over a CIDR nobody claimed.
      await raw.client.put(key('x-one')).value(evil('x-one', '10.210.9.0/24'));
      await raw.client.put(key('y-two')).value(nodeJson({ ...peerOf(), name: 'y-two', addresses: ['192.0.2.77'], ipv4Cidr: cidrParse('10.210.9.0/24'), ipv6Cidr: undefined as never }));
      await r1.start(routes);
      assert.deepEqual(r1.peers().map((p) => p.name), ['n2']);
      assert.deepEqual(routes.wanted().filter((w) => w.dst.startsWith('10.')), [{ dst: '10.210.1.0/24', gateway: '192.0.2.2', node: 'n2' }]);
    } finally {
      await routes.close();
      await r1.close();
      await wipe(raw);
      await Promise.all([s1, raw].map((s) => s.close({ revoke: true })));
    }
  });

  test('this node\'s entry overwritten by another writer (another address, or no lease) is written again', async () => {
    const open = () => ClusterSession.open(etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined), log, 10);
    const [s1, raw] = await Promise.all([open(), open()]);
    const r1 = new NodeRegistry(s1, rules, log);
    try {
      await r1.start({ apply: () => undefined });
      const lease = await s1.nodeLeaseId();
      const restored = async () => {
        const kv = (await raw.client.get(key('n1')).exec()).kvs[0];
        if (!kv || kv.lease !== lease) return undefined;
        const v = JSON.parse(kv.value.toString('utf8')) as { IPAddresses: unknown };
        return JSON.stringify(v.IPAddresses) === JSON.stringify(self.addresses.map((IP) => ({ Type: 'InternalIP', IP }))) || undefined;
      };
      // The review's reproduction: n1's key put with a hostile address, as if n1 lived there.
      await raw.client.put(key('n1')).value(nodeJson({ ...self, addresses: ['192.0.2.66'] }));
      await waitFor('n1\'s own entry (its addresses, its lease) written again over the hostile one', restored, 10_000);
      // The same value without the lease (it would outlive n1): written again under the lease.
      await raw.client.put(key('n1')).value(nodeJson(self));
      await waitFor('n1\'s own entry back under its lease', restored, 10_000);
    } finally {
      await r1.close();
      await Promise.all([s1, raw].map((s) => s.close({ revoke: true })));
    }
  });

  test('a second live host under a node name is refused, naming nodeName; the same host again is not', async () => {
    const open = () => ClusterSession.open(etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined), log, 10);
    const [s1, s2, s3] = await Promise.all([open(), open(), open()]);
    const first = new NodeRegistry(s1, rules, log);
    try {
      await first.start({ apply: () => undefined });
      await assert.rejects(new NodeRegistry(s2, { self: { ...self, addresses: ['192.0.2.99'] }, pools }, log).nameCheck(), /nodeName: node "n1" is already in cluster kc with address 192\.0\.2\.1, 2001:db8::1 \(another host, alive\)/);
      await new NodeRegistry(s3, rules, log).nameCheck();
    } finally {
      await first.close();
      await Promise.all([s1, s2, s3].map((s) => s.close({ revoke: true })));
    }
  });
});
