/**
 * What one policy request may hold besides its size (4 MiB, POLICY_BODY_LIMIT in api/security.ts).
 * Within 4 MiB a YAML flow sequence, 466k tiny documents or a JSON array of 350k objects kept the
 * event loop busy 25-37 s (past the 30 s systemd watchdog) with up to 2.8 GB RSS; these bounds are
 * checked before the documents are built, and the parsing runs in a worker (parse-offthread.ts).
 * The README ("Policy limits") lists them; a request beyond one gets 413 naming it.
 */
export const POLICY_LIMITS = {
  /** Policy documents in one request (YAML documents, JSON array items and List items). */
  documents: 10_000,
  /**
   * YAML/JSON nodes in one request (every mapping, sequence and scalar). For YAML the text is first
   * estimated cheaply (a node per line plus one per flow `[`, `{` and `,`), then the parsed value counted.
   */
  nodes: 250_000,
  /** Nesting of a JSON body (a policy nests about a dozen levels; YAML has its own guard, yamlNestingProblem). */
  depth: 64,
  /** Validation stops after this many problems (the answer says that more may follow). */
  issues: 10,
  /** Heap of the parser worker, MiB: a body beyond it fails the request, not the agent. */
  parserHeapMb: 512,
  /** One request's parsing and validation, ms. */
  parseTimeoutMs: 30_000,
} as const;
