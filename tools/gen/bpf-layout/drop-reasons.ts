// The drop reasons the datapath reports, as Hubble numbers them. Part of the generator (../bpf-layout.ts).

/**
 * Hubble DropReason numbers (cilium api/v1/flow/flow.proto; descriptions from pkg/monitor/api/drop.go).
 * The numbers are ABI shared with Hubble consumers: never renumber, only add. Only the reasons kitnet can
 * produce are listed. Cilium's C names differ: UNSUPPORTED_L3_PROTOCOL is its DROP_UNKNOWN_L3 (EtherTypes
 * other than IPv4, IPv6 and ARP, VLAN-tagged frames), UNSUPPORTED_L2_PROTOCOL its DROP_UNSUPPORTED_L2.
 */
export const DROP_REASONS: Array<[name: string, value: number, desc: string]> = [
  ['INVALID_SOURCE_MAC', 130, 'Invalid source mac'],
  ['INVALID_DESTINATION_MAC', 131, 'Invalid destination mac'],
  ['INVALID_SOURCE_IP', 132, 'Invalid source ip'],
  ['POLICY_DENIED', 133, 'Policy denied'],
  ['INVALID_PACKET_DROPPED', 134, 'Invalid packet'],
  ['CT_TRUNCATED_OR_INVALID_HEADER', 135, 'CT: Truncated or invalid header'],
  ['CT_UNKNOWN_L4_PROTOCOL', 137, 'CT: Unknown L4 protocol'],
  ['UNSUPPORTED_L3_PROTOCOL', 139, 'Unsupported L3 protocol'],
  ['ERROR_WRITING_TO_PACKET', 141, 'Error writing to packet'],
  ['UNKNOWN_L4_PROTOCOL', 142, 'Unknown L4 protocol'],
  ['UNKNOWN_ICMPV4_TYPE', 144, 'Unknown ICMPv4 type'],
  ['UNKNOWN_ICMPV6_TYPE', 146, 'Unknown ICMPv6 type'],
  ['CT_MAP_INSERTION_FAILED', 155, 'CT: Map insertion failed'],
  ['INVALID_IPV6_EXTENSION_HEADER', 156, 'Invalid IPv6 extension header'],
  ['IP_FRAGMENTATION_NOT_SUPPORTED', 157, 'Fragmentation not supported'],
  ['NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION', 165, 'No configuration available to perform policy decision'],
  ['UNSUPPORTED_L2_PROTOCOL', 166, 'Unsupported L2 protocol'],
  ['INVALID_IDENTITY', 171, 'Invalid identity'],
  ['UNKNOWN_SENDER', 172, 'Unknown sender'],
  ['FORBIDDEN_ICMPV6_MESSAGE', 176, 'Forbidden ICMPv6 message'],
  ['POLICY_DENY', 181, 'Policy denial'],
  ['AUTH_REQUIRED', 189, 'Authentication required'],
  ['DROP_RATE_LIMITED', 198, 'Rate limited'],
  ['DROP_EP_NOT_READY', 203, 'Endpoint policy program not available'],
];

/** C macro of a drop reason: flow.proto's DROP_RATE_LIMITED stays DROP_RATE_LIMITED, POLICY_DENY becomes DROP_POLICY_DENY. */
export function dropMacro(name: string): string {
  return name.startsWith('DROP_') ? name : `DROP_${name}`;
}
