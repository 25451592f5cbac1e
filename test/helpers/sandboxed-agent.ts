// An agent for root tests that must not run in the machine's own network namespace: started by
// sandboxAgentStart inside `unshare --net --pid --mount-proc`, it reads its config overrides from the
// JSON file named in argv, says "ready" on stdout once the API listens, and stops on SIGTERM.
import { readFileSync } from 'node:fs';
import type { ConfigInput } from '../../agent/config.js';
import { daemonRun } from '../../main/daemon.js';

const overrides = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as ConfigInput;
const daemon = await daemonRun({ overrides });
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void daemon.stop().finally(() => process.exit(0));
});
