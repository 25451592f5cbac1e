import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { errorToKitnet } from '../../agent/workload-errors.js';
import { bpfError } from '../../bpf/errors.js';
import { KernelError } from '../../common/kernel-error.js';

describe('kernel refusals caused by the registration itself', () => {
  const inNetns = { name: 'eth0', netns: '/var/run/netns/w' };
  test('a route kitnet needs already there (EEXIST on RTM_NEWROUTE in the namespace): 409 naming netns', () => {
    const e = errorToKitnet(new KernelError({ op: 'RTM_NEWROUTE', errno: 17, device: inNetns, hint: 'has a default route' }), 'registering w');
    assert.equal(e.code, 'AGENT_ERR_WORKLOAD_NETNS_ROUTES');
    assert.equal(e.statusCode, 409);
    assert.equal(e.field, 'netns');
    assert.match(e.message, /^registering w: RTM_NEWROUTE eth0.*EEXIST/);
  });
  test('the interface name taken in the namespace (EEXIST on RTM_NEWLINK): 409 naming interface', () => {
    const e = errorToKitnet(new KernelError({ op: 'RTM_NEWLINK', errno: 17, device: inNetns }), 'registering w');
    assert.equal(e.code, 'AGENT_ERR_WORKLOAD_INTERFACE');
    assert.equal(e.field, 'interface');
  });
  test('EEXIST on the host (no namespace) stays a kernel error', () => {
    assert.equal(errorToKitnet(new KernelError({ op: 'RTM_NEWROUTE', errno: 17, device: { name: 'kn1' } }), 'x').code, 'AGENT_ERR_KERNEL');
  });
  test('a map write refused for want of room (ENOSPC, E2BIG): 507 AGENT_ERR_MAP_FULL with the map named by the hint', () => {
    for (const [op, errno] of [['BPF_MAP_UPDATE_ELEM', 28], ['BPF_MAP_UPDATE_BATCH', 7]] as const) {
      const e = errorToKitnet(bpfError(Object.assign(new Error('x'), { op, errno, code: errno === 28 ? 'ENOSPC' : 'E2BIG' }), undefined, { map: { name: 'ipcache', maxEntries: 65536 } }), 'registering w');
      assert.equal(e.code, 'AGENT_ERR_MAP_FULL');
      assert.equal(e.statusCode, 507);
      assert.match(e.message, /the `ipcache` map is full \(max_entries 65536\).*IPCACHE_MAP_MAX/);
    }
    assert.equal(errorToKitnet(new KernelError({ op: 'BPF_MAP_UPDATE_ELEM', errno: 22 }), 'x').code, 'AGENT_ERR_KERNEL', 'EINVAL stays a kernel error');
  });
});
