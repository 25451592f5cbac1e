import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The repository root (dist/test/helpers/ -> ../../..). */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * The upstream `hubble` CLI for interoperability tests: $KITNET_HUBBLE_CLI, else the workspace's copy
 * in shared/tools/hubble beside the checkout (../shared from the main checkout, ../../shared from a
 * worktree under wt/). undefined when none is there.
 */
export function hubbleCliPath(): string | undefined {
  const candidates = [process.env.KITNET_HUBBLE_CLI, `${ROOT}../shared/tools/hubble/hubble`, `${ROOT}../../shared/tools/hubble/hubble`];
  return candidates.find((p): p is string => !!p && existsSync(p));
}

/**
 * Whether CLI tests run: with no CLI they fail with a message saying so, unless KITNET_SKIP_HUBBLE_CLI=1
 * (a plain clone outside the workspace) makes them skip. Returns the skip reason or the path.
 */
export function hubbleCliOrSkip(): { path: string; skip: false } | { skip: string } {
  const path = hubbleCliPath();
  if (path) return { path, skip: false };
  if (process.env.KITNET_SKIP_HUBBLE_CLI === '1') return { skip: 'KITNET_SKIP_HUBBLE_CLI=1 and no hubble CLI found' };
  throw new Error('the hubble CLI is missing: expected ../shared/tools/hubble/hubble beside the checkout or $KITNET_HUBBLE_CLI; set KITNET_SKIP_HUBBLE_CLI=1 to skip these tests');
}

/** Runs the CLI; resolves with stdout and stderr and the exit code (no throw on a non-zero exit). */
export function hubbleRun(cli: string, args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cli, args, { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
