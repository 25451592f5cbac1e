/**
 * What a compile may use of the BPF maps it fills, counted while it runs. A policy of a few KiB can
 * expand to millions of entries (ports x peers x endpoints) or tens of thousands of CIDR identities;
 * compiling all of it takes tens of seconds and writing it fills the maps halfway. The meter refuses
 * as soon as a count passes the room the maps have, before anything is built in full or written.
 *
 * The compiler calls it at three points (kept apart from the compile logic):
 * - `cidrIdentities(n)`: the CIDR identities the policies need, each an ipcache entry (and, once known,
 *   with the prefixes of the ipBlock view, cidr.ts ipBlockView);
 * - `sectionPairs(n, ref)`: the (identity x port key) pairs the rule sections selecting one endpoint
 *   class add up to, section by section, before they are made (overlapping pairs still count: this
 *   bounds the compile's work);
 * - `classEntries(n, ref)`: the resolved entries of one class times its endpoints, summed over classes.
 */
import { KitnetError } from '../../common/errors.js';

export interface CompileBudget {
  /** Entries the policy map holds over all endpoints (its max_entries). */
  policyEntries: number;
  /** Ipcache entries left for CIDR identities (max_entries minus workload, host and remote entries). */
  cidrIdentities: number;
  /** max_entries of the ipcache, for the message. */
  ipcacheCapacity: number;
}

/** Thrown when a compile would need more map room than there is (AGENT_ERR_POLICY_CAPACITY, 422). */
export class PolicyCapacityError extends KitnetError {
  override name = 'PolicyCapacityError';
  constructor(message: string) {
    super('AGENT_ERR_POLICY_CAPACITY', message);
  }
}

export class CompileMeter {
  private entries = 0;
  constructor(readonly budget: CompileBudget) {}

  cidrIdentities(n: number): void {
    const b = this.budget;
    if (n > b.cidrIdentities) {
      throw new PolicyCapacityError(
        `the policies need ${n} CIDR identities (and ipBlock prefixes), more than the ${b.cidrIdentities} entries left in the ipcache map (limit: ipcache max_entries ${b.ipcacheCapacity}, less the workload, host and remote entries)`,
      );
    }
  }

  sectionPairs(n: number, ref: string): void {
    if (n > this.budget.policyEntries) {
      throw new PolicyCapacityError(
        `the rules selecting one endpoint expand to ${n} policy map entries (peers x ports) by ${ref}, more than the policy map holds (limit: policy max_entries ${this.budget.policyEntries})`,
      );
    }
  }

  classEntries(n: number, ref: string): void {
    this.entries += n;
    if (this.entries > this.budget.policyEntries) {
      throw new PolicyCapacityError(
        `the policies compile to more than ${this.budget.policyEntries} policy map entries over all endpoints (limit: policy max_entries ${this.budget.policyEntries}; reached while compiling ${ref})`,
      );
    }
  }
}
