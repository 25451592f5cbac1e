import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/** Config and tokens files hold a few KiB; 1 MiB leaves room for thousands of tokens. */
export const YAML_FILE_MAX_BYTES = 1 << 20;

/**
 * Reads a YAML (or JSON) file that an operator wrote (config, tokens), refusing one larger than
 * maxBytes before any of it is parsed. The size bound is what keeps the parser's memory bounded: the
 * `yaml` package builds a double-quoted scalar one character at a time (`res += ch`), which V8 keeps
 * as a rope of about 32 bytes per character, so a 140 MB file of quoted strings (a fuzzed tokens file)
 * needed more than 4 GB of heap and killed the process. Regular files are checked by size first;
 * pipes and FIFOs are read up to maxBytes + 1. Throws an Error saying why (unreadable, too large).
 */
export function yamlFileRead(path: string, maxBytes = YAML_FILE_MAX_BYTES): string {
  const fd = openSync(path, 'r');
  try {
    const st = fstatSync(fd);
    if (st.isFile() && st.size > maxBytes) throw new Error(tooLarge(st.size, maxBytes));
    const chunks: Buffer[] = [];
    let total = 0;
    const buf = Buffer.allocUnsafe(64 * 1024);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      total += n;
      if (total > maxBytes) throw new Error(tooLarge(st.isFile() ? st.size : total, maxBytes, !st.isFile()));
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function tooLarge(size: number, max: number, atLeast = false): string {
  const limit = max % (1 << 20) === 0 ? `${max / (1 << 20)} MiB` : `${max} bytes`;
  return `too large (${atLeast ? 'more than ' : ''}${size} bytes; the limit is ${limit})`;
}

/**
 * A cheap look at YAML text before the parser sees it. The parser's memory grows faster than the
 * text for deeply nested documents (hundreds of indentation levels or brackets), enough to exhaust
 * the heap from a file of a few hundred KiB; kitnet's config and policies nest a dozen levels at most.
 * Returns why the text is refused, or undefined when it may be parsed.
 */
export function yamlNestingProblem(text: string, maxIndent = 160, maxBrackets = 64): string | undefined {
  let depth = 0;
  let lineStart = true;
  let indent = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10) {
      lineStart = true;
      indent = 0;
      continue;
    }
    if (lineStart) {
      if (c === 32 || c === 45 /* '-' */) {
        if (++indent > maxIndent) return `nested too deeply (indentation beyond ${maxIndent} columns on line ${lineOf(text, i)})`;
        continue;
      }
      lineStart = false;
    }
    if (c === 91 || c === 123) {
      if (++depth > maxBrackets) return `nested too deeply (more than ${maxBrackets} open brackets)`;
    } else if ((c === 93 || c === 125) && depth > 0) depth--;
  }
  return undefined;
}

function lineOf(text: string, index: number): number {
  let n = 1;
  for (let i = 0; i < index; i++) if (text.charCodeAt(i) === 10) n++;
  return n;
}

/**
 * An upper estimate of the documents and nodes in YAML text, from one pass over its characters (a few
 * ms for 4 MiB, where the `yaml` lexer alone takes a second): a document per `---` line (and one for
 * the text before the first), a node per non-blank line and per flow indicator `[`, `{` and `,`
 * (quoted or not: the estimate may be high, never low by more than the few nodes one block line holds).
 * Lets a caller refuse text before the parser builds it.
 */
export function yamlShapeEstimate(text: string): { documents: number; nodes: number } {
  let documents = 1;
  let nodes = 0;
  let lineStart = true;
  let blank = true;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10) {
      if (!blank) nodes++;
      lineStart = true;
      blank = true;
      continue;
    }
    if (lineStart && c === 45 && text.startsWith('---', i) && (i + 3 === text.length || text.charCodeAt(i + 3) <= 32)) documents++;
    lineStart = false;
    if (c > 32) blank = false;
    if (c === 44 || c === 91 || c === 123) nodes++;
  }
  if (!blank) nodes++;
  return { documents, nodes };
}
