import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { DROP_EVENTS_BURST_DEFAULT, DROP_EVENTS_RATE_DEFAULT, MONITOR_AGG_DEFAULT, MONITOR_AGG_NONE } from '../../bpf/layout.gen.js';
import { daemonRun } from '../../main/daemon.js';
import { AgentFixture } from '../helpers/fixture.js';
import { waitFor } from '../helpers/sys.js';

/** The flow aggregation level is a config setting, applied at start and on reload (SIGHUP). */
describe('flow reporting settings (root)', { timeout: 60_000 }, () => {
  const fx = new AgentFixture({ tag: 'flowcfg', ipv4Pool: '10.208.0.0/16', ipv6Pool: 'fd00:208::/64', namespaces: ['flowcfg'] });
  after(() => fx.cleanup());

  test('every-packet from the config file, back to connection aggregation on reload', async () => {
    const file = join(fx.dir, 'config.yaml');
    writeFileSync(file, 'flows: { aggregation: every-packet, reportIntervalSeconds: 5 }\n');
    fx.daemon = await daemonRun({ configPath: file, overrides: fx.overrides });
    assert.deepEqual(fx.agent.kernel.datapath.configGet(), { monitorAggregation: MONITOR_AGG_NONE, reportIntervalS: 5, dropEventsPerSecond: DROP_EVENTS_RATE_DEFAULT, dropEventsBurst: DROP_EVENTS_BURST_DEFAULT });
    writeFileSync(file, 'flows: { aggregation: connection }\n');
    fx.daemon.reload();
    await waitFor('the datapath config to follow', async () => fx.agent.kernel.datapath.configGet().monitorAggregation === MONITOR_AGG_DEFAULT);
    assert.equal(fx.agent.kernel.datapath.configGet().reportIntervalS, 0);
  });
});
