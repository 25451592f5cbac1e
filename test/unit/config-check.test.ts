import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { configParse } from '../../agent/config.js';
import { configPrepare, configWarnings } from '../../agent/config-preflight.js';
import { DEFAULT_SOCKET, socketDefault } from '../../common/api-client.js';
import { KITNET_BIN } from '../helpers/agent-process.js';

const execFileP = promisify(execFile);

/** `kitnet config check FILE` as an operator runs it, with this environment. */
async function configCheck(file: string, env: NodeJS.ProcessEnv): Promise<{ code: number; out: string; err: string }> {
  return execFileP(process.execPath, [KITNET_BIN, 'config', 'check', file], { env, timeout: 60_000 }).then(
    (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, out: e.stdout ?? '', err: e.stderr ?? '' }),
  );
}

describe('config check', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-configcheck-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KITNET_')));

  test('pools must leave 4 addresses to hand out: /29 and /125 are the smallest', () => {
    assert.doesNotThrow(() => configParse({ ipam: { ipv4Pool: '10.9.0.0/29', ipv6Pool: 'fd00:9::/125' } }));
    assert.throws(() => configParse({ ipam: { ipv4Pool: '10.9.0.0/30' } }), /ipam\.ipv4Pool: 10\.9\.0\.0\/30 is too small/);
    assert.throws(() => configParse({ ipam: { ipv6Pool: 'fd00:9::/126' } }), /ipam\.ipv6Pool: fd00:9::\/126 is too small/);
    assert.throws(() => configParse({ ipam: { ipv4Pool: 'fd00:9::/64' } }), /ipam\.ipv4Pool: must be an IPv4 CIDR/);
  });

  test('addressing.dnsServers: IPv4 and IPv6 addresses, at most 4 of each, anything else named', () => {
    const servers = (dnsServers: string[]) => configParse({ addressing: { dnsServers } }).addressing.dnsServers;
    assert.deepEqual(servers(['10.0.0.53', 'fd00::53']), ['10.0.0.53', 'fd00::53']);
    assert.doesNotThrow(() => servers(['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', 'fd00::1', 'fd00::2', 'fd00::3', 'fd00::4']));
    assert.throws(() => servers(['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5']), /addressing\.dnsServers.*at most 4 IPv4 and 4 IPv6/s);
    assert.throws(() => servers(['fd00::1', 'fd00::2', 'fd00::3', 'fd00::4', 'fd00::5']), /at most 4 IPv4 and 4 IPv6/);
    assert.throws(() => servers(['dns.example']), /addressing\.dnsServers\.0.*IPv4 or IPv6/s);
  });

  test('flows.dropEvents: defaults from the datapath layout, 0 per second = no limit, errors name the key', () => {
    assert.deepEqual(configParse({}).flows.dropEvents, { perSecond: 1000, burst: 500 });
    assert.deepEqual(configParse({ flows: { dropEvents: { perSecond: 0 } } }).flows.dropEvents, { perSecond: 0, burst: 500 });
    assert.throws(() => configParse({ flows: { dropEvents: { perSecond: -1 } } }), /flows\.dropEvents\.perSecond/);
    assert.throws(() => configParse({ flows: { dropEvents: { perSecond: 1.5 } } }), /flows\.dropEvents\.perSecond/);
    assert.throws(() => configParse({ flows: { dropEvents: { burst: 0 } } }), /flows\.dropEvents\.burst/);
    assert.throws(() => configParse({ flows: { dropEvents: { rate: 5 } } }), /flows\.dropEvents.*rate/s);
  });

  test('warns on a socket wider than 0660, pools with host bits set and pools holding a host address', () => {
    const quiet = configParse({ ipam: { ipv4Pool: '10.9.0.0/24', ipv6Pool: 'fd00:9::/64' } });
    assert.deepEqual(configWarnings(quiet, [{ ifname: 'eth0', address: '192.0.2.1' }, { ifname: 'lo', address: '::1' }]), []);
    const loud = configParse({ api: { socketMode: 0o666 }, ipam: { ipv4Pool: '10.9.0.7/24', ipv6Pool: 'fd00:9::/64' } });
    const w = configWarnings(loud, [{ ifname: 'eth1', address: '10.9.0.1' }, { ifname: 'eth2', address: 'fd00:9::5' }]);
    assert.deepEqual(
      w.map((x) => x.key),
      ['api.socketMode', 'ipam.ipv4Pool', 'ipam.ipv4Pool', 'ipam.ipv6Pool'],
    );
    assert.match(w[0]!.message, /0o666 is wider than 0o660/);
    assert.match(w[1]!.message, /10\.9\.0\.7\/24 has host bits set: the pool is 10\.9\.0\.0\/24/);
    assert.match(w[2]!.message, /contains 10\.9\.0\.1, an address of this host \(eth1\)/);
    assert.match(w[3]!.message, /contains fd00:9::5, an address of this host \(eth2\)/);
  });

  test('checks the file itself; with KITNET_* set, also the merged result, labelled', async () => {
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, `stateDir: ${join(dir, 'state')}\napi: { socket: ${join(dir, 's.sock')}, socketMode: 0o666 }\nipam: { ipv4Pool: 10.9.0.0/24 }\n`);
    const plain = await configCheck(file, env);
    assert.equal(plain.code, 0, plain.err);
    assert.match(plain.out, /ok\.yaml: OK/);
    assert.match(plain.err, /warning: .*ok\.yaml: api\.socketMode: 0o666 is wider than 0o660/);
    // The environment overrides the pool with a bad one: the file is fine, the merge is not, and the message says which.
    const merged = await configCheck(file, { ...env, KITNET_IPV4_POOL: '10.9.0.0/31' });
    assert.notEqual(merged.code, 0);
    assert.match(merged.out, /^.*ok\.yaml: OK/m);
    assert.match(merged.err, /with the environment \(KITNET_IPV4_POOL\): .*ok\.yaml: ipam\.ipv4Pool: 10\.9\.0\.0\/31 is too small/);
  });

  test('cluster: without it nothing changes; with it every key is checked and named', () => {
    assert.equal(configParse({}).cluster, undefined);
    const ok = { name: 'kit-1', id: 7, etcd: { endpoints: ['http://127.0.0.1:2379'] } };
    assert.deepEqual(configParse({ cluster: ok }).cluster, { ...ok, leaseTTLSeconds: 60, ipam: { ipv4MaskSize: 24, ipv6MaskSize: 112 }, autoDirectNodeRoutes: true, heartbeatSeconds: 60, peers: [] });
    assert.equal(configParse({ cluster: { ...ok, nodeIP: 'fd00::5' } }).cluster?.nodeIP, 'fd00::5');
    const bad: Array<[unknown, RegExp]> = [
      [{ ...ok, name: 'Kit_1' }, /cluster\.name: lower-case letters/],
      [{ ...ok, name: 'a'.repeat(33) }, /cluster\.name: at most 32 characters/],
      [{ ...ok, name: 'kit-' }, /cluster\.name: lower-case letters/],
      [{ ...ok, id: 0 }, /cluster\.id: must be 1-255/],
      [{ ...ok, id: 256 }, /cluster\.id: must be 1-255/],
      [{ ...ok, nodeIP: '10.0.0.256' }, /cluster\.nodeIP: must be an IPv4 or IPv6 address/],
      [{ ...ok, etcd: { endpoints: [] } }, /cluster\.etcd\.endpoints: give at least one etcd client URL/],
      [{ ...ok, etcd: { endpoints: ['127.0.0.1:2379'] } }, /cluster\.etcd\.endpoints\.0: "127\.0\.0\.1:2379" is not a URL/],
      [{ ...ok, etcd: { endpoints: ['unix://h:2379'] } }, /cluster\.etcd\.endpoints\.0: .*must be http\(s\):\/\/host:port/],
      [{ ...ok, etcd: { endpoints: ['http://h:2379/v3?x=1'] } }, /cluster\.etcd\.endpoints\.0: .*nothing after the port/],
      [{ ...ok, etcd: { endpoints: ['https://h:2379'] } }, /cluster\.etcd\.tls: required for https:\/\/ endpoints/],
      [{ ...ok, etcd: { endpoints: ['http://h:2379'], tls: { ca: '/ca.pem' } } }, /cluster\.etcd\.endpoints: with cluster\.etcd\.tls set, every endpoint must be https/],
      [{ ...ok, etcd: { endpoints: ['https://h:2379'], tls: { ca: '/ca.pem', cert: '/c.pem' } } }, /cluster\.etcd\.tls\.key: required with cluster\.etcd\.tls\.cert/],
      [{ ...ok, etcd: { endpoints: ['https://h:2379'], tls: { ca: '/ca.pem', key: '/k.pem' } } }, /cluster\.etcd\.tls\.cert: required with cluster\.etcd\.tls\.key/],
      [{ ...ok, extra: 1 }, /cluster: Unrecognized key/],
      [{ name: 'x', etcd: ok.etcd }, /cluster\.id: /],
      [{ ...ok, heartbeatSeconds: 0 }, /cluster\.heartbeatSeconds: /],
      [{ ...ok, heartbeatSeconds: 61 }, /cluster\.heartbeatSeconds: at most 60/],
      [{ ...ok, peers: [{ name: 'kit-1', id: 8, etcd: ok.etcd }] }, /cluster\.peers\.0\.name: "kit-1" is this cluster's own name/],
      [{ ...ok, peers: [{ name: 'c1', id: 7, etcd: ok.etcd }] }, /cluster\.peers\.0\.id: 7 is this cluster's own id/],
      [{ ...ok, peers: [{ name: 'c1', id: 3, etcd: ok.etcd }, { name: 'c1', id: 4, etcd: ok.etcd }] }, /cluster\.peers\.1\.name: "c1" is given to two peers/],
      [{ ...ok, peers: [{ name: 'c1', id: 3, etcd: ok.etcd }, { name: 'c2', id: 3, etcd: ok.etcd }] }, /cluster\.peers\.1\.id: 3 is given to two peers/],
      [{ ...ok, peers: [{ name: 'C_1', id: 3, etcd: ok.etcd }] }, /cluster\.peers\.0\.name: lower-case letters/],
      [{ ...ok, peers: [{ name: 'c1', id: 300, etcd: ok.etcd }] }, /cluster\.peers\.0\.id: must be 1-255/],
      [{ ...ok, peers: [{ name: 'c1', id: 3 }] }, /cluster\.peers\.0\.etcd: /],
      [{ ...ok, peers: [{ name: 'c1', id: 3, etcd: { endpoints: ['https://h:2379'] } }] }, /cluster\.peers\.0\.etcd\.tls: required for https/],
      [{ ...ok, peers: [{ name: 'c1', id: 3, etcd: ok.etcd, extra: 1 }] }, /cluster\.peers\.0: Unrecognized key/],
    ];
    const peer = { name: 'cilium1', id: 3, etcd: { endpoints: ['http://127.0.0.1:2380'] } };
    assert.deepEqual(configParse({ cluster: { ...ok, peers: [peer] } }).cluster?.peers, [peer]);
    for (const [cluster, re] of bad) assert.throws(() => configParse({ cluster }), re, JSON.stringify(cluster));
  });

  test('cluster.etcd.tls files are read and checked as the agent would (config check refuses them too)', async () => {
    const cert = join(dir, 'etcd-client.pem');
    const key = join(dir, 'etcd-client.key');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=kitnet'], { stdio: 'ignore' });
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate\n');
    const base = { stateDir: join(dir, 'state'), api: { socket: join(dir, 'c.sock') }, bpfPinRoot: '/sys/fs/bpf' };
    const cluster = (tls: Record<string, string>) => ({ ...base, cluster: { name: 'k', id: 1, etcd: { endpoints: ['https://127.0.0.1:2379'], tls } } });
    const good = await configPrepare(configParse(cluster({ ca: cert, cert, key })));
    assert.ok(good.etcdTls?.ca.length && good.etcdTls.cert && good.etcdTls.key);
    await assert.rejects(configPrepare(configParse(cluster({ ca: garbage }))), /cluster\.etcd\.tls\.ca: .*garbage\.pem is not a PEM certificate/);
    await assert.rejects(configPrepare(configParse(cluster({ ca: join(dir, 'nope.pem') }))), /cluster\.etcd\.tls\.ca: cannot read .*nope\.pem: ENOENT/);
    await assert.rejects(configPrepare(configParse(cluster({ ca: cert, cert, key: cert }))), /cluster\.etcd\.tls\.key: .* is not a PEM private key/);
    await assert.rejects(configPrepare(configParse(cluster({ ca: cert, cert: key, key }))), /cluster\.etcd\.tls\.cert: .* is not a PEM certificate/);
    // A peer's TLS files likewise, named by the peer's index.
    const withPeer = (tls: Record<string, string>) => {
      const c = cluster({ ca: cert, cert, key });
      return { ...c, cluster: { ...c.cluster, peers: [{ name: 'cilium1', id: 3, etcd: { endpoints: ['https://127.0.0.1:2380'], tls } }] } };
    };
    assert.ok((await configPrepare(configParse(withPeer({ ca: cert })))).peerEtcdTls.get('cilium1')?.ca.length);
    await assert.rejects(configPrepare(configParse(withPeer({ ca: garbage }))), /cluster\.peers\.0\.etcd\.tls\.ca: .*garbage\.pem is not a PEM certificate/);
    const file = join(dir, 'cluster.yaml');
    writeFileSync(file, `${JSON.stringify(cluster({ ca: garbage }))}\n`);
    const checked = await configCheck(file, env);
    assert.notEqual(checked.code, 0);
    assert.match(checked.err, /cluster\.etcd\.tls\.ca: .*garbage\.pem is not a PEM certificate/);
  });

  test('the CLI finds the agent by KITNET_SOCKET, else KITNET_API_SOCKET (the agent\'s variable), else the default', () => {
    assert.equal(socketDefault({}), DEFAULT_SOCKET);
    assert.equal(socketDefault({ KITNET_API_SOCKET: '/run/a.sock' }), '/run/a.sock');
    assert.equal(socketDefault({ KITNET_SOCKET: '/run/s.sock', KITNET_API_SOCKET: '/run/a.sock' }), '/run/s.sock');
    assert.equal(socketDefault({ KITNET_SOCKET: '', KITNET_API_SOCKET: '/run/a.sock' }), '/run/a.sock');
  });

  test('kitnet status reaches the agent through KITNET_API_SOCKET', async () => {
    const socket = join(dir, 'nobody.sock');
    const r = await execFileP(process.execPath, [KITNET_BIN, 'status'], { env: { ...env, KITNET_API_SOCKET: socket }, timeout: 60_000 }).catch((e: { stderr: string }) => e);
    assert.match((r as { stderr: string }).stderr, new RegExp(`cannot reach the kitnet agent at ${socket.replace(/[.]/g, '\\.')}`));
  });
});
