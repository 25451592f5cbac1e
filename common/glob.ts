/**
 * Wildcard matching without regular expressions. A pattern turned into a backtracking regular
 * expression takes time exponential in its stars: `*a*a*a*a*a*a*b.test` as V8's `^[-a-z0-9_]*a...$`
 * took 5.8 s on one 60-letter name, on the agent's thread. The names and paths matched here come from
 * workloads and API clients, the patterns from policy authors (a namespace's own users, in Kubernetes),
 * so neither side may choose how long a match takes.
 */

const STAR = 0x2a; // *
const QUESTION = 0x3f; // ?

/**
 * Whether all of `text` matches `pattern`, where `*` matches any run of characters (none too) and, with
 * `question`, `?` matches any one character; every other character matches itself. The classic greedy
 * scan: on a mismatch only the last star takes one more character, since a later star can match
 * whatever an earlier one could. O(pattern x text) at worst, linear in practice.
 */
export function globMatch(pattern: string, text: string, question = false): boolean {
  let p = 0;
  let t = 0;
  let starP = -1;
  let starT = 0;
  while (t < text.length) {
    const c = p < pattern.length ? pattern.charCodeAt(p) : -1;
    if (c === STAR) {
      starP = p++;
      starT = t;
    } else if (c !== -1 && (c === text.charCodeAt(t) || (question && c === QUESTION))) {
      p++;
      t++;
    } else if (starP >= 0) {
      p = starP + 1;
      t = ++starT;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern.charCodeAt(p) === STAR) p++;
  return p === pattern.length;
}

/**
 * A matcher of globMatch over `sep`-separated parts, where no wildcard crosses a separator: the same
 * number of parts, each matching its pattern part (a path's segments, a name's labels). The pattern is
 * split once, here, not on every text matched.
 */
export function globPartsMatcher(pattern: string, sep: string, question = false): (text: string) => boolean {
  const ps = pattern.split(sep);
  return (text) => {
    const ts = text.split(sep);
    return ps.length === ts.length && ps.every((p, i) => globMatch(p, ts[i]!, question));
  };
}
