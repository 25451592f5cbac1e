import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { fileURLToPath } from 'node:url';

export const KITNET_BIN = fileURLToPath(new URL('../../../bin/kitnet.js', import.meta.url));

/** GET /healthz on a unix socket: the status, or 0 when nothing answers. */
export function healthzStatus(socket: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ socketPath: socket, path: '/healthz', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

export type AgentRunOutcome = { exited: true; code: number | null; output: string } | { exited: false; output: string };

/**
 * `kitnet agent -c CONFIG` as a real process, until it exits or answers /healthz on `socket` with 200
 * (then it is stopped with SIGTERM and reported as `exited: false`), within `timeoutMs`. A refused start
 * must exit by itself; one that serves is the failure the caller reports. Without `socket` (it is
 * another agent's) only the exit counts.
 */
export function agentProcessRun(config: string, socket: string | undefined, timeoutMs = 90_000): Promise<AgentRunOutcome> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [KITNET_BIN, 'agent', '-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    p.stdout.on('data', (c: Buffer) => (output += c.toString()));
    p.stderr.on('data', (c: Buffer) => (output += c.toString()));
    let served = false;
    const deadline = Date.now() + timeoutMs;
    const poll = setInterval(() => {
      if (Date.now() > deadline) {
        clearInterval(poll);
        p.kill('SIGKILL');
        reject(new Error(`the agent neither exited nor served within ${timeoutMs} ms; output:\n${output.slice(-3000)}`));
        return;
      }
      if (socket === undefined) return;
      void healthzStatus(socket).then((s) => {
        if (s === 200 && !served && p.exitCode === null) {
          served = true;
          p.kill('SIGTERM');
        }
      });
    }, 100);
    p.once('exit', (code) => {
      clearInterval(poll);
      resolve(served ? { exited: false, output } : { exited: true, code, output });
    });
  });
}
