import type { Logger } from 'pino';
import { rcuExpeditedSet } from '../netkit/index.js';

/**
 * `datapath.expediteRcu`: the operator's opt-in to /sys/kernel/rcu_expedited=1, a host-wide setting
 * (see netkit/rcu.ts for what it costs). Applied at start and on every reload. Turning the key off
 * puts back the value kitnet found, and only if kitnet changed it: a host that was expedited before
 * stays so. It is not undone when the agent stops (a restart would otherwise slow the re-attach of
 * every workload); remove the key and reload to undo it.
 */
export class ExpediteRcu {
  /** The host's value before kitnet changed it; undefined while kitnet has not changed it. */
  private found: boolean | undefined;

  constructor(private readonly log: Logger) {}

  /** Never throws: a host that refuses the setting only makes registrations slower (logged). */
  apply(want: boolean): void {
    try {
      if (want) {
        const before = rcuExpeditedSet(true);
        if (!before && this.found === undefined) this.found = before;
        if (!before) this.log.warn({ rcuExpedited: true, previous: before }, 'datapath.expediteRcu: set /sys/kernel/rcu_expedited=1 (host-wide)');
      } else if (this.found !== undefined) {
        rcuExpeditedSet(this.found);
        this.log.info({ rcuExpedited: this.found }, 'datapath.expediteRcu off: /sys/kernel/rcu_expedited put back');
        this.found = undefined;
      }
    } catch (err) {
      this.log.warn({ error: (err as Error).message }, 'datapath.expediteRcu could not be applied; attaching programs waits for RCU grace periods (~27 ms per workload)');
    }
  }
}
