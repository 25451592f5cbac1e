/**
 * From request text (YAML with `---` documents, or JSON: an object, an array, or a `kind: List` with
 * `items`, in any mix) to raw documents, refusing input beyond POLICY_LIMITS before the parser or the
 * validation does work proportional to it.
 */
import YAML from 'yaml';
import { yamlNestingProblem, yamlShapeEstimate } from '../../common/yaml-guard.js';
import { POLICY_LIMITS } from './limits.js';
import { PolicyTooLargeError, PolicyValidationError, type PolicyIssue } from './parse-errors.js';

function shapeCheck(documents: number, nodes: number, estimated: boolean): void {
  const about = estimated ? 'about ' : '';
  if (documents > POLICY_LIMITS.documents) throw new PolicyTooLargeError(`${about}${documents} policy documents`, `${POLICY_LIMITS.documents} documents`);
  if (nodes > POLICY_LIMITS.nodes) throw new PolicyTooLargeError(`${estimated ? 'about ' : 'more than '}${nodes} YAML/JSON nodes`, `${POLICY_LIMITS.nodes} nodes`);
}

/**
 * Nodes (objects, arrays, scalars) in a parsed value, counted without recursion and stopping once
 * past `max` (the count returned is then max + 1); and how deep they nest.
 */
export function valueShape(root: unknown, max: number = POLICY_LIMITS.nodes): { nodes: number; depth: number } {
  let nodes = 0;
  let depth = 0;
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (d > depth) depth = d;
    if (++nodes > max) break;
    if (Array.isArray(v)) for (const x of v) stack.push([x, d + 1]);
    else if (typeof v === 'object' && v !== null) for (const k in v) stack.push([(v as Record<string, unknown>)[k], d + 1]);
  }
  return { nodes, depth };
}

/**
 * Refuses documents that are already values (a JSON request body) beyond POLICY_LIMITS: the node
 * count stops at the limit, so this costs at most the limit's worth of steps. Deep nesting is refused
 * too (policies nest about a dozen levels): copying such a value to the parser thread recurses.
 */
export function policyObjectsBound(raw: readonly unknown[]): void {
  let documents = 0;
  for (const v of raw) documents += isObject(v) && typeof v.kind === 'string' && v.kind.endsWith('List') && Array.isArray(v.items) ? v.items.length : 1;
  const shape = valueShape(raw);
  if (shape.depth > POLICY_LIMITS.depth) {
    throw new PolicyValidationError([{ document: 1, ref: 'JSON', path: '', message: `nested too deeply (more than ${POLICY_LIMITS.depth} levels)` }]);
  }
  shapeCheck(documents, shape.nodes, false);
}


/** Splits text into raw documents. Syntax errors become issues of document 0 positions. */
export function documentsSplit(text: string, contentType?: string): unknown[] {
  const trimmed = text.trim();
  const explicitJson = contentType !== undefined && /json/i.test(contentType);
  const looksJson = explicitJson || (!contentType && (trimmed.startsWith('{') || trimmed.startsWith('[')));
  let roots: unknown[] | undefined;
  if (looksJson) {
    try {
      roots = [JSON.parse(trimmed)];
    } catch (e) {
      // `[` / `{` may also start YAML flow style; only an explicit JSON content type insists.
      if (explicitJson) {
        throw new PolicyValidationError([{ document: 1, ref: 'JSON', path: '', message: `not valid JSON: ${(e as Error).message}` }]);
      }
    }
  }
  if (!roots) {
    const nesting = yamlNestingProblem(text);
    if (nesting) throw new PolicyValidationError([{ document: 1, ref: 'YAML', path: '', message: nesting }]);
    const shape = yamlShapeEstimate(text);
    shapeCheck(shape.documents, shape.nodes, true);
    let docs: ReturnType<typeof YAML.parseAllDocuments>;
    try {
      docs = YAML.parseAllDocuments(text);
    } catch (e) {
      // Nesting too deep for the parser's recursion.
      throw new PolicyValidationError([{ document: 1, ref: 'YAML', path: '', message: `not valid YAML: ${(e as Error).message}` }]);
    }
    const list = Array.isArray(docs) ? docs : [docs];
    const yamlRoots: unknown[] = [];
    roots = yamlRoots;
    const issues: PolicyIssue[] = [];
    list.forEach((d, i) => {
      if (d.errors.length > 0) {
        issues.push({ document: i + 1, ref: 'YAML', path: '', message: `not valid YAML: ${d.errors[0]!.message}` });
        return;
      }
      let v: unknown;
      try {
        // Alias bombs ("Excessive alias count") and too deep nesting fail here.
        v = d.toJS();
      } catch (e) {
        issues.push({ document: i + 1, ref: 'YAML', path: '', message: `not valid YAML: ${(e as Error).message}` });
        return;
      }
      if (v !== null && v !== undefined) yamlRoots.push(v);
    });
    if (issues.length) throw new PolicyValidationError(issues);
  }
  const out: unknown[] = [];
  // Lists of lists are fine; a thousand levels of them are an attack on the stack.
  const expand = (v: unknown, depth: number) => {
    if (depth > 16) throw new PolicyValidationError([{ document: 1, ref: 'document', path: '', message: 'lists nested more than 16 levels deep' }]);
    if (Array.isArray(v)) v.forEach((x) => expand(x, depth + 1));
    else if (isObject(v) && typeof v.kind === 'string' && v.kind.endsWith('List') && Array.isArray(v.items)) v.items.forEach((x) => expand(x, depth + 1));
    else out.push(v);
  };
  // The estimate bounded the YAML parser's work; the parsed value is counted exactly.
  shapeCheck(0, valueShape(roots).nodes, false);
  roots.forEach((r) => expand(r, 0));
  shapeCheck(out.length, 0, false);
  return out;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
