import { Command, InvalidArgumentError } from 'commander';
import { ApiError } from '../common/api-client.js';
import { daemonRun } from './daemon.js';
import { demoRun } from './demo.js';

/**
 * `kitnet agent` and `kitnet demo`: the commands that run the daemon in this process. bin/kitnet.js
 * sends them here and everything else to the CLI (api/cli), which is a client of the API and never
 * loads the daemon. In-process (not spawned by the CLI) because systemd's `NotifyAccess=main` takes
 * READY and the watchdog only from the process it started.
 */
const program = new Command('kitnet')
  // The CLI's global option, accepted (and unused) as it always was: the agent's socket is api.socket.
  .option('-s, --socket <path>', "the CLI's agent socket (unused here: the agent listens on api.socket)")
  .showHelpAfterError();

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${value}" must be a positive integer`);
  return n;
}

program
  .command('agent')
  .description('run the kitnet agent in the foreground (as root)')
  .option('-c, --config <file>', 'YAML config file (default /etc/kitnet/config.yaml when present)')
  .option('--socket-path <path>', 'override api.socket')
  .option('--state-dir <dir>', 'override stateDir')
  .option('--pin-root <dir>', 'override bpfPinRoot')
  .action(async (opts: { config?: string; socketPath?: string; stateDir?: string; pinRoot?: string }) => {
    const overrides = {
      ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
      ...(opts.pinRoot ? { bpfPinRoot: opts.pinRoot } : {}),
      ...(opts.socketPath ? { api: { socket: opts.socketPath } } : {}),
    };
    const { stop, reload } = await daemonRun({ configPath: opts.config, overrides });
    process.on('SIGHUP', reload);
    const onSignal = () => {
      stop().then(
        () => process.exit(0),
        (err: unknown) => {
          console.error(err);
          process.exit(1);
        },
      );
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });

program
  .command('demo')
  .description('run the agent with demo workloads (two netns, a VM), traffic, a policy that denies part of it, live flows (as root)')
  .option('--duration <seconds>', 'stop by itself after this many seconds', positiveInt)
  .action(async (o: { duration?: number }) => {
    await demoRun({ durationSeconds: o.duration ?? 0 });
    process.exit(0);
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof ApiError) console.error(`error: ${err.message} [${err.code}, HTTP ${err.statusCode}]`);
  else console.error(`error: ${(err as Error).message ?? String(err)}`);
  process.exit(1);
});
