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
import { globMatch } from '../../common/glob.js';

/** Longest matchName / matchPattern Cilium accepts (after trimming spaces). */
export const FQDN_SELECTOR_MAX_LENGTH = 255;

export interface FqdnSelector {
  matchName?: string | undefined;
  matchPattern?: string | undefined;
}

const NAME_CHARS = /^[-a-zA-Z0-9_.]+$/;
const PATTERN_CHARS = /^[-a-zA-Z0-9_.*]+$/;

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

/** A name of DNS characters and dots only: anything else matches no selector (they may hold no other). */
const MATCHABLE_NAME = /^[-a-z0-9_.]*$/;
const DNS_LABEL = /^[-a-z0-9_]+$/;

export type FqdnMatcher = (name: string) => boolean;

/**
 * A matcher for a (validated) matchPattern, applied to a normalised name (fqdnNormalize). Label by
 * label with globMatch, never a regular expression: a workload chooses the names it asks for, and a
 * backtracking expression of a pattern with many stars would let one query hold the agent's thread for
 * seconds (common/glob.ts).
 */
function patternMatcher(pattern: string): FqdnMatcher {
  const p = pattern.trim().toLowerCase();
  const allLabels = (labels: string[]) => labels.every((l) => DNS_LABEL.test(l));
  if (isAllStars(p)) return (n) => n === '.' || (n.endsWith('.') && allLabels(n.slice(0, -1).split('.')));
  const fq = p.endsWith('.') ? p : `${p}.`;
  const lead = /^\*{2,}\./.exec(fq);
  // Both sides keep the trailing dot's empty last label. A run of stars matches as one star does.
  const parts = fq.slice(lead ? lead[0].length : 0).split('.');
  return (n) => {
    if (!MATCHABLE_NAME.test(n)) return false;
    const labels = n.split('.');
    // A leading `**.`: one or more whole labels of DNS characters before the rest of the pattern.
    const skip = labels.length - parts.length;
    if (lead ? skip < 1 || !allLabels(labels.slice(0, skip)) : skip !== 0) return false;
    return parts.every((part, i) => globMatch(part, labels[skip + i]!));
  };
}

/** A matcher for one (validated) selector; the name may be in any case, with or without the trailing dot. */
export function fqdnMatcher(s: FqdnSelector): FqdnMatcher {
  if (s.matchName) {
    const want = fqdnNormalize(s.matchName);
    return (name) => fqdnNormalize(name) === want;
  }
  const match = patternMatcher(s.matchPattern ?? '');
  return (name) => match(fqdnNormalize(name));
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
