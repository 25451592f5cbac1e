/**
 * The DNS proxy's learned state on disk (`<stateDir>/dns-learned.json`), so an agent restart keeps the
 * names, addresses and identity numbers: the FQDN identities the restarted agent compiles are the ones
 * the pinned policy map and ipcache still hold, and connections to learned addresses carry on.
 * Written whole (temp file + rename) after changes; read once at start and validated: a file that does
 * not parse or validate is ignored (logged), never half-used.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { z } from 'zod';

export const DNS_STATE_FILE = 'dns-learned.json';

const StateSchema = z
  .object({
    version: z.literal(1),
    names: z
      .array(
        z
          .object({
            name: z.string().min(1).max(255),
            addresses: z
              .array(
                z
                  .object({
                    address: z.string().refine((a) => isIP(a) !== 0, 'must be an IP address'),
                    expiresAt: z.number().int().nonnegative(),
                    /** Whom the address counts against (the workload's endpoint id, else its address): the limit per workload holds across restarts. */
                    owner: z.union([z.number().int().nonnegative(), z.string().max(64)]).optional(),
                  })
                  .strict(),
              )
              .max(100_000),
          })
          .strict(),
      )
      .max(1_000_000),
    /** Identity label-set key -> identity number (FqdnIdentities.keys). */
    identities: z.array(z.tuple([z.string().max(100_000), z.number().int().positive()])).max(1_000_000),
    /**
     * Written by a clean stop: every expiry is as the agent last had it. Without it (a crash), expiry-only
     * changes of the last seconds may be missing, and the restore extends every expiry to cover them.
     */
    complete: z.boolean().optional(),
  })
  .strict();

export type DnsLearnedState = z.infer<typeof StateSchema>;

export function dnsStateRead(stateDir: string): DnsLearnedState | { error: string } | undefined {
  let text: string;
  try {
    text = readFileSync(join(stateDir, DNS_STATE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return { error: (err as Error).message };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    return { error: `not JSON: ${(err as Error).message}` };
  }
  const r = StateSchema.safeParse(raw);
  if (!r.success) return { error: r.error.issues.slice(0, 3).map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') };
  return r.data;
}

export function dnsStateWrite(stateDir: string, state: DnsLearnedState): void {
  const path = join(stateDir, DNS_STATE_FILE);
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 });
  renameSync(tmp, path);
}

type DnsLearnedName = DnsLearnedState['names'][number];

/** Names serialized per slice of dnsStateWriteSliced: ~0.3 ms of the thread on the bench's machine. */
const NAMES_PER_SLICE = 256;

/**
 * dnsStateWrite for a running agent: the same file, without holding the agent's thread for all of it.
 * Written whole, the file took the thread ~5 ms per thousands of names every time new addresses were
 * learned, and lookups queued behind it (bench/README §8). Here the names are serialized a slice at a
 * time and each slice is written (in libuv's pool) before the next is made, so lookups are answered
 * between slices. The names are read as the slices are made: a name learned meanwhile may be in the
 * file or in the next one, and every name in it is as the cache had it at some moment (the restore
 * validates the file as any other; a name twice is merged). `identities` is read after the last name.
 * Temp file + rename; `cancelled` is asked after each slice and before the rename: then the temp file
 * is removed and the file stays as it was. Resolves whether the file was replaced.
 */
export async function dnsStateWriteSliced(stateDir: string, names: Iterable<DnsLearnedName>, identities: () => Array<[string, number]>, cancelled: () => boolean): Promise<boolean> {
  const path = join(stateDir, DNS_STATE_FILE);
  // Not dnsStateWrite's temp file: a clean stop may write that one while this is still in flight.
  const tmp = `${path}.tmp-running`;
  const file = await open(tmp, 'w', 0o600);
  let replaced = false;
  try {
    let text = '{"version":1,"names":[';
    let count = 0;
    let first = true;
    for (const name of names) {
      text += (first ? '' : ',') + JSON.stringify(name);
      first = false;
      if (++count % NAMES_PER_SLICE === 0) {
        await file.write(text);
        text = '';
        if (cancelled()) return false;
      }
    }
    await file.write(`${text}],"identities":${JSON.stringify(identities())}}`);
    await file.close();
    // Checked and renamed in one turn: a clean stop's file, written in a turn of its own, is never replaced by this one.
    if (cancelled()) return false;
    renameSync(tmp, path);
    replaced = true;
    return true;
  } finally {
    await file.close().catch(() => undefined);
    if (!replaced) await rm(tmp, { force: true });
  }
}

