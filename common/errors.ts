/**
 * The catalogue of kitnet's error codes. Every error the agent reports to a client carries one of
 * these codes; the API maps it to the HTTP status here. docs/errors.md documents each code and a test
 * keeps the two in step (the fastify lib/errors.js habit).
 */
export const ErrorCatalogue = {
  AGENT_ERR_API_VALIDATION: { status: 400, summary: 'The request body, path or query failed validation.' },
  AGENT_ERR_API_NOT_FOUND: { status: 404, summary: 'No such API route.' },
  AGENT_ERR_API_UNAUTHORIZED: { status: 401, summary: 'The TCP API needs a valid bearer token (Authorization: Bearer TOKEN); it was missing or unknown.' },
  AGENT_ERR_API_FORBIDDEN: { status: 403, summary: 'The token lacks the scope (read, register, admin) or the namespace this request needs, or the netns path or tap device matches none of its patterns.' },
  AGENT_ERR_API_BODY_TOO_LARGE: { status: 413, summary: 'The request body exceeds the limit (1 MiB; 4 MiB for policy documents).' },
  AGENT_ERR_API_UNSUPPORTED_MEDIA_TYPE: { status: 415, summary: 'The request body has a content type this route does not accept (JSON; YAML or text for policies).' },
  AGENT_ERR_API_RATE_LIMITED: { status: 429, summary: 'Too many requests from this client (token, address or the unix socket); retry after the time in Retry-After.' },
  AGENT_ERR_API_TOO_MANY_STREAMS: { status: 429, summary: 'Too many GET /v1/flows replies open at once (follow streams, or replies not yet read to their end), on this connection or on the agent; the message names the limit. Read or close one and retry.' },
  AGENT_ERR_WORKLOAD_EXISTS: { status: 409, summary: 'A workload with this namespace and name is already registered.' },
  AGENT_ERR_WORKLOAD_NOT_FOUND: { status: 404, summary: 'No workload with this namespace and name is registered.' },
  AGENT_ERR_WORKLOAD_NETNS: { status: 422, summary: 'The given network namespace path does not exist or is not a network namespace.' },
  AGENT_ERR_WORKLOAD_NETNS_HOST: { status: 422, summary: "The network namespace is the agent's own or PID 1's (the host's); no workload is ever put there." },
  AGENT_ERR_WORKLOAD_NETNS_IN_USE: { status: 409, summary: 'Another workload already uses this network namespace (compared by namespace, whatever the path).' },
  AGENT_ERR_WORKLOAD_NETNS_FOREIGN: { status: 403, summary: 'The network namespace holds interfaces kitnet did not make (anything besides lo); only an admin may register a workload there.' },
  AGENT_ERR_WORKLOAD_NETNS_ROUTES: { status: 409, summary: 'The network namespace already has a default route (or another route kitnet needs) that kitnet did not make; kitnet never replaces routes.' },
  AGENT_ERR_WORKLOAD_INTERFACE: { status: 409, summary: 'The interface name is taken inside the workload namespace.' },
  AGENT_ERR_WORKLOAD_DEVICE: { status: 422, summary: 'The device to adopt (kind tap) does not exist in the host namespace or is not a tap.' },
  AGENT_ERR_WORKLOAD_DEVICE_IN_USE: { status: 409, summary: "The device to adopt (kind tap) is already another workload's." },
  AGENT_ERR_IPAM_BAD_ADDRESS: { status: 400, summary: 'An address is not a valid IP address of the expected family.' },
  AGENT_ERR_IPAM_OUT_OF_POOL: { status: 422, summary: 'A requested address lies outside the configured pool.' },
  AGENT_ERR_IPAM_ADDRESS_TAKEN: { status: 409, summary: 'A requested address is already assigned to another workload.' },
  AGENT_ERR_IPAM_POOL_EXHAUSTED: { status: 409, summary: 'The address pool has no free address left.' },
  AGENT_ERR_IDENTITY_EXHAUSTED: { status: 409, summary: 'No free numeric identity is left.' },
  AGENT_ERR_CLUSTER_UNAVAILABLE: { status: 503, summary: "Cluster mode: etcd did not answer (unreachable, timed out, no quorum) or kept refusing the change; nothing was changed. Retry when etcd is back." },
  AGENT_ERR_POLICY_INVALID: { status: 400, summary: 'A policy document is invalid; the message names the document and the field path. Nothing was applied.' },
  AGENT_ERR_POLICY_TOO_LARGE: { status: 413, summary: 'A policy request holds more documents or YAML/JSON nodes than the agent parses in one request; the message names the limit. Nothing was applied.' },
  AGENT_ERR_POLICY_CAPACITY: { status: 422, summary: 'The policies would compile to more entries than a BPF map holds (policy map entries, or CIDR identities in the ipcache), or a workload registration or relabel would add more policy entries than the policy map has left; the message names the map, the limit and the policies or workload. Nothing was applied.' },
  AGENT_ERR_POLICY_NOT_FOUND: { status: 404, summary: 'No policy with this kind, namespace and name exists.' },
  AGENT_ERR_TRACE_PEER: { status: 422, summary: 'A policy trace peer does not resolve to a workload, a known identity or an address.' },
  AGENT_ERR_CONFIG_INVALID: { status: 422, summary: 'The config file failed to load on reload; the message names the file and every bad key (field: the first). The running config is unchanged.' },
  AGENT_ERR_AGENT_RUNNING: { status: 409, summary: 'At start: another agent holds the lock of this state dir or pin root (the message names its pid and the lock file); this agent touched nothing.' },
  AGENT_ERR_AGENT_LOCK: { status: 500, summary: 'At start: the lock file of the state dir or pin root cannot be created or locked (the message names the key and the path).' },
  AGENT_ERR_API_STARTING: { status: 503, summary: 'The agent is bound but still restoring its workloads; retry after the seconds in Retry-After.' },
  AGENT_ERR_DATAPATH_UNSUPPORTED: { status: 422, summary: 'The requested datapath mode needs a kernel feature this host lacks.' },
  AGENT_ERR_MAP_FULL: { status: 507, summary: 'The kernel refused a map write because the map is full (ENOSPC / E2BIG) although the agent counted room (entries it did not write); the message names the map, its max_entries and what to do. The change was rolled back.' },
  AGENT_ERR_KERNEL: { status: 500, summary: 'The kernel rejected an operation; the message names the device, operation, errno and a hint.' },
  AGENT_ERR_INTERNAL: { status: 500, summary: 'An unexpected internal error; see the agent log.' },
} as const satisfies Record<string, { status: number; summary: string }>;

export type ErrorCode = keyof typeof ErrorCatalogue;

export class KitnetError extends Error {
  override name = 'KitnetError';
  readonly code: ErrorCode;
  readonly statusCode: number;
  /** The request field the error is about, e.g. `ipv4` or `netns`. */
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, opts: { field?: string; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.code = code;
    this.statusCode = ErrorCatalogue[code].status;
    this.field = opts.field;
  }
}
