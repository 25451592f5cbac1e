import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { datapathUnpinAll } from '../../bpf/index.js';
import { links, netnsDel, run } from './sys.js';

/**
 * Removes what an earlier run of a test left when its process died before its `after` hook (a SIGKILL,
 * a runner timeout): host-side links whose alias starts with `aliasPrefix`, named network namespaces
 * and pin roots under /sys/fs/bpf starting with `netnsPrefix` / `pinPrefix`. Their links still hold
 * routes for the test's pool, so the next run's first registration would fail on them. Runs of one
 * test file never overlap (one file at a time), so whatever carries the prefixes is stale.
 */
export async function earlierRunsSweep(prefixes: { aliasPrefix: string; netnsPrefix: string; pinPrefix: string }): Promise<void> {
  for (const l of await links()) {
    if (l.ifalias?.startsWith(prefixes.aliasPrefix)) await run('ip', ['link', 'del', l.ifname]).catch(() => undefined);
  }
  const named = existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : [];
  for (const n of named.filter((x) => x.startsWith(prefixes.netnsPrefix))) await netnsDel(n);
  for (const p of readdirSync('/sys/fs/bpf').filter((x) => x.startsWith(prefixes.pinPrefix))) {
    await datapathUnpinAll(join('/sys/fs/bpf', p)).catch(() => undefined);
  }
}
