// The exact-match hashes in front of the LPM tries (`ipcache_exact`, `policy_exact`; bpf/include/maps.h,
// bpf/maps/exact.ts), on crafted packets (BPF_PROG_TEST_RUN), IPv4 and IPv6: an entry answered by the
// hash and the same entry answered by the trie alone give the same identity and verdict; CIDRs stay in
// the trie; an exact deny beats an allow found by the other lookup (the identity-specific and the
// identity-0 one), whichever map answers each, also where `policy_wild` lets a hash miss skip the trie;
// every write keeps the hash equal to the trie's full-length entries and `policy_wild` equal to its
// counts of shorter ones; a load fills empty maps (upgrade) and repairs stale ones from the trie.
// Real kernel, temporary pin root; the skb appears on `lo` (ifindex 1) with this test's own maps.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { KitnetDatapath, PolicyEntryFields } from '../../bpf/index.js';
import { DROP_REASON, datapathLoad, datapathUnpinAll } from '../../bpf/index.js';
import { structEncode } from '../../bpf/layout.js';
import { IPCACHE_KEY, IPCACHE_VALUE, POLICY_VALUE, TCX_DROP, TCX_PASS } from '../../bpf/layout.gen.js';
import { ConfigMap } from '../../bpf/maps/config.js';
import { IpcacheMap, ipcacheKeyDecode, ipcacheKeyEncode } from '../../bpf/maps/ipcache.js';
import { BpfMap } from '../../bpf/maps/map.js';
import { PolicyMap } from '../../bpf/maps/policy.js';
import { policyKeyWrite, policyWildKey } from '../../bpf/maps/policy-key.js';
import { native } from '../../common/native.js';
import { ETH_P_IP, ETH_P_IPV6, EventSink, TCP, eth, ipv4, ipv6, tcp } from './bpf-helpers.js';

const LO = 1;
const EP = { endpointId: 23, identity: 400, ipv4: '10.249.0.2', ipv6: 'fd00:249::2', mac: '02:00:00:00:00:02', flags: 0 };
const CLIENT = 401;
const NET = 402; // identity of the CIDRs 10.248.0.0/16, fd00:248::/32
const ADDR = { 4: { host: '10.248.1.1', inNet: '10.248.2.2', hostPrefix: 32, net: '10.248.0.0/16' }, 6: { host: 'fd00:248::1:1', inNet: 'fd00:248::2:2', hostPrefix: 128, net: 'fd00:248::/32' } } as const;

type Entry = Omit<PolicyEntryFields, 'deny' | 'direction'> & { deny?: boolean };

/** A SYN from `src` to the endpoint's port 443, as to_workload sees it. */
function synIn(family: 4 | 6, src: string): Buffer {
  return family === 4
    ? eth(ETH_P_IP, ipv4(src, EP.ipv4, 6, tcp(41000, 443, TCP.SYN)), '02:00:00:00:00:01', EP.mac)
    : eth(ETH_P_IPV6, ipv6(src, EP.ipv6, 6, tcp(41000, 443, TCP.SYN)), '02:00:00:00:00:01', EP.mac);
}

describe('exact-match hashes in front of the LPM tries (BPF_PROG_TEST_RUN)', { timeout: 120_000 }, () => {
  const pinRoot = `/sys/fs/bpf/kitnet-test-exact-${process.pid}`;
  let dp: KitnetDatapath;
  let sink: EventSink;
  const fds: number[] = [];
  let ipHash: BpfMap;
  let polHash: BpfMap;
  let polWild: BpfMap;
  let config: ConfigMap;
  let ipMaps: IpcacheMap;
  let polMaps: PolicyMap;

  /** The pinned map itself, bypassing the writers (to empty or spoil the hash on purpose). */
  function pinned(name: string): BpfMap {
    const fd = native().objGet(join(pinRoot, 'maps', name));
    fds.push(fd);
    return new BpfMap(name, fd);
  }

  before(async () => {
    await datapathUnpinAll(pinRoot);
    dp = await datapathLoad({ pinRoot });
    sink = new EventSink(dp);
    dp.endpointUpsert(LO, EP);
    ipHash = pinned('ipcache_exact');
    polHash = pinned('policy_exact');
    polWild = pinned('policy_wild');
    config = new ConfigMap(pinned('config'));
    ipMaps = new IpcacheMap(pinned('ipcache'), ipHash);
    polMaps = new PolicyMap(pinned('policy'), polHash, polWild);
    assert.equal(dp.exactComplete(), true, 'the load filled the maps and said so');
  });
  after(async () => {
    sink?.close();
    for (const fd of fds) native().fdClose(fd);
    dp?.close();
    await datapathUnpinAll(pinRoot);
  });
  beforeEach(() => {
    dp.policyClear();
    for (const [cidr] of dp.ipcacheList()) dp.ipcacheDelete(cidr);
    dp.conntrackFlush();
    exactRestore();
    assert.deepEqual(dp.exactCheck(), []);
    assert.equal([...ipHash.keys()].length + [...polHash.keys()].length + [...polWild.keys()].length, 0, 'hashes empty with empty tries');
  });

  function setPolicy(entries: Entry[]): void {
    dp.policyClear(EP.endpointId);
    dp.policyApply(EP.endpointId, entries.map((e) => ({ op: 'upsert' as const, entry: { direction: 'ingress' as const, deny: false, ...e } })));
  }

  /** Verdict ('PASS' or the drop reason) and the source identity the datapath reported for a SYN. */
  async function syn(family: 4 | 6, src: string): Promise<{ verdict: 'PASS' | number; identity: number | undefined }> {
    dp.conntrackFlush();
    const { retval } = dp.testRun('to_workload', synIn(family, src), { ifindex: LO });
    const events = await sink.settle();
    assert.equal(events.length, 1, 'one event per SYN');
    const e = events[0]!;
    if (retval === TCX_PASS) return { verdict: 'PASS', identity: e.srcIdentity };
    assert.equal(retval, TCX_DROP);
    return { verdict: e.dropReason, identity: e.srcIdentity };
  }

  function policyHashKey(e: Entry): Buffer {
    const k = Buffer.alloc(16);
    policyKeyWrite(k, 0, EP.endpointId, { direction: 'ingress', deny: false, ...e });
    return k;
  }

  /**
   * The state right after an upgrade created the maps: all empty, not yet trusted (CFG_F_EXACT_COMPLETE
   * clear), so every lookup is the trie's alone.
   */
  function hashesEmpty(): void {
    config.exactCompleteSet(false);
    for (const m of [ipHash, polHash, polWild]) for (const k of [...m.keys()]) m.delete(k);
  }

  /** What the loader does: fill the maps from the tries, then trust them. */
  function exactRestore(): void {
    ipMaps.exact!.sync();
    polMaps.sync();
    config.exactCompleteSet(true);
  }

  for (const family of [4, 6] as const) {
    const a = ADDR[family];

    test(`IPv${family}: a host entry gives the same identity and verdict from the hash and from the trie alone; CIDRs stay in the trie`, async () => {
      dp.ipcacheUpsert(`${a.host}/${a.hostPrefix}`, { identity: CLIENT, hostId: 0 });
      dp.ipcacheUpsert(a.net, { identity: NET, hostId: 0 });
      setPolicy([{ identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 }]);
      assert.ok(ipHash.lookup(ipcacheKeyEncode(`${a.host}/${a.hostPrefix}`)), 'host entry in the hash');
      assert.equal(ipHash.lookup(ipcacheKeyEncode(a.net)), undefined, 'CIDR not in the hash');
      assert.ok(polHash.lookup(policyHashKey({ identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 })), 'full-length policy entry in the hash');

      assert.equal([...polWild.keys()].length, 0, 'no shorter policy entries, nothing in policy_wild');
      const viaHash = await syn(family, a.host);
      assert.deepEqual(viaHash, { verdict: 'PASS', identity: CLIENT });
      // the CIDR's other addresses: trie only, policy denies NET
      assert.deepEqual(await syn(family, a.inNet), { verdict: DROP_REASON.POLICY_DENIED, identity: NET });

      hashesEmpty();
      assert.equal(dp.exactCheck()!.length, 2, 'the check sees the emptied hashes');
      assert.deepEqual(await syn(family, a.host), viaHash, 'the trie alone: same identity, same verdict');
      assert.deepEqual(await syn(family, a.inNet), { verdict: DROP_REASON.POLICY_DENIED, identity: NET });
      exactRestore();
      assert.deepEqual(dp.exactCheck(), []);
      assert.deepEqual(await syn(family, a.host), viaHash, 'filled again: same identity, same verdict');

      // a deleted host entry leaves both maps: the CIDR answers
      dp.ipcacheDelete(`${a.host}/${a.hostPrefix}`);
      assert.deepEqual(await syn(family, a.host), { verdict: DROP_REASON.POLICY_DENIED, identity: NET });
    });

    test(`IPv${family}: an exact deny beats an allow found by the other lookup, whichever map answers each`, async () => {
      dp.ipcacheUpsert(`${a.host}/${a.hostPrefix}`, { identity: CLIENT, hostId: 0 });
      const cases: Array<{ what: string; entries: Entry[] }> = [
        {
          // a (identity CLIENT): exact deny, from the hash; b (identity 0): allow for every TCP port, trie only
          what: 'exact deny for the identity, allow-all-ports for any identity',
          entries: [
            { identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16, deny: true },
            { identity: 0, protocol: 6, port: 0, portPrefixLen: 0 },
          ],
        },
        {
          // a: allow for a port range, trie only; b: exact deny, from the hash
          what: 'exact deny for any identity, port-range allow for the identity',
          entries: [
            { identity: CLIENT, protocol: 6, port: 0, portPrefixLen: 6 },
            { identity: 0, protocol: 6, port: 443, portPrefixLen: 16, deny: true },
          ],
        },
        {
          // a: exact allow, from the hash; b: exact deny, from the hash
          what: 'exact allow for the identity, exact deny for any identity',
          entries: [
            { identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 },
            { identity: 0, protocol: 6, port: 443, portPrefixLen: 16, deny: true },
          ],
        },
      ];
      for (const c of cases) {
        setPolicy(c.entries);
        assert.deepEqual(dp.exactCheck(), [], c.what);
        // the shorter entry's triple is in policy_wild, so the hash miss of its lookup still asks the trie
        const shorter = c.entries.filter((e) => e.portPrefixLen < 16).map((e) => policyWildKey(policyHashKey(e)));
        assert.deepEqual([...polWild.keys()].map((k) => k.toString('hex')).sort(), shorter.map((k) => k.toString('hex')).sort(), c.what);
        assert.deepEqual(await syn(family, a.host), { verdict: DROP_REASON.POLICY_DENY, identity: CLIENT }, `${c.what}: hash in front`);
        hashesEmpty();
        assert.deepEqual(await syn(family, a.host), { verdict: DROP_REASON.POLICY_DENY, identity: CLIENT }, `${c.what}: trie alone`);
        exactRestore();
      }
      // and without the denies the same lookups allow: through the hash, or through policy_wild and the trie
      for (const allow of [
        { identity: 0, protocol: 6, port: 443, portPrefixLen: 16 },
        { identity: CLIENT, protocol: 6, port: 0, portPrefixLen: 6 },
        { identity: 0, protocol: 6, port: 0, portPrefixLen: 0 },
        { identity: CLIENT, protocol: 0, port: 0, portPrefixLen: 0 },
      ]) {
        setPolicy([allow]);
        assert.deepEqual(await syn(family, a.host), { verdict: 'PASS', identity: CLIENT }, JSON.stringify(allow));
      }
    });
  }

  test('every write keeps the hashes equal to the tries\' full-length entries', () => {
    const e443: Entry = { identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 };
    const e80: Entry = { identity: CLIENT, protocol: 6, port: 80, portPrefixLen: 16 };
    const range: Entry = { identity: CLIENT, protocol: 17, port: 0, portPrefixLen: 8 };
    const up = (e: Entry, deny = false) => ({ op: 'upsert' as const, entry: { direction: 'ingress' as const, ...e, deny } });
    const del = (e: Entry) => ({ op: 'delete' as const, entry: { direction: 'ingress' as const, ...e, deny: false } });
    // one batch: upsert then delete the same key, delete then upsert, a value change, a trie-only entry
    dp.policyApply(EP.endpointId, [up(e443), up(e80)]);
    const r = dp.policyApply(EP.endpointId, [del(e443), up(e443, true), up(e80), del(e80), up(range), del({ ...e80, port: 81 })]);
    assert.deepEqual(r, { upserted: 3, deleted: 2, missing: 1 });
    assert.deepEqual(dp.exactCheck(), []);
    assert.deepEqual([...polHash.keys()].map((k) => k.toString('hex')), [policyHashKey(e443).toString('hex')]);
    const v = polHash.lookup(policyHashKey(e443))!;
    assert.equal(v.readUInt8(POLICY_VALUE.fields.flags.offset), 1, 'the deny value, as in the trie');
    assert.equal(dp.policyList(EP.endpointId).length, 2, 'the trie keeps every entry');
    // policy_wild counts the shorter entries per (endpoint, identity, direction)
    const wildKey = policyWildKey(policyHashKey(range));
    assert.equal(polWild.lookup(wildKey)?.readUInt32LE(0), 1);
    dp.policyApply(EP.endpointId, [up(range), up({ ...range, port: 256 }), up({ ...e80, protocol: 0, port: 0, portPrefixLen: 0 })]);
    assert.equal(polWild.lookup(wildKey)?.readUInt32LE(0), 3, 'a replaced entry counts once');
    dp.policyApply(EP.endpointId, [del(range), del(range)]);
    assert.equal(polWild.lookup(wildKey)?.readUInt32LE(0), 2, 'a missing delete does not count');
    assert.deepEqual(dp.exactCheck(), []);

    dp.ipcacheUpsert('10.248.3.3/32', { identity: CLIENT, hostId: 0 });
    dp.ipcacheUpsert('10.248.3.3/32', { identity: NET, hostId: 0 });
    dp.ipcacheUpsert('fd00:248::3:3/128', { identity: CLIENT, hostId: 0 });
    dp.ipcacheUpsert('10.248.4.0/24', { identity: NET, hostId: 0 });
    dp.ipcacheDelete('fd00:248::3:3/128');
    assert.deepEqual(dp.exactCheck(), []);
    assert.equal([...ipHash.keys()].length, 1);

    dp.policyClear(EP.endpointId);
    assert.deepEqual(dp.exactCheck(), []);
    assert.equal([...polHash.keys()].length + [...polWild.keys()].length, 0);
  });

  test('a batch of ipcache writes (the DNS proxy\'s new addresses) lands in both maps as one-by-one writes do', async () => {
    dp.ipcacheUpsert('10.248.5.5/32', { identity: NET, hostId: 0 });
    dp.ipcacheUpsertMany([
      ['10.248.5.5/32', { identity: CLIENT, hostId: 0 }], // replaces a value
      ['10.248.6.6/32', { identity: CLIENT, hostId: 0 }],
      ['fd00:248::6:6/128', { identity: CLIENT, hostId: 7 }],
      ['10.248.7.0/24', { identity: NET, hostId: 0 }], // trie only
      ['ipblock:10.248.8.0/24', { identity: NET, hostId: 0 }], // trie only
    ]);
    assert.deepEqual(dp.exactCheck(), []);
    assert.deepEqual(
      [...ipHash.keys()].map((k) => ipcacheKeyDecode(k)).sort(),
      ['10.248.5.5/32', '10.248.6.6/32', 'fd00:248::6:6/128'],
    );
    assert.deepEqual(
      dp.ipcacheList().sort(([a], [b]) => a.localeCompare(b)),
      [
        ['10.248.5.5/32', { identity: CLIENT, hostId: 0 }],
        ['10.248.6.6/32', { identity: CLIENT, hostId: 0 }],
        ['10.248.7.0/24', { identity: NET, hostId: 0 }],
        ['fd00:248::6:6/128', { identity: CLIENT, hostId: 7 }],
        ['ipblock:10.248.8.0/24', { identity: NET, hostId: 0 }],
      ],
    );
    setPolicy([{ identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 }]);
    assert.deepEqual(await syn(4, '10.248.5.5'), { verdict: 'PASS', identity: CLIENT }, 'the replaced value, from the hash');
    assert.deepEqual(await syn(6, 'fd00:248::6:6'), { verdict: 'PASS', identity: CLIENT });
    dp.ipcacheUpsertMany([]);
    assert.deepEqual(dp.exactCheck(), []);
  });

  test('a batch the trie refuses half-way leaves no old value in the hash over a new one in the trie', () => {
    // A trie with room for two entries (and its hash), so the third entry of the batch fails after the
    // first has replaced a value the hash held.
    const small = (name: string, type: string, flags: number) => {
      const path = join(pinRoot, 'test-small', name);
      execFileSync('bpftool', ['map', 'create', path, 'type', type, 'key', String(IPCACHE_KEY.size), 'value', String(IPCACHE_VALUE.size), 'entries', '2', 'name', name, 'flags', String(flags)]);
      const fd = native().objGet(path);
      fds.push(fd);
      return new BpfMap(name, fd);
    };
    mkdirSync(join(pinRoot, 'test-small'), { recursive: true });
    const trie = small('small_trie', 'lpm_trie', 1 /* BPF_F_NO_PREALLOC */);
    const ipc = new IpcacheMap(trie, small('small_hash', 'hash', 0));
    ipc.upsert('10.248.9.1/32', { identity: NET, hostId: 0 });
    assert.throws(() =>
      ipc.upsertMany([
        ['10.248.9.1/32', { identity: CLIENT, hostId: 0 }],
        ['10.248.9.2/32', { identity: CLIENT, hostId: 0 }],
        ['10.248.9.3/32', { identity: CLIENT, hostId: 0 }], // no room
      ]),
    );
    const key = ipcacheKeyEncode('10.248.9.1/32');
    const inTrie = trie.lookup(key);
    assert.ok(inTrie, 'the first entry is in the trie');
    const inHash = ipc.exact!.hash.lookup(key);
    assert.ok(inHash === undefined || inHash.equals(inTrie), `the hash holds ${inHash?.toString('hex')} over the trie's ${inTrie.toString('hex')}`);
    assert.deepEqual(ipc.exact!.diff().extra, [], 'hash ⊆ trie');
  });

  test('a load fills an empty hash from the trie and repairs a stale one (upgrade, downgrade and back)', async () => {
    setPolicy([
      { identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 },
      { identity: NET, protocol: 6, port: 443, portPrefixLen: 16 },
      { identity: 0, protocol: 0, port: 0, portPrefixLen: 0 },
    ]);
    dp.ipcacheUpsert('10.248.5.5/32', { identity: CLIENT, hostId: 0 });
    dp.ipcacheUpsert('10.248.0.0/16', { identity: NET, hostId: 0 });
    hashesEmpty();
    // a stale entry the trie does not have, and a full-length key whose value differs from the trie's
    polHash.update(policyHashKey({ identity: 999, protocol: 6, port: 22, portPrefixLen: 16 }), structEncode(POLICY_VALUE, { flags: 0 }));
    polHash.update(policyHashKey({ identity: NET, protocol: 6, port: 443, portPrefixLen: 16 }), structEncode(POLICY_VALUE, { flags: 1 }));
    // a stale policy_wild count (the trie's identity-0 any-protocol entry is missing from it after hashesEmpty)
    polWild.update(policyWildKey(policyHashKey({ identity: 999, protocol: 6, port: 22, portPrefixLen: 16 })), Buffer.from([1, 0, 0, 0]));
    assert.equal(dp.exactCheck()!.length, 6);

    const unsynced = await datapathLoad({ pinRoot, exactSync: false });
    try {
      assert.equal(unsynced.exactRepaired, undefined);
      assert.equal(unsynced.exactCheck()!.length, 6, 'exactSync: false leaves the maps as they are');
      assert.equal(unsynced.exactComplete(), false, 'and does not trust them');
    } finally {
      unsynced.close();
    }
    const again = await datapathLoad({ pinRoot });
    try {
      assert.deepEqual(again.exactRepaired, { ipcache: { added: 1, removed: 0 }, policy: { added: 2, removed: 1 }, policyWild: { added: 1, removed: 1 } });
      assert.deepEqual(again.exactCheck(), []);
      assert.equal(again.exactComplete(), true);
    } finally {
      again.close();
    }
    assert.deepEqual(dp.exactCheck(), [], 'the same pinned maps');
    assert.deepEqual(await syn(4, '10.248.5.5'), { verdict: 'PASS', identity: CLIENT });
  });
});
