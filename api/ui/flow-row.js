// One flow as a row of the selection panel's table: time, source, destination (with direction), L4
// and verdict (with the drop reason). DOM only, no page state.
/* global document */

function endpointText(ep) {
  if (ep.pod_name) return `${ep.namespace}/${ep.pod_name}`;
  const reserved = (ep.labels ?? []).find((l) => l.startsWith('reserved:'));
  const cidr = (ep.labels ?? []).find((l) => l.startsWith('cidr:'));
  return reserved ?? cidr ?? `identity ${ep.identity}`;
}

/** [protocol and ports, detail] of a flow for the table. */
function l4Text(f) {
  const l4 = f.l4 ?? {};
  for (const p of ['TCP', 'UDP', 'SCTP']) {
    if (l4[p]) {
      const flags = p === 'TCP' ? Object.keys(l4[p].flags ?? {}).join(' ') : '';
      return [`${p} ${l4[p].source_port}→${l4[p].destination_port}`, flags];
    }
  }
  if (l4.ICMPv4) return ['ICMPv4', f.Summary?.replace(/^ICMPv4 /, '') ?? `type ${l4.ICMPv4.type}`];
  if (l4.ICMPv6) return ['ICMPv6', f.Summary?.replace(/^ICMPv6 /, '') ?? `type ${l4.ICMPv6.type}`];
  // ARP and frames that are not IP: their summary (ARP, the EtherType)
  return f.Summary === 'ARP' || !f.IP ? [f.Summary ?? '', ''] : ['IP', ''];
}

export function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

export function flowRow(rec) {
  const f = rec.flow;
  const tr = document.createElement('tr');
  tr.className = f.verdict;
  tr.dataset.verdict = f.verdict;
  const t = new Date(f.time ?? rec.time);
  tr.append(cell(Number.isNaN(t.getTime()) ? '' : t.toISOString().slice(11, 23), 't'));
  const src = cell(`${endpointText(f.source)} `);
  src.title = f.IP?.source ?? '';
  const dst = cell(`${endpointText(f.destination)} `);
  dst.title = f.IP?.destination ?? '';
  const dir = document.createElement('span');
  dir.className = 'dir';
  dir.textContent = `${f.traffic_direction === 'EGRESS' ? 'egress' : 'ingress'}${f.is_reply ? ' reply' : ''}`;
  dst.append(dir);
  const [l4, detail] = l4Text(f);
  const l4Cell = cell(l4, 'l4');
  if (detail) {
    const small = document.createElement('small');
    small.textContent = detail;
    l4Cell.append(small);
  }
  tr.append(src, dst, l4Cell);
  const v = cell(f.verdict, `v ${f.verdict}`);
  if (f.verdict === 'DROPPED') {
    const r = document.createElement('span');
    r.className = 'reason';
    r.textContent = f.drop_reason_desc ?? 'DROP_REASON_UNKNOWN';
    v.append(r);
  }
  tr.append(v);
  return tr;
}
