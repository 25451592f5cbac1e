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
