// The import graph of the sources follows the data flow one way: main (composition root) -> api ->
// agent -> netkit, bpf -> kernel, with common/ below all. A folder imports only folders below it
// (netkit and bpf, side by side, not each other), so no cycle between top-level folders can form.
// Read from the .ts sources with a small parse of import/export statements and dynamic imports;
// type-only imports count too (a type is a dependency). tests, benches and tools may import anything.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative, sep } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GATEWAY_IPV4, GATEWAY_IPV6 } from '../../bpf/layout.gen.js';
import { GATEWAY_V4, GATEWAY_V6 } from '../../netkit/index.js';

/** Higher imports lower; equal ranks (other than the folder itself) may not import each other. */
const RANK: Readonly<Record<string, number>> = { main: 4, api: 3, agent: 2, netkit: 1, bpf: 1, common: 0 };

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Module specifiers of static imports, `export ... from` and `import(...)` with a literal. */
export function importSpecifiers(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const out: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\s[^;'"]*?\sfrom\s*['"]([^'"]+)['"]/gm,
    /^\s*import\s*['"]([^'"]+)['"]/gm,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) out.push(m[1]!);
  return out;
}

export interface Violation {
  file: string;
  specifier: string;
  from: string;
  to: string;
}

/** Imports against the flow among `files` (repo-relative path -> source). */
export function layeringViolations(files: ReadonlyMap<string, string>): Violation[] {
  const out: Violation[] = [];
  for (const [file, source] of files) {
    const from = file.split('/')[0]!;
    if (RANK[from] === undefined) continue;
    for (const specifier of importSpecifiers(source)) {
      if (!specifier.startsWith('.')) continue;
      const target = normalize(join(dirname(file), specifier)).split(sep).join('/');
      const to = target.split('/')[0]!;
      if (to === from) continue;
      const rank = RANK[to];
      if (rank === undefined || rank >= RANK[from]!) out.push({ file, specifier, from, to });
    }
  }
  return out;
}

/** Cycles between top-level folders (each as a path a -> b -> ... -> a). */
export function folderCycles(files: ReadonlyMap<string, string>): string[][] {
  const edges = new Map<string, Set<string>>();
  for (const [file, source] of files) {
    const from = file.split('/')[0]!;
    for (const specifier of importSpecifiers(source)) {
      if (!specifier.startsWith('.')) continue;
      const to = normalize(join(dirname(file), specifier)).split(sep).join('/').split('/')[0]!;
      if (to !== from) (edges.get(from) ?? edges.set(from, new Set()).get(from)!).add(to);
    }
  }
  const cycles: string[][] = [];
  const visit = (node: string, path: string[]) => {
    for (const next of edges.get(node) ?? []) {
      const at = path.indexOf(next);
      if (at >= 0) cycles.push([...path.slice(at), next]);
      else visit(next, [...path, next]);
    }
  };
  for (const start of edges.keys()) visit(start, [start]);
  return cycles;
}

function sources(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'node_modules' && e.name !== 'build' && e.name !== 'vendor') walk(p);
      } else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        files.set(relative(REPO, p).split(sep).join('/'), readFileSync(p, 'utf8'));
      }
    }
  };
  for (const top of Object.keys(RANK)) walk(join(REPO, top));
  return files;
}

test('the parse finds static, re-export, side-effect and dynamic imports, not commented ones', () => {
  const src = [
    "import { a } from './a.js';",
    "import type { B } from '../b/b.js';",
    "export { c } from './c.js';",
    "export * from './d.js';",
    "import './e.js';",
    "const f = await import('../f/f.js');",
    "import {\n  g,\n  h,\n} from './g.js';",
    "// import { x } from '../api/x.js';",
    "/* import { y } from '../api/y.js'; */",
    "const s = 'not an import from \"../api/z.js\"';",
  ].join('\n');
  assert.deepEqual(importSpecifiers(src).sort(), ['../b/b.js', '../f/f.js', './a.js', './c.js', './d.js', './e.js', './g.js']);
});

test('an import against the flow is reported, and so is one between netkit and bpf', () => {
  const files = new Map([
    ['agent/x.ts', "import { serverBuild } from '../api/server.js';\nimport { netnsCreate } from '../netkit/index.js';"],
    ['netkit/y.ts', "import type { LinkInfo } from '../common/native.js';\nimport { setns } from '../bpf/ns.js';"],
    ['common/z.ts', "const m = await import('../agent/config.js');"],
    ['api/w.ts', "import { Agent } from '../agent/agent.js';\nimport { daemonRun } from '../main/daemon.js';"],
    ['main/v.ts', "import { serverBuild } from '../api/server.js';"],
  ]);
  assert.deepEqual(
    layeringViolations(files).map((v) => `${v.file} -> ${v.to}`),
    ['agent/x.ts -> api', 'netkit/y.ts -> bpf', 'common/z.ts -> agent', 'api/w.ts -> main'],
  );
  assert.ok(folderCycles(files).some((c) => c.join(' -> ') === 'agent -> api -> agent'));
});

test('the sources import only downwards: main -> api -> agent -> netkit, bpf -> common', () => {
  const files = sources();
  assert.ok(files.size > 100, `read ${files.size} source files`);
  const bad = layeringViolations(files).map((v) => `${v.file} imports ${v.specifier} (${v.from} -> ${v.to})`);
  assert.deepEqual(bad, [], `imports against the flow:\n${bad.join('\n')}`);
  assert.deepEqual(folderCycles(files), []);
});

test("netkit's gateway addresses are the datapath's (the two folders do not import each other)", () => {
  assert.equal(GATEWAY_V4, GATEWAY_IPV4);
  assert.equal(GATEWAY_V6, GATEWAY_IPV6);
});
