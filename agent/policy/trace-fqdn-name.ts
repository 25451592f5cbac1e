/**
 * The name `policy trace --to-fqdn` takes: one DNS name, checked the same way by the CLI and the agent
 * (no imports, so the CLI loads nothing else for it).
 */

/** Longest name as text without the trailing dot (RFC 1035: 255 octets on the wire). */
export const FQDN_NAME_MAX_LENGTH = 253;
const LABEL = /^[a-z0-9_](?:[-a-z0-9_]{0,61}[a-z0-9_])?$/;

/** Why `name` is not a name to trace (wildcards belong in selectors, not here), or undefined. */
export function fqdnNameProblem(name: string): string | undefined {
  const n = name.trim().toLowerCase().replace(/\.$/, '');
  if (n === '') return 'must be a DNS name such as api.example.com';
  if (n.length > FQDN_NAME_MAX_LENGTH) return `must be at most ${FQDN_NAME_MAX_LENGTH} characters`;
  if (n.includes('*')) return `${JSON.stringify(name)} is a pattern: trace one name (patterns belong in toFQDNs selectors)`;
  for (const label of n.split('.')) {
    if (label === '') return `${JSON.stringify(name)} has an empty label (two dots in a row, or a leading dot)`;
    if (label.length > 63) return `${JSON.stringify(name)} has a label longer than 63 characters`;
    if (!LABEL.test(label)) return `${JSON.stringify(name)} has characters other than a-z, 0-9, - and _ (or a label starting or ending with -)`;
  }
  return undefined;
}

/** The name as the FQDN cache keys it: lower case, no trailing dot (call after fqdnNameProblem). */
export function fqdnNameNormalize(name: string): string {
  return name.trim().toLowerCase().replace(/\.$/, '');
}
