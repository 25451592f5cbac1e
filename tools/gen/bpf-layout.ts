// Generator: the ONE description of everything the BPF C code and the TypeScript loader must agree on —
// map structs, map sizes, directions, verdicts, drop reasons, metric slots and the few kernel UAPI
// constants the Debian 12 headers are too old to carry. It emits:
//   bpf/include/shared.gen.h  C structs with explicit padding, _Static_assert on every size and offset,
//                             #defines for all constants
//   bpf/layout.gen.ts         the same structs as offset tables, plus the constants and drop-reason table
// Usage: node dist/tools/gen/bpf-layout.js [--check]   (bpf/build.sh runs it when this file or
// bpf-layout/ changed)
// Tests: test/unit/bpf-layout.test.ts re-runs it in memory (freshness) and compares it with the BTF of the
// compiled object (Cilium's alignchecker idea), and checks the UAPI numbers against /sys/kernel/btf/vmlinux.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { emitC, emitTs } from './bpf-layout/emit.js';

// The description is in bpf-layout/: structs.ts, constants.ts (map sizes among them), addresses.ts,
// drop-reasons.ts; the layout computation in layout.ts and the emitters in emit.ts.

export interface GeneratedFile {
  path: string;
  content: string;
}

/** Repo-relative outputs, computed in memory. */
export function generate(): GeneratedFile[] {
  return [
    { path: 'bpf/include/shared.gen.h', content: emitC() },
    { path: 'bpf/layout.gen.ts', content: emitTs() },
  ];
}

function repoRoot(): string {
  // Runs from the checkout (build.sh) or from its compiled location; find the checkout by its package.json.
  for (const start of [process.cwd(), dirname(fileURLToPath(import.meta.url))]) {
    let dir = start;
    for (let i = 0; i < 8; i++) {
      try {
        const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string };
        if (pkg.name === 'kitnet') return dir;
      } catch {
        /* keep walking up */
      }
      dir = dirname(dir);
    }
  }
  throw new Error('cannot find the kitnet checkout (package.json) above ' + fileURLToPath(import.meta.url));
}

function main(argv: string[]): number {
  const root = repoRoot();
  const check = argv.includes('--check');
  let stale = 0;
  for (const f of generate()) {
    const p = join(root, f.path);
    let old = '';
    try {
      old = readFileSync(p, 'utf8');
    } catch {
      /* missing: write it */
    }
    if (old === f.content) continue;
    stale++;
    if (check) console.error(`${f.path} is stale`);
    else {
      writeFileSync(p, f.content);
      console.error(`wrote ${f.path}`);
    }
  }
  return check && stale ? 1 : 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) process.exit(main(process.argv.slice(2)));
