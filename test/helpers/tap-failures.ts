// Prints the failed tests of node's TAP files with their errors: what scripts/test.sh shows last when a
// run fails, so that the tail of a long CI log (unit, root and lab output printed one after another)
// says which test failed and why. usage: node dist/test/helpers/tap-failures.js FILE.tap...
import { existsSync, readFileSync } from 'node:fs';

const DIAGNOSTIC_LINES_MAX = 30;

interface Failure {
  path: string[];
  diagnostic: string[];
}

/** The `not ok` lines of a TAP stream that are not only "N subtests failed", with their YAML blocks. */
export function tapFailures(text: string): Failure[] {
  const lines = text.split('\n');
  const names: string[] = [];
  const failures: Failure[] = [];
  // Errors the runner reports outside any test (e.g. asynchronous activity after a test ended, which
  // fails the file): comment lines before the file's own `not ok`.
  let notes: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const note = /^ *# ((?:Error|Warning): .*)$/.exec(line);
    if (note) {
      notes.push(note[1]!);
      continue;
    }
    if (/^ *ok \d+ - /.test(line)) notes = [];
    const subtest = /^( *)# Subtest: (.*)$/.exec(line);
    if (subtest) {
      names[subtest[1]!.length / 4] = subtest[2]!;
      names.length = subtest[1]!.length / 4 + 1;
      continue;
    }
    const failed = /^( *)not ok \d+ - (.*?)(?: # (?:SKIP|TODO)\b.*)?$/.exec(line);
    if (!failed || / # (SKIP|TODO)\b/.test(line)) continue;
    const depth = failed[1]!.length / 4;
    const diagnostic: string[] = notes;
    notes = [];
    if (lines[i + 1]?.trim() === '---') {
      for (i += 2; i < lines.length && lines[i]!.trim() !== '...'; i++) diagnostic.push(lines[i]!.slice(failed[1]!.length + 2));
    }
    if (diagnostic.some((d) => /^error: '\d+ subtests? failed'$/.test(d))) continue;
    failures.push({ path: [...names.slice(0, depth), failed[2]!], diagnostic });
  }
  return failures;
}

function main(files: string[]): void {
  let shown = 0;
  for (const file of files) {
    if (!existsSync(file)) continue;
    for (const f of tapFailures(readFileSync(file, 'utf8'))) {
      shown++;
      console.log(`✖ ${f.path.join(' › ')}   [${file}]`);
      const lines = f.diagnostic.filter((d) => !/^(duration_ms|location|failureType|code|name|operator):/.test(d.trim()));
      for (const d of lines.slice(0, DIAGNOSTIC_LINES_MAX)) console.log(`    ${d}`);
      if (lines.length > DIAGNOSTIC_LINES_MAX) console.log(`    … ${lines.length - DIAGNOSTIC_LINES_MAX} more lines in ${file}`);
    }
  }
  if (shown === 0) console.log('no failed test in the TAP files: a part failed outside its tests (a VM that died, a runner that could not start); its output above says how');
}

if (import.meta.url === `file://${process.argv[1]}`) main(process.argv.slice(2));
