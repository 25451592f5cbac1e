// Helpers for netkit/ root tests: iproute2 to look at kernel state independently of netkit/, and
// unique names so tests never touch anything they did not make.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const isRoot = process.getuid?.() === 0;

export function rand(): string {
  return randomBytes(3).toString('hex');
}

export async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: 20_000 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

export async function ok(cmd: string, args: string[]): Promise<boolean> {
  try {
    await execFileP(cmd, args, { timeout: 20_000 });
    return true;
  } catch {
    return false;
  }
}

/** `ip -j [-n NS] ARGS`, parsed. */
export async function ipj<T = Record<string, unknown>[]>(args: string[], netns?: string): Promise<T> {
  const out = await sh('ip', [...(netns ? ['-n', netns] : []), '-j', ...args]);
  return JSON.parse(out.trim() || '[]') as T;
}

export async function linkExists(ifname: string, netns?: string): Promise<boolean> {
  return ok('ip', [...(netns ? ['-n', netns] : []), 'link', 'show', 'dev', ifname]);
}

export async function linkNames(netns?: string): Promise<string[]> {
  return (await ipj<{ ifname: string }[]>(['link', 'show'], netns)).map((l) => l.ifname);
}

/** Best effort: remove a host link if it exists (cleanup). */
export async function linkDelQuiet(ifname: string): Promise<void> {
  await ok('ip', ['link', 'del', 'dev', ifname]);
}

export async function netnsDelQuiet(name: string): Promise<void> {
  await ok('ip', ['netns', 'del', name]);
}

export async function ping(netns: string, address: string): Promise<boolean> {
  const v6 = address.includes(':');
  return ok('ip', ['netns', 'exec', netns, 'ping', ...(v6 ? ['-6'] : []), '-c1', '-W1', address]);
}

/** Pings until one reply arrives or `tries` are used up (neighbour resolution can eat the first). */
export async function pingEventually(netns: string, address: string, tries = 3): Promise<boolean> {
  for (let i = 0; i < tries; i++) if (await ping(netns, address)) return true;
  return false;
}
