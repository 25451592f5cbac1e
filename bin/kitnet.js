#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript under dist/. `kitnet agent` and `kitnet demo` run the
// daemon in this process (systemd's main PID), so they go to the composition root (main/); every
// other command goes to the CLI, a client of the API that never loads the daemon.
const DAEMON_COMMANDS = new Set(['agent', 'demo']);
/** The command word: the first argument that is neither an option nor the CLI's `-s/--socket PATH`. */
function commandOf(args) {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-s' || args[i] === '--socket') i++;
    else if (!args[i].startsWith('-')) return args[i];
  }
  return undefined;
}
const entry = DAEMON_COMMANDS.has(commandOf(process.argv.slice(2))) ? '../dist/main/commands.js' : '../dist/api/cli/main.js';
import(entry).catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('kitnet: not built yet; run `bash scripts/setup.sh` first');
    process.exit(1);
  }
  throw err;
});
