// Which device mode the agent-level root tests run in. The host kernel has no netkit, so they run with
// veth here and a second time inside the lab VM with KITNET_TEST_MODE=netkit (test/lab/suite.sh).
import { featuresProbe } from '../../netkit/index.js';

export type TestMode = 'veth' | 'netkit';

function modeFromEnv(): TestMode {
  const v = process.env.KITNET_TEST_MODE ?? 'veth';
  if (v !== 'veth' && v !== 'netkit') throw new Error(`KITNET_TEST_MODE must be veth or netkit, not ${JSON.stringify(v)}`);
  return v;
}

/** The agent's configured datapath mode in fixtures (AgentFixture) and the mode workloads report. */
export const testMode: TestMode = modeFromEnv();

/** The kernel's own answer (a real create-and-delete probe), cross-checked with the lab's expectation. */
export async function kernelHasNetkit(): Promise<boolean> {
  const f = await featuresProbe();
  if (process.env.KITNET_EXPECT_NETKIT === '1' && !f.netkit) throw new Error(`KITNET_EXPECT_NETKIT=1 but the probe says: ${f.netkitDetail}`);
  return f.netkit;
}
