import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Runs a command; resolves with stdout, rejects with stderr in the message. */
export async function run(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: opts.timeoutMs ?? 20_000, maxBuffer: 16 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

/** Exit status of a command, without throwing. */
export async function status(cmd: string, args: string[], timeoutMs = 20_000): Promise<number> {
  try {
    await execFileP(cmd, args, { timeout: timeoutMs });
    return 0;
  } catch (err) {
    const code = (err as { code?: number | string }).code;
    return typeof code === 'number' ? code : 1;
  }
}

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
