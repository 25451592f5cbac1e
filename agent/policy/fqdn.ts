/**
 * FQDN selectors (`toFQDNs[]`, `toPorts[].rules.dns[]`): validation and matching with Cilium's
 * semantics (pkg/fqdn/matchpattern, pkg/policy/api/fqdn.go), as pure functions.
 *
 * Names are compared lower-cased and fully qualified (trailing dot implied). In `matchPattern`:
 * - a pattern made of stars only (`*`, `**`, `*.`, `**.`) matches every name made of DNS characters
 *   (and the root `.`);
 * - a leading run of two or more stars followed by a dot (`**.example.com`) matches one or more whole
 *   labels (`a.example.com`, `a.b.example.com`, not `example.com`);
 * - any other `*` (a run counts as one) matches zero or more DNS characters `[-a-zA-Z0-9_]` within one
 *   label: never a dot, so `*.example.com` matches `a.example.com` but not `a.b.example.com`.
 * Everything else matches literally. Selectors may only use `[-a-zA-Z0-9_.]` (and `*`), so a queried
 * name with any other character matches no selector.
 */

/** Longest matchName / matchPattern Cilium accepts (after trimming spaces). */
export const FQDN_SELECTOR_MAX_LENGTH = 255;

export interface FqdnSelector {
  matchName?: string | undefined;
  matchPattern?: string | undefined;
}

const NAME_CHARS = /^[-a-zA-Z0-9_.]+$/;
const PATTERN_CHARS = /^[-a-zA-Z0-9_.*]+$/;
const DNS_CHAR = '[-a-z0-9_]';

/** A name as the proxy and the matchers compare it: trimmed, lower-cased, with the trailing dot. */
export function fqdnNormalize(name: string): string {
  const n = name.trim().toLowerCase();
  return n.endsWith('.') ? n : `${n}.`;
}

/** Why a matchName is invalid, or undefined when it is fine. */
export function matchNameProblem(name: string): string | undefined {
  if (name.trim().length > FQDN_SELECTOR_MAX_LENGTH) return `must be at most ${FQDN_SELECTOR_MAX_LENGTH} characters`;
  if (!NAME_CHARS.test(name)) return `${JSON.stringify(name)} has characters other than 0-9, a-z, A-Z, ., - and _`;
  return undefined;
}

/** Why a matchPattern is invalid, or undefined when it is fine. */
export function matchPatternProblem(pattern: string): string | undefined {
  if (pattern.trim().length > FQDN_SELECTOR_MAX_LENGTH) return `must be at most ${FQDN_SELECTOR_MAX_LENGTH} characters`;
  if (!PATTERN_CHARS.test(pattern)) return `${JSON.stringify(pattern)} has characters other than 0-9, a-z, A-Z, ., -, _ and *`;
  return undefined;
}

/** Why a selector is invalid (both or neither field set, bad characters), or undefined. */
export function fqdnSelectorProblem(s: FqdnSelector): { field: 'matchName' | 'matchPattern' | ''; message: string } | undefined {
  const hasName = s.matchName !== undefined && s.matchName !== '';
  const hasPattern = s.matchPattern !== undefined && s.matchPattern !== '';
  if (hasName && hasPattern) return { field: '', message: 'only one of matchName or matchPattern may be set' };
  if (!hasName && !hasPattern) return { field: '', message: 'one of matchName or matchPattern is required' };
  if (hasName) {
    const p = matchNameProblem(s.matchName!);
    return p ? { field: 'matchName', message: p } : undefined;
  }
  const p = matchPatternProblem(s.matchPattern!);
  return p ? { field: 'matchPattern', message: p } : undefined;
}

function isAllStars(pattern: string): boolean {
  const p = pattern.endsWith('.') ? pattern.slice(0, -1) : pattern;
  return p.length > 0 && /^\*+$/.test(p);
}

/** The anchored regular expression source for a (validated) matchPattern. */
export function patternRegexSource(pattern: string): string {
  const p = pattern.trim().toLowerCase();
  if (isAllStars(p)) return `^(?:(?:${DNS_CHAR}+\\.)+|\\.)$`;
  const fq = p.endsWith('.') ? p : `${p}.`;
  let out = '';
  let i = 0;
  const lead = /^\*{2,}\./.exec(fq);
  if (lead) {
    out += `(?:${DNS_CHAR}+\\.)+`;
    i = lead[0].length;
  }
  for (; i < fq.length; i++) {
    const c = fq[i]!;
    if (c === '.') out += '\\.';
    else if (c === '*') {
      while (fq[i + 1] === '*') i++;
      out += `${DNS_CHAR}*`;
    } else out += c; // validated: [-a-z0-9_] only, none special outside a class
  }
  return `^${out}$`;
}

export type FqdnMatcher = (name: string) => boolean;

/** A matcher for one (validated) selector; the name may be in any case, with or without the trailing dot. */
export function fqdnMatcher(s: FqdnSelector): FqdnMatcher {
  if (s.matchName) {
    const want = fqdnNormalize(s.matchName);
    return (name) => fqdnNormalize(name) === want;
  }
  const re = new RegExp(patternRegexSource(s.matchPattern ?? ''));
  return (name) => re.test(fqdnNormalize(name));
}

/**
 * The identity label a selector puts on the addresses it learned (Cilium: source `fqdn`), e.g.
 * `fqdn:matchName:api.example.com.`; written normalised so equal selectors share one identity.
 */
export function fqdnSelectorLabel(s: FqdnSelector): string {
  return s.matchName ? `fqdn:matchName:${fqdnNormalize(s.matchName)}` : `fqdn:matchPattern:${fqdnNormalize(s.matchPattern ?? '')}`;
}

/** The label key (without the `fqdn:` source) as selectors name it. */
export function fqdnSelectorKey(s: FqdnSelector): string {
  return fqdnSelectorLabel(s).slice('fqdn:'.length);
}
