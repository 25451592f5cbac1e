// A served netkit-l2 guest's DHCP that passes without policy (EP_F_DHCP_TO_HOST: DHCPv4 renewals to the
// server identifier, rebinding broadcasts, DHCPv6 to ff02::1:2) is for the agent's packet socket only:
// it leaves the program addressed to the guest's own MAC, so the host side takes it as
// PACKET_OTHERHOST and the host's IP stack drops it (no DHCP server or relay on the host hears a guest,
// a renewal to a server address the host does not own is not forwarded). BPF_PROG_TEST_RUN: the frame
// as the program leaves it. On netkit (the only place the flag is set) the lab's vm-dhcp tests show the
// agent still answers renewals.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { KitnetDatapath } from '../../bpf/index.js';
import { EP_F_DHCP_TO_HOST, EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC, TCX_PASS } from '../../bpf/layout.gen.js';
import type { EventSink } from './bpf-helpers.js';
import { ETH_P_IP, ETH_P_IPV6, eth, ipv4, ipv6, udp, LO, testRunDatapathUse } from './bpf-helpers.js';

const EP = { endpointId: 13, identity: 4102, ipv4: '10.250.0.2', ipv6: 'fd00:250::2', mac: '02:00:00:00:00:02', flags: 0 };
const GUEST_MAC = EP.mac.replace(/:/g, '');

describe('served guest DHCP passing without policy reaches the agent only (BPF_PROG_TEST_RUN)', { timeout: 60_000 }, () => {
  let dp: KitnetDatapath;
  let sink: EventSink;
  testRunDatapathUse('hsdhcp', EP, (d, s) => {
    dp = d;
    sink = s;
    dp.policyClear(EP.endpointId); // default deny, both directions
    dp.endpointUpsert(LO, { ...EP, flags: EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC | EP_F_DHCP_TO_HOST });
  });

  test('renewal to the gateway, rebinding broadcast, DHCPv6 to ff02::1:2: passed, readdressed to the guest\'s own MAC, reported as forwarded', async () => {
    const cases: Array<[string, Buffer]> = [
      ['renewal to the gateway (the host side\'s MAC)', eth(ETH_P_IP, ipv4(EP.ipv4, '169.254.1.1', 17, udp(68, 67, Buffer.alloc(240))), EP.mac, '02:00:00:00:00:01')],
      ['rebinding broadcast', eth(ETH_P_IP, ipv4(EP.ipv4, '255.255.255.255', 17, udp(68, 67, Buffer.alloc(240))), EP.mac, 'ff:ff:ff:ff:ff:ff')],
      ['DHCPv6 to All_DHCP_Relay_Agents_and_Servers', eth(ETH_P_IPV6, ipv6('fe80::2', 'ff02::1:2', 17, udp(546, 547, Buffer.alloc(32))), EP.mac, '33:33:00:01:00:02')],
    ];
    const got: Record<string, unknown> = {};
    for (const [what, frame] of cases) {
      const { retval, data } = dp.testRun('from_workload', frame, { ifindex: LO });
      got[what] = {
        retval,
        dmac: data.subarray(0, 6).toString('hex'),
        rest: data.subarray(6).equals(frame.subarray(6)),
        events: (await sink.settle()).map((e) => e.verdict),
      };
    }
    const want = { retval: TCX_PASS, dmac: GUEST_MAC, rest: true, events: ['FORWARDED'] };
    assert.deepEqual(got, Object.fromEntries(cases.map(([what]) => [what, want])));
  });
});
