import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import { IPCACHE_PREFIX, IpcachePublisher, ipIdentityPairJson } from '../../agent/cluster/ipcache-publisher.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import type { WorkloadRecord } from '../../agent/store/types.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { waitFor } from '../helpers/sys.js';

const log = pino({ level: 'silent' });

function workload(name: string, ipv4: string, ipv6: string, identity: number, ports?: WorkloadRecord['spec']['ports']): WorkloadRecord {
  return {
    spec: { name, namespace: 'shop', kind: 'netns', labels: {}, netns: '/x', requestedMode: 'auto', interface: 'eth0', ...(ports ? { ports } : {}) },
    mode: 'veth',
    endpointId: 1,
    identity,
    ipv4,
    ipv6,
    hostIfname: 'x',
    state: 'ready',
    observed: null,
    error: null,
    createdAt: '',
    updatedAt: '',
  };
}

describe('cluster ipcache in Cilium\'s layout', () => {
  test('IPIdentityPair JSON byte for byte as Cilium writes it', () => {
    // CLUSTER.md: what Cilium v1.19 wrote.
    assert.equal(
      ipIdentityPairJson({ ip: '10.244.1.79', hostIP: '172.18.0.3', id: 212954, namespace: 'default', podName: 'pod-212954' }),
      '{"IP":"10.244.1.79","Mask":null,"HostIP":"172.18.0.3","ID":212954,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"pod-212954"}',
    );
    assert.equal(
      ipIdentityPairJson({ ip: 'fd00:244::79', hostIP: '172.18.0.3', id: 5, namespace: 'n', podName: 'p', namedPorts: [{ name: 'http', port: 80, protocol: 'TCP' }] }),
      '{"IP":"fd00:244::79","Mask":null,"HostIP":"172.18.0.3","ID":5,"Key":0,"Metadata":"","K8sNamespace":"n","K8sPodName":"p","NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}',
    );
  });

  describe('against a real etcd', () => {
    let etcd: EtcdServer;
    let raw: Etcd3;
    const sessions: ClusterSession[] = [];
    const node = async (ip: string) => {
      const s = await ClusterSession.open(etcdClientCreate({ endpoints: [etcd.endpoint] }, undefined), log);
      sessions.push(s);
      return { s, pub: new IpcachePublisher(s, ip, log) };
    };
    const get = (key: string) => raw.get(key).exec().then((r) => r.kvs[0]);

    before(async () => {
      etcd = await etcdStart();
      raw = new Etcd3({ hosts: etcd.endpoint });
    });
    after(async () => {
      for (const s of sessions) await s.close({ revoke: true }).catch(() => undefined);
      raw?.close();
      await etcd?.stop();
    });

    test('v4 and v6 entries under the node lease; updated on a new identity; withdrawn', async () => {
      const a = await node('192.0.2.1');
      const w = workload('web', '10.9.0.5', 'fd00:9:0:0::5', 200000, [{ name: 'http', port: 80, protocol: 'TCP' }]);
      await a.pub.publish(w);
      const v4 = await get(`${IPCACHE_PREFIX}/10.9.0.5`);
      const v6 = await get(`${IPCACHE_PREFIX}/fd00:9::5`);
      assert.equal(v4?.value.toString(), '{"IP":"10.9.0.5","Mask":null,"HostIP":"192.0.2.1","ID":200000,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web","NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}');
      assert.equal(JSON.parse(v6!.value.toString()).IP, 'fd00:9::5', 'the key and IP are the canonical text');
      assert.equal(v4?.lease, await a.s.nodeLeaseId());
      await a.pub.publish({ ...w, identity: 200001 });
      assert.equal(JSON.parse((await get(`${IPCACHE_PREFIX}/10.9.0.5`))!.value.toString()).ID, 200001);
      await a.pub.withdraw(w);
      assert.equal(await get(`${IPCACHE_PREFIX}/10.9.0.5`), undefined);
      assert.equal(await get(`${IPCACHE_PREFIX}/fd00:9::5`), undefined);
    });

    test('after a restart the node takes its own entries over under its new lease', async () => {
      const first = await node('192.0.2.3');
      const w = workload('restart', '10.9.0.9', 'fd00:9::9', 200004);
      await first.pub.publish(w);
      await first.s.close(); // keepalives stop; the old lease lives on until its TTL
      const second = await node('192.0.2.3');
      await second.pub.publish(w);
      assert.equal((await get(`${IPCACHE_PREFIX}/10.9.0.9`))?.lease, await second.s.nodeLeaseId());
    });

    test('an address another node publishes is neither overwritten nor withdrawn', async () => {
      const a = await node('192.0.2.1');
      const b = await node('192.0.2.2');
      await a.pub.publish(workload('one', '10.9.0.7', 'fd00:9::7', 200002));
      const before = (await get(`${IPCACHE_PREFIX}/10.9.0.7`))!.value.toString();
      const clash = workload('two', '10.9.0.7', 'fd00:9::7', 200003);
      await b.pub.publish(clash);
      await raw.put(`${IPCACHE_PREFIX}/10.9.0.8`).value('{"HostIP":');
      await b.pub.publish(workload('three', '10.9.0.8', 'fd00:9::8', 200005));
      assert.equal((await get(`${IPCACHE_PREFIX}/10.9.0.8`))!.value.toString(), '{"HostIP":', 'a malformed entry of someone else is left alone');
      assert.equal((await get(`${IPCACHE_PREFIX}/10.9.0.7`))!.value.toString(), before);
      await b.pub.withdraw(clash);
      assert.equal((await get(`${IPCACHE_PREFIX}/10.9.0.7`))!.value.toString(), before);
    });

    test('a change etcd did not take is written once etcd is back; a later change of the workload replaces it', async () => {
      const a = await node('192.0.2.3');
      const kept = workload('kept', '10.9.3.1', 'fd00:9::3:1', 200010);
      const gone = workload('gone', '10.9.3.2', 'fd00:9::3:2', 200011);
      await etcd.down();
      try {
        await assert.rejects(a.pub.publish(kept), 'etcd is down: the caller hears of it');
        await assert.rejects(a.pub.publish(gone));
        await a.pub.withdraw(gone); // removed again while etcd is still down: nothing of it is in etcd to delete
      } finally {
        await etcd.up();
      }
      await waitFor('kept\'s entries written after the outage, with no further call', async () => (await get(`${IPCACHE_PREFIX}/fd00:9::3:1`)) ?? undefined, 60_000);
      assert.equal(JSON.parse((await get(`${IPCACHE_PREFIX}/10.9.3.1`))!.value.toString()).K8sPodName, 'kept');
      assert.equal((await get(`${IPCACHE_PREFIX}/10.9.3.1`))?.lease, await a.s.nodeLeaseId());
      assert.equal(await get(`${IPCACHE_PREFIX}/10.9.3.2`), undefined, 'the withdrawal replaced the publish that etcd had not taken');
      a.pub.close();
    });
  });
});
