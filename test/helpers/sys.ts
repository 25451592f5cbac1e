import { commandRun, commandStatus, type CommandOptions } from '../../common/command.js';

/** Runs a command; resolves with stdout, rejects with stderr in the message. */
export const run = (cmd: string, args: string[], opts: CommandOptions = {}): Promise<string> =>
  commandRun(cmd, args, { timeoutMs: 20_000, ...opts });

/** Exit status of a command, without throwing. */
export const status = (cmd: string, args: string[], timeoutMs = 20_000): Promise<number> => commandStatus(cmd, args, timeoutMs);

export const uniq = () => `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;

export async function netnsAdd(name: string): Promise<string> {
  await run('ip', ['netns', 'add', name]);
  return `/var/run/netns/${name}`;
}

export async function netnsDel(name: string): Promise<void> {
  await status('ip', ['netns', 'del', name]);
}

/** One ping from inside a namespace; true when a reply came back. */
export async function ping(netns: string, address: string, count = 1): Promise<boolean> {
  return (await status('ip', ['netns', 'exec', netns, 'ping', '-c', String(count), '-i', '0.2', '-W', '2', address], 15_000)) === 0;
}

export interface IpLink {
  ifname: string;
  ifindex: number;
  ifalias?: string;
  address?: string;
  link_type?: string;
}

export async function links(netns?: string): Promise<IpLink[]> {
  const args = netns ? ['-n', netns, '-j', 'link', 'show'] : ['-j', 'link', 'show'];
  return JSON.parse(await run('ip', args)) as IpLink[];
}

export async function routes(family: 4 | 6, netns?: string): Promise<Array<{ dst: string; dev?: string; gateway?: string }>> {
  const args = [...(netns ? ['-n', netns] : []), `-${family}`, '-j', 'route', 'show'];
  return JSON.parse(await run('ip', args)) as Array<{ dst: string; dev?: string; gateway?: string }>;
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Runs an ES module `script` in a node process of a network namespace of its own (`unshare --net`: gone
 * with the process, so nothing is left to clean up), after the shell commands `setup` (run there, lo is
 * up first). Resolves with the script's last line of output parsed as JSON: what the test asserts on.
 */
export async function nodeInOwnNetns<T>(setup: string, script: string, timeoutMs = 100_000): Promise<T> {
  const stdout = await run('unshare', ['--net', 'sh', '-c', `ip link set lo up${setup ? ` && ${setup}` : ''} && exec "$0" --input-type=module -e "$1"`, process.execPath, script], { timeoutMs });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as T;
}
