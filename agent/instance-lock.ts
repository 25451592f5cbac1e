import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { flockExclusive } from '../bpf/flock.js';
import { KitnetError } from '../common/errors.js';

/**
 * One agent per state dir and per pin root. Two agents on the same pins replace each other's programs
 * in the pinned links and write the same maps; on the same state dir they share one store. So before
 * anything touches the kernel, the agent takes two flock(2) locks: one on `<stateDir>/kitnet.lock`, one
 * on a file in /run/kitnet named after the pin root (bpffs holds no regular files). The kernel drops a
 * flock when its holder exits, however it exits: a crashed agent leaves nothing stale behind.
 */

/** Where the pin-root locks live (the unit's RuntimeDirectory). */
export const PIN_LOCK_DIR = '/run/kitnet';

/** The lock file that stands for a pin root: the same path for every spelling of it (trailing slashes, `..`). */
export function pinRootLockPath(pinRoot: string, dir = PIN_LOCK_DIR): string {
  const key = createHash('sha256').update(resolve(pinRoot)).digest('hex').slice(0, 16);
  return join(dir, `pin-${key}.lock`);
}

export function stateDirLockPath(stateDir: string): string {
  return join(stateDir, 'kitnet.lock');
}

export interface InstanceLock {
  /** The lock files held. */
  readonly paths: string[];
  release(): void;
}

/** The pid a lock file's holder wrote into it, if it did. */
function holderPid(path: string): number | undefined {
  try {
    const m = /^pid (\d+)$/m.exec(readFileSync(path, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function lockTake(path: string, what: string, note: string): number {
  let fd: number;
  try {
    fd = openSync(path, 'a+', 0o644);
  } catch (err) {
    throw new KitnetError('AGENT_ERR_AGENT_LOCK', `${what}: cannot open the lock file ${path}: ${(err as Error).message}`, { cause: err });
  }
  let taken: boolean;
  try {
    taken = flockExclusive(fd);
  } catch (err) {
    closeSync(fd);
    throw new KitnetError('AGENT_ERR_AGENT_LOCK', `${what}: cannot lock ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (!taken) {
    closeSync(fd);
    const pid = holderPid(path);
    throw new KitnetError(
      'AGENT_ERR_AGENT_RUNNING',
      `another kitnet agent${pid ? ` (pid ${pid})` : ''} holds ${path}, the lock of ${what}; ` +
        'one agent per state dir and pin root: stop it first (systemctl stop kitnet), or give this one its own stateDir and bpfPinRoot',
    );
  }
  // Who holds it, for the message of the next agent that tries (and for an operator's cat).
  ftruncateSync(fd, 0);
  writeSync(fd, `pid ${process.pid}\n${note}\n`);
  return fd;
}

/**
 * Takes both locks or none; throws KitnetError AGENT_ERR_AGENT_RUNNING (naming the holder's pid and the
 * lock file) when another agent holds either. Creates the state dir and the lock dir if needed, nothing else.
 */
export function instanceLockTake(stateDir: string, pinRoot: string, lockDir = PIN_LOCK_DIR): InstanceLock {
  const fds: number[] = [];
  const statePath = stateDirLockPath(stateDir);
  const pinPath = pinRootLockPath(pinRoot, lockDir);
  try {
    try {
      mkdirSync(stateDir, { recursive: true, mode: 0o750 });
    } catch (err) {
      throw new KitnetError('AGENT_ERR_AGENT_LOCK', `stateDir: cannot create ${stateDir}: ${(err as Error).message}`, { field: 'stateDir', cause: err });
    }
    fds.push(lockTake(statePath, `stateDir ${stateDir}`, `stateDir ${resolve(stateDir)}`));
    try {
      mkdirSync(lockDir, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new KitnetError('AGENT_ERR_AGENT_LOCK', `bpfPinRoot: cannot create the lock directory ${lockDir}: ${(err as Error).message}`, { field: 'bpfPinRoot', cause: err });
    }
    fds.push(lockTake(pinPath, `bpfPinRoot ${pinRoot}`, `bpfPinRoot ${resolve(pinRoot)}`));
  } catch (err) {
    for (const fd of fds) closeSync(fd);
    throw err;
  }
  let released = false;
  return {
    paths: [statePath, pinPath],
    release: () => {
      if (released) return;
      released = true;
      // Closing drops the flock. The files stay: unlinking one could let two agents lock two different files.
      for (const fd of fds) closeSync(fd);
    },
  };
}
