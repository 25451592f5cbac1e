// The VM addressing server's counters in the agent's /metrics (registered by agent.ts with one call):
// what it answered, per protocol and message, and what it ignored, per protocol and reason. Read from
// the server's stats when scraped, never on the frame path.
import { Counter, type Registry } from 'prom-client';
import type { Dhcp4Stats } from './dhcp4-server.js';

function mirrored<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], read: () => Array<[Record<L, string>, number]>): void {
  new Counter<L>({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, v] of read()) this.inc(labels, v);
    },
  });
}

export function addressingMetricsRegister(registry: Registry, stats: Dhcp4Stats): void {
  mirrored(registry, 'kitnet_addressing_frames_total', 'Frames VM guests sent to the agent\'s DHCP, DHCPv6 and router solicitation sockets', [], () => [[{}, stats.frames]]);
  mirrored(registry, 'kitnet_addressing_answers_total', 'Answers sent to VM guests, by protocol (dhcp, dhcpv6, ra) and message', ['protocol', 'message'] as const, () => [
    [{ protocol: 'dhcp', message: 'offer' }, stats.offers],
    [{ protocol: 'dhcp', message: 'ack' }, stats.acks],
    [{ protocol: 'dhcp', message: 'nak' }, stats.naks],
    [{ protocol: 'ra', message: 'advertisement' }, stats.routerAdverts],
    ...Object.entries(stats.dhcp6).map(([message, n]): [{ protocol: string; message: string }, number] => [{ protocol: 'dhcpv6', message }, n]),
  ]);
  mirrored(registry, 'kitnet_addressing_ignored_total', 'Frames from VM guests answered with nothing, by protocol (dhcp, dhcpv6, ra) and reason (foreign-mac, foreign-duid, relayed, malformed, rate-limited, ...)',
    ['protocol', 'reason'] as const, () =>
      Object.entries(stats.ignoredByProtocol).flatMap(([protocol, reasons]) =>
        Object.entries(reasons).map(([reason, n]): [{ protocol: string; reason: string }, number] => [{ protocol, reason }, n])));
}
