/** Aligned columns like kubectl's: header row, two spaces between columns. */
export function table(headers: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

interface FlowEndpoint {
  identity: number;
  namespace?: string;
  pod_name?: string;
  labels?: string[];
}

interface FlowLine {
  flow: {
    time: string;
    verdict: string;
    drop_reason_desc?: string;
    IP?: { source: string; destination: string };
    l4?: { TCP?: { source_port: number; destination_port: number }; UDP?: { source_port: number; destination_port: number }; SCTP?: { source_port: number; destination_port: number } };
    source: FlowEndpoint;
    destination: FlowEndpoint;
    traffic_direction: string;
    trace_observation_point?: string;
    is_reply: boolean;
    Summary: string;
    source_names?: readonly string[];
    destination_names?: readonly string[];
    l7?: { type: string };
  };
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function stamp(iso: string): string {
  const d = new Date(iso);
  const ms = iso.match(/\.(\d{3})/)?.[1] ?? '000';
  const hh = String(d.getHours()).padStart(2, '0');
  const mm = String(d.getMinutes()).padStart(2, '0');
  const ss = String(d.getSeconds()).padStart(2, '0');
  return `${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${hh}:${mm}:${ss}.${ms}`;
}

function endpointText(ep: FlowEndpoint, ip: string, port: number | undefined, names?: readonly string[]): string {
  // as hubble: a learned name in place of the address of a peer that is no workload
  const who = ep.pod_name ? `${ep.namespace}/${ep.pod_name}` : (names?.[0] ?? ip);
  const where = port !== undefined ? `${who}:${port}` : who;
  const name = ep.pod_name ? '' : (ep.labels?.[0]?.replace(/^reserved:/, '') ?? '');
  return `${where} (${name ? `${name}, ` : ''}ID:${ep.identity})`;
}

const OBS: Record<string, string> = { TO_ENDPOINT: 'to-endpoint', FROM_ENDPOINT: 'from-endpoint' };

/** One line in the manner of `hubble observe` compact output. */
export function flowCompact(line: FlowLine, colour: boolean): string {
  const f = line.flow;
  const ports = f.l4?.TCP ?? f.l4?.UDP ?? f.l4?.SCTP;
  const src = endpointText(f.source, f.IP?.source ?? '', ports?.source_port, f.source_names);
  const dst = endpointText(f.destination, f.IP?.destination ?? '', ports?.destination_port, f.destination_names);
  const arrow = f.is_reply ? '<-' : '->';
  const [left, right] = f.is_reply ? [dst, src] : [src, dst];
  let verdict = f.verdict;
  if (colour) verdict = f.verdict === 'DROPPED' ? `\x1b[31m${verdict}\x1b[0m` : `\x1b[32m${verdict}\x1b[0m`;
  const detail = f.verdict === 'DROPPED' && !f.l7 ? `${f.drop_reason_desc ?? 'DROPPED'}` : f.Summary;
  // L7 flows as hubble shows them: dns-request / dns-response, seen by the proxy
  const obs = f.l7 ? `dns-${f.l7.type.toLowerCase()} proxy` : (OBS[f.trace_observation_point ?? ''] ?? f.traffic_direction.toLowerCase());
  return `${stamp(f.time)}: ${left} ${arrow} ${right} ${obs} ${verdict} (${detail})`;
}

const TABLE_COLUMNS = ['TIMESTAMP', 'SOURCE', 'DESTINATION', 'TYPE', 'VERDICT', 'SUMMARY'];
const TABLE_WIDTHS = [22, 38, 38, 14, 10];

export function flowTableHeader(): string {
  return TABLE_COLUMNS.map((c, i) => (i < TABLE_WIDTHS.length ? c.padEnd(TABLE_WIDTHS[i]!) : c)).join(' ');
}

/** A fixed-width row, so a followed stream lines up without knowing later rows. */
export function flowTableRow(line: FlowLine): string {
  const f = line.flow;
  const ports = f.l4?.TCP ?? f.l4?.UDP ?? f.l4?.SCTP;
  const cells = [
    stamp(f.time),
    endpointText(f.source, f.IP?.source ?? '', ports?.source_port),
    endpointText(f.destination, f.IP?.destination ?? '', ports?.destination_port),
    OBS[f.trace_observation_point ?? ''] ?? f.traffic_direction.toLowerCase(),
    f.verdict,
    f.verdict === 'DROPPED' ? (f.drop_reason_desc ?? '') : f.Summary,
  ];
  return cells.map((c, i) => (i < TABLE_WIDTHS.length ? c.padEnd(TABLE_WIDTHS[i]!) : c)).join(' ');
}

/** A workload's STATE cell: its state, and for a failed one how many retries and when the next is due. */
export function workloadStateText(w: { state: string; retries?: number; nextRetryAt?: string | null }, now = Date.now()): string {
  if (w.state !== 'error' && !w.retries) return w.state;
  const parts: string[] = [];
  if (w.retries) parts.push(`${w.retries} ${w.retries === 1 ? 'retry' : 'retries'}`);
  if (w.nextRetryAt) parts.push(`next in ${Math.max(0, Math.ceil((Date.parse(w.nextRetryAt) - now) / 1000))}s`);
  return parts.length ? `${w.state} (${parts.join(', ')})` : w.state;
}
