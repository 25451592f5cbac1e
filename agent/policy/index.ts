/** kitnet policy: parse, compile to datapath map entries, and trace verdicts offline. */
export { policiesParse, policiesFromObjects } from './parse.js';
export { PolicyValidationError, issueFormat } from './parse-errors.js';
export type { PolicyIssue } from './parse-errors.js';
export { policyCompile, IMPLICIT_RULES } from './compile.js';
export { policyTrace, policyDecide, ipcacheLookup } from './trace.js';
export type { TracePeer, TraceQuery, TraceOptions, TraceResult, TraceSide, SideReason } from './trace.js';
export {
  policyKeyEncode,
  policyKeyDecode,
  policyLookupKeyEncode,
  policyKeyPrefixLen,
  policyValueEncode,
  policyValueDecode,
  policyEntriesEncode,
  LpmTable,
  POLICY_KEY_SIZE,
  POLICY_VALUE_SIZE,
  POLICY_KEY_STATIC_PREFIX,
  POLICY_KEY_FULL_PREFIX,
  POLICY_F_DENY,
  DIRECTION_CODE,
} from './map-key.js';
export type { PolicyKey } from './map-key.js';
export { selectorMatchesStrings, selectorFormat } from './selector.js';
export { portRangePrefixes, protocolNumber, protocolName, icmpTypeNumber } from './ports.js';
export { Proto, PROTO_ANY_L4, POLICY_KINDS } from './types.js';
export type * from './types.js';
export { policyEntryFormat, endpointPolicyFormat, policyTraceFormat, identityFormat, portFormat, policyEntriesDiff, policyEntriesDiffSteps, policyEntryKey } from './format.js';
export type { IdentityNames, PolicyMapOp } from './format.js';
