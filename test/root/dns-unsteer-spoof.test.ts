// DNS steering's way back (bpf/include/dns.h, dns_unsteer) with real traffic: a steered workload's
// query reaches the "proxy" (a socket on the host, at the proxy's host-local address and port), whose
// answer reaches the workload from the resolver it asked. A neighbour on an uplink sends a datagram
// with the proxy's address and port as its source to the workload's socket, which the host forwards
// (IPv6 forwards a source the host owns; IPv4 does with accept_local on the uplink): it must be
// dropped as a spoofed source, never made to look like the resolver's answer. Real kernel, on veth + tcx
// and on a netkit L2 pair (the lab VM; skipped where the kernel has no netkit), temporary pin root,
// names with the np prefix; everything is removed after, however the test ended.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import type { KitnetDatapath } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll, DROP_REASON } from '../../bpf/index.js';
import { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC, IDENTITY_HOST } from '../../bpf/layout.gen.js';
import { EventSink, policyAllowAll, sh, shOk } from './bpf-helpers.js';
import { waitFor } from '../helpers/sys.js';

const tag = (process.pid % 100000).toString(36);
const sub = process.pid % 250;
const hex = sub.toString(16);
const A = {
  hostW4: `10.247.${sub}.1`, ep4: `10.247.${sub}.2`, hostW6: `fd00:247:${hex}::1`, ep6: `fd00:247:${hex}::2`,
  hostU4: `10.246.${sub}.1`, att4: `10.246.${sub}.2`, hostU6: `fd00:246:${hex}::1`, att6: `fd00:246:${hex}::2`,
  res4: `10.245.${sub}.53`, res6: `fd00:245:${hex}::53`,
  proxy4: `169.254.77.${1 + sub}`, proxy6: `fd00:6e70:${hex}::53`,
};
const PROXY_PORT = 40053;
const ENDPOINT_ID = 91;

/** The workload's resolver client: one query to RESOLVER:53 from PORT, then every datagram it gets, as JSON lines. */
const CLIENT_PY = `
import json, socket, sys
res, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in res else socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('', port))
s.sendto(b'query', (res, 53))
while True:
    m, a = s.recvfrom(4096)
    print(json.dumps({'from': a[0], 'port': a[1], 'data': m.decode()}), flush=True)
`;
/** The uplink neighbour: a datagram from the proxy's address and port (its own in its namespace) to the workload. */
const SPOOF_PY = `
import socket, sys
src, dst, port, proxy_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ':' in src else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, proxy_port))
s.sendto(b'spoof', (dst, port))
`;

type Got = { from: string; port: number; data: string };

for (const kind of ['tcx', 'netkit'] as const) {
  const k = kind === 'tcx' ? 'v' : 'n';
  const NS_W = `np-w${k}-${tag}`;
  const NS_U = `np-u${k}-${tag}`;
  const HOST_W = `npw${k}${tag}h`;
  const PEER_W = `npw${k}${tag}p`;
  const HOST_U = `npu${k}${tag}h`;
  const workloadDevice = kind === 'tcx' ? ['type', 'veth', 'peer', 'name', PEER_W] : ['type', 'netkit', 'mode', 'l2', 'peer', 'name', PEER_W];
  const hasDevice = kind === 'tcx' || shOk('sh', ['-c', `ip link add ${HOST_W} ${workloadDevice.join(' ')} && ip link del ${HOST_W}`]);
  const skip = hasDevice || process.env.KITNET_EXPECT_NETKIT === '1' ? false : 'no netkit in this kernel (the lab VM has it)';

  describe(`DNS unsteering: only the host's own answers from the proxy's address (${kind === 'tcx' ? 'veth + tcx' : 'netkit L2'}, a forwarding host, real traffic)`, { timeout: 120_000, skip }, () => {
    const pinRoot = `/sys/fs/bpf/kitnet-test-npdns${k}-${process.pid}`;
    let dp: KitnetDatapath | undefined;
    let sink: EventSink | undefined;
    const children: ChildProcess[] = [];
    const sockets: Socket[] = [];

    const cleanup = async () => {
      for (const c of children.splice(0)) c.kill('SIGKILL');
      for (const s of sockets.splice(0)) s.close();
      sink?.close();
      sink = undefined;
      dp?.close();
      dp = undefined;
      for (const ns of [NS_W, NS_U]) shOk('ip', ['netns', 'del', ns]);
      for (const dev of [HOST_W, HOST_U]) shOk('ip', ['link', 'del', dev]);
      shOk('ip', ['addr', 'del', `${A.proxy4}/32`, 'dev', 'lo']);
      shOk('ip', ['-6', 'addr', 'del', `${A.proxy6}/128`, 'dev', 'lo']);
      await datapathUnpinAll(pinRoot);
    };

    const pair = (host: string, device: string[], peer: string, ns: string, host4: string, peer4: string, host6: string, peer6: string) => {
      sh('ip', ['netns', 'add', ns]);
      sh('ip', ['link', 'add', host, ...device]);
      sh('ip', ['link', 'set', peer, 'netns', ns]);
      sh('ip', ['addr', 'add', `${host4}/24`, 'dev', host]);
      sh('ip', ['-6', 'addr', 'add', `${host6}/64`, 'dev', host, 'nodad']);
      sh('ip', ['link', 'set', host, 'up']);
      const inNs = (...args: string[]) => sh('ip', ['netns', 'exec', ns, ...args]);
      inNs('ip', 'link', 'set', 'lo', 'up');
      inNs('ip', 'addr', 'add', `${peer4}/24`, 'dev', peer);
      inNs('ip', '-6', 'addr', 'add', `${peer6}/64`, 'dev', peer, 'nodad');
      inNs('ip', 'link', 'set', peer, 'up');
      inNs('ip', 'route', 'add', 'default', 'via', host4);
      inNs('ip', '-6', 'route', 'add', 'default', 'via', host6);
    };

    before(async () => {
      await cleanup();
      // forwarding on, as the agent keeps it (netkit/sysctl.ts; already so on a kitnet host)
      sh('sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
      pair(HOST_W, workloadDevice, PEER_W, NS_W, A.hostW4, A.ep4, A.hostW6, A.ep6);
      pair(HOST_U, ['type', 'veth', 'peer', 'name', `${HOST_U}p`], `${HOST_U}p`, NS_U, A.hostU4, A.att4, A.hostU6, A.att6);
      // the proxy's addresses: the host's own (on lo, as the agent puts them), and the neighbour's in its namespace
      sh('ip', ['addr', 'add', `${A.proxy4}/32`, 'dev', 'lo']);
      sh('ip', ['-6', 'addr', 'add', `${A.proxy6}/128`, 'dev', 'lo', 'nodad']);
      sh('ip', ['netns', 'exec', NS_U, 'ip', 'addr', 'add', `${A.proxy4}/32`, 'dev', 'lo']);
      sh('ip', ['netns', 'exec', NS_U, 'ip', '-6', 'addr', 'add', `${A.proxy6}/128`, 'dev', 'lo', 'nodad']);
      // IPv4 drops a source the host owns as a martian, unless the receiving device accepts local sources
      sh('sysctl', ['-qw', `net.ipv4.conf.${HOST_U}.accept_local=1`, `net.ipv4.conf.${HOST_U}.rp_filter=0`]);

      dp = await datapathLoad({ pinRoot });
      sink = new EventSink(dp);
      const ifindex = Number(readFileSync(`/sys/class/net/${HOST_W}/ifindex`, 'utf8'));
      const mac = sh('ip', ['netns', 'exec', NS_W, 'cat', `/sys/class/net/${PEER_W}/address`]).trim();
      dp.endpointUpsert(ifindex, { endpointId: ENDPOINT_ID, identity: 4400, ipv4: A.ep4, ipv6: A.ep6, mac, flags: EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC });
      policyAllowAll(dp, ENDPOINT_ID); // policy would let the spoof pass: only the unsteering check stands in its way
      // the host's addresses on the device are host (its neighbour solicitations come from them)
      dp.ipcacheUpsert(`${A.hostW4}/32`, { identity: IDENTITY_HOST, hostId: 0 });
      dp.ipcacheUpsert(`${A.hostW6}/128`, { identity: IDENTITY_HOST, hostId: 0 });
      await dp.attach({ ifname: HOST_W, ifindex, kind });
      const steering = dp.dnsSteering!()!;
      steering.proxySet({ port: PROXY_PORT, ipv4: A.proxy4, ipv6: A.proxy6 });
      steering.endpointsSet(new Set([ENDPOINT_ID]));
    });
    after(cleanup);

    for (const family of [6, 4] as const) {
      test(`IPv${family}: the proxy's answer arrives from the resolver; the uplink neighbour's datagram from the proxy's address and port is dropped (INVALID_SOURCE_IP)`, async () => {
        assert.ok(dp && sink);
        const [proxy, res, ep] = family === 6 ? [A.proxy6, A.res6, A.ep6] : [A.proxy4, A.res4, A.ep4];
        const clientPort = 41000 + family + (kind === 'tcx' ? 0 : 10);
        // the "proxy": a socket of the host at the proxy's address and port
        const proxySock = createSocket(family === 6 ? 'udp6' : 'udp4');
        sockets.push(proxySock);
        const queries: Array<{ address: string; port: number }> = [];
        proxySock.on('message', (_m, rinfo) => queries.push({ address: rinfo.address, port: rinfo.port }));
        await new Promise<void>((resolve, reject) => {
          proxySock.once('error', reject);
          proxySock.bind(PROXY_PORT, proxy, () => resolve());
        });
        const client = spawn('ip', ['netns', 'exec', NS_W, 'python3', '-c', CLIENT_PY, res, String(clientPort)], { stdio: ['ignore', 'pipe', 'inherit'] });
        children.push(client);
        const got: Got[] = [];
        createInterface({ input: client.stdout! }).on('line', (l) => got.push(JSON.parse(l) as Got));

        // steered: the query reaches the proxy's socket, and its original destination is kept
        await waitFor('the steered query at the proxy', async () => queries.length > 0, 10_000);
        assert.deepEqual(queries[0], { address: ep, port: clientPort });
        assert.deepEqual(dp.dnsSteering!()!.originalDestination(ep, clientPort, 17), { address: res, port: 53 });

        // the neighbour's spoof, forwarded by the host to the workload's device
        await sink.drain(0);
        sh('ip', ['netns', 'exec', NS_U, 'python3', '-c', SPOOF_PY, proxy, ep, String(clientPort), String(PROXY_PORT)]);
        const dropped = () => sink!.events.filter((e) => e.verdict === 'DROPPED' && e.srcAddr === proxy && e.dstPort === clientPort);
        await waitFor('the spoof dropped by the datapath, or delivered to the workload', async () => dropped().length > 0 || got.length > 0, 10_000);
        assert.deepEqual(got, [], 'the spoof never reaches the workload (as the resolver\'s answer or at all)');
        assert.deepEqual(
          dropped().map((e) => [e.direction, e.dropReason, e.srcAddr, e.srcPort, e.dstAddr, e.dstPort, e.endpointId]),
          [['INGRESS', DROP_REASON.INVALID_SOURCE_IP, proxy, PROXY_PORT, ep, clientPort, ENDPOINT_ID]],
        );

        // the host's own answer still comes back as the resolver's
        await new Promise<void>((resolve, reject) => proxySock.send('answer', clientPort, ep, (err) => (err ? reject(err) : resolve())));
        await waitFor('the answer at the workload', async () => got.length > 0, 10_000);
        assert.deepEqual(got, [{ from: res, port: 53, data: 'answer' }]);
      });
    }
  });
}
