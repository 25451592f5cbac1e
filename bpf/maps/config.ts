// `config` array, key 0: runtime knobs read by the datapath on every packet.
import { structDecode, structEncode } from '../layout.js';
import { CFG_F_EXACT_COMPLETE, CFG_F_SET, DP_CONFIG, DROP_EVENTS_BURST_DEFAULT, DROP_EVENTS_RATE_DEFAULT, DROP_EVENTS_UNLIMITED, MONITOR_AGG_DEFAULT } from '../layout.gen.js';
import type { BpfMap } from './map.js';

export interface DatapathConfig {
  /** 0 = report every packet, 1 = aggregated (new connections, TCP flag changes, closes, drops). */
  monitorAggregation: number;
  /** Aggregated mode: also report an established flow at most this often (seconds); 0 = never. */
  reportIntervalS: number;
  /** Drop events each endpoint may report per second (bpf/include/events.h); 0 = every drop. */
  dropEventsPerSecond: number;
  /** Drop events an endpoint may report at once beyond the rate (>= 1). */
  dropEventsBurst: number;
}

export const CONFIG_DEFAULT: DatapathConfig = {
  monitorAggregation: MONITOR_AGG_DEFAULT,
  reportIntervalS: 0,
  dropEventsPerSecond: DROP_EVENTS_RATE_DEFAULT,
  dropEventsBurst: DROP_EVENTS_BURST_DEFAULT,
};

// In the map 0 is the default (an entry of the earlier, shorter layout grows with zeroes), so "no
// limit" has a value of its own there.
function rateDecode(v: number): number {
  return v === 0 ? DROP_EVENTS_RATE_DEFAULT : v === DROP_EVENTS_UNLIMITED ? 0 : v;
}

const KEY0 = Buffer.alloc(4);

export class ConfigMap {
  constructor(readonly map: BpfMap) {}

  /**
   * The entry in this build's layout. The map is the loaded object's: an object of an earlier release
   * (the upgrade runs this agent with it until the new one replaces it) has the shorter dp_config, whose
   * missing fields read as zero, i.e. their defaults.
   */
  private read(): Buffer | undefined {
    const v = this.map.lookup(KEY0);
    if (!v || v.length >= DP_CONFIG.size) return v;
    const full = Buffer.alloc(DP_CONFIG.size);
    v.copy(full);
    return full;
  }

  /** Writes the entry, cut to the map's value size (the fields an earlier object lacks are dropped). */
  private write(value: Buffer): void {
    this.map.update(KEY0, value.length > this.map.valueSize ? value.subarray(0, this.map.valueSize) : value);
  }

  /** The effective configuration (defaults until the agent writes one). */
  get(): DatapathConfig {
    const v = this.read();
    const d = v && structDecode(DP_CONFIG, v);
    if (!d || !((d.flags as number) & CFG_F_SET)) return { ...CONFIG_DEFAULT };
    return {
      monitorAggregation: d.monitor_aggregation as number,
      reportIntervalS: d.report_interval_s as number,
      dropEventsPerSecond: rateDecode(d.drop_events_rate as number),
      dropEventsBurst: (d.drop_events_burst as number) || DROP_EVENTS_BURST_DEFAULT,
    };
  }

  /** True when the agent (or a previous agent run) wrote the entry. */
  isSet(): boolean {
    const v = this.read();
    return !!v && ((structDecode(DP_CONFIG, v).flags as number) & CFG_F_SET) !== 0;
  }

  private flags(): number {
    const v = this.read();
    return v ? (structDecode(DP_CONFIG, v).flags as number) : 0;
  }

  set(cfg: Partial<DatapathConfig>): DatapathConfig {
    const next = { ...this.get(), ...cfg };
    // CFG_F_EXACT_COMPLETE belongs to the loader (exactCompleteSet): kept as it is
    const flags = CFG_F_SET | (this.flags() & CFG_F_EXACT_COMPLETE);
    this.write(
      structEncode(DP_CONFIG, {
        monitor_aggregation: next.monitorAggregation,
        report_interval_s: next.reportIntervalS,
        drop_events_rate: next.dropEventsPerSecond === 0 ? DROP_EVENTS_UNLIMITED : next.dropEventsPerSecond,
        drop_events_burst: next.dropEventsBurst,
        flags,
        policy_revision: this.policyRevision(),
      }),
    );
    return next;
  }

  /** The revision the datapath checks conntrack entries against (bpf/include/conntrack.h). */
  policyRevision(): number {
    const v = this.read();
    return v ? (structDecode(DP_CONFIG, v).policy_revision as number) : 0;
  }

  /**
   * Called after every write that can change a verdict (policy entries, ipcache, endpoints): established
   * connections are checked by policy again on their next packet in the original direction. Never 0, the
   * revision of entries left by a datapath older than the revision (see ct_entry.policy_revision).
   */
  policyRevisionBump(): number {
    const v = this.read() ?? Buffer.alloc(DP_CONFIG.size);
    const d = structDecode(DP_CONFIG, v);
    const next = ((d.policy_revision as number) + 1) >>> 0 || 1;
    this.write(structEncode(DP_CONFIG, { ...d, policy_revision: next }));
    return next;
  }

  /** Whether the datapath may trust `policy_exact` / `policy_wild` to be complete (bpf/include/policy.h). */
  exactComplete(): boolean {
    return (this.flags() & CFG_F_EXACT_COMPLETE) !== 0;
  }

  /** Set by the loader once it has filled the exact-match maps from the tries; cleared while it does. */
  exactCompleteSet(on: boolean): void {
    const v = this.read() ?? Buffer.alloc(DP_CONFIG.size);
    const d = structDecode(DP_CONFIG, v);
    const flags = ((d.flags as number) & ~CFG_F_EXACT_COMPLETE) | (on ? CFG_F_EXACT_COMPLETE : 0);
    this.write(structEncode(DP_CONFIG, { ...d, flags }));
  }
}
