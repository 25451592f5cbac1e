import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { ConfigError } from '../common/config-error.js';

/**
 * The unix sockets of the agent (the REST API's, Hubble's) share one permission model: mode from the
 * config (0660 by default), owner root, group kitnet when that group exists; made under umask 0177, so
 * no one else can connect between bind and chmod. Problems name the socket's config key.
 */

/** A socket file left by a crashed agent is removed; one that still answers belongs to someone else. */
export async function unixSocketPrepare(path: string, key: string): Promise<void> {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  } catch (err) {
    throw new ConfigError(`${key}: cannot create the directory of ${path}: ${(err as Error).message}`, [key]);
  }
  if (!existsSync(path)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
  if (alive) throw new ConfigError(`${key}: another process is already listening on ${path}`, [key]);
  unlinkSync(path);
}

/** Runs `bind` with umask 0177: the socket file is born 0600 and opened up by `unixSocketSecure`. */
export async function unixSocketBindPrivate<T>(bind: () => Promise<T>): Promise<T> {
  const umask = process.umask(0o177);
  try {
    return await bind();
  } finally {
    process.umask(umask);
  }
}

/** The configured mode, and group kitnet when it exists. */
export function unixSocketSecure(path: string, mode: number): void {
  chmodSync(path, mode);
  const gid = kitnetGid();
  if (gid !== undefined) chownSync(path, 0, gid);
}

function kitnetGid(): number | undefined {
  try {
    const line = readFileSync('/etc/group', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('kitnet:'));
    return line ? Number(line.split(':')[2]) : undefined;
  } catch {
    return undefined;
  }
}
