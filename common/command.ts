import { execFile, spawn } from 'node:child_process';

/**
 * Running a helper command (ip, iptables, nsenter) from the benchmarks and tests: stdout on success,
 * an Error naming the command line and carrying its stderr otherwise. The agent's own calls map
 * errors per command instead (netkit/netns.ts, netkit/vm-plumbing.ts).
 */
export interface CommandOptions {
  /** Killed (SIGKILL) after this long. */
  timeoutMs?: number;
  /** Written to the command's stdin (e.g. `ip -batch -`). */
  input?: string;
  maxBufferBytes?: number;
}

export function commandRun(cmd: string, args: string[], opts: CommandOptions = {}): Promise<string> {
  const line = `${cmd} ${args.join(' ')}`;
  const timeout = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout, killSignal: 'SIGKILL', maxBuffer: opts.maxBufferBytes ?? 64 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const why = stderr.trim() || (err.killed ? `killed after ${timeout} ms` : err.message);
      reject(new Error(`${line}: ${why.slice(0, 2000)}`));
    });
    child.stdin?.end(opts.input);
  });
}

/** The exit status of a command (1 when it could not run or was killed), never throwing. */
export function commandStatus(cmd: string, args: string[], timeoutMs = 60_000): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', () => {
      clearTimeout(timer);
      resolve(1);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve(code ?? 1);
    });
  });
}
