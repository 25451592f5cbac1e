// The service map page: workloads from GET /v1/workloads, flows live from GET /v1/flows?follow=true
// (newline-delimited JSON read with fetch streaming), drawn with cytoscape; clicking a node or an edge
// lists its recent flows with GET /v1/flows and Hubble filters.
/* global window, document, fetch, TextDecoder, URLSearchParams, setTimeout, clearTimeout, setInterval, requestAnimationFrame, console */
import cytoscape from '/ui/vendor/cytoscape.mjs';

// fcose (loaded by classic script tags before this module) lays out compound (namespace) nodes well;
// without it the built-in cose layout is used.
const FCOSE = typeof window.cytoscapeFcose === 'function';
if (FCOSE) cytoscape.use(window.cytoscapeFcose);
import { edgeLabel, flowMatches, ServiceMap } from '/ui/graph.js';
import { cell, flowRow } from '/ui/flow-row.js';

const FLOW_LIST_MAX = 200;
const model = new ServiceMap();
const $ = (id) => document.getElementById(id);

const cy = cytoscape({
  container: $('map'),
  wheelSensitivity: 0.3,
  maxZoom: 1.7,
  minZoom: 0.2,
  boxSelectionEnabled: false,
  style: [
    {
      selector: 'node',
      style: {
        label: 'data(label)',
        'text-wrap': 'wrap',
        'text-valign': 'bottom',
        'text-margin-y': 6,
        'font-size': 12,
        color: '#0f172a',
        'text-outline-color': '#f8fafc',
        'text-outline-width': 2,
        width: 44,
        height: 44,
        'border-width': 2,
        'border-color': '#fff',
      },
    },
    { selector: 'node[type = "workload"]', style: { shape: 'ellipse', 'background-color': '#3b82f6' } },
    { selector: 'node[type = "vm"]', style: { shape: 'round-rectangle', 'background-color': '#8b5cf6', width: 52, height: 40 } },
    { selector: 'node[type = "world"]', style: { shape: 'ellipse', 'background-color': '#0ea5e9', width: 54, height: 54 } },
    { selector: 'node[type = "host"]', style: { shape: 'round-rectangle', 'background-color': '#334155', width: 50, height: 40 } },
    { selector: 'node[type = "reserved"], node[type = "identity"], node[type = "cidr"]', style: { shape: 'diamond', 'background-color': '#f59e0b' } },
    { selector: 'node[badge]', style: { 'text-transform': 'none' } },
    {
      selector: 'node[?gone]',
      style: { 'background-opacity': 0.35, 'border-style': 'dashed', 'border-color': '#94a3b8' },
    },
    {
      selector: 'node[type = "namespace"]',
      style: {
        shape: 'round-rectangle',
        'background-color': '#eef2f7',
        'background-opacity': 0.8,
        'border-width': 1.5,
        'border-style': 'dashed',
        'border-color': '#94a3b8',
        'text-valign': 'top',
        'text-halign': 'center',
        'text-margin-y': -4,
        'font-size': 12,
        'font-weight': 600,
        color: '#475569',
        padding: 22,
      },
    },
    {
      selector: 'edge',
      style: {
        'curve-style': 'bezier',
        'control-point-step-size': 60,
        width: 2.5,
        'line-color': '#94a3b8',
        'target-arrow-color': '#94a3b8',
        'target-arrow-shape': 'triangle',
        'arrow-scale': 1.1,
        label: 'data(label)',
        'font-size': 10.5,
        color: '#334155',
        'text-background-color': '#ffffff',
        'text-background-opacity': 0.92,
        'text-background-padding': 2,
        'text-background-shape': 'round-rectangle',
        'text-rotation': 'autorotate',
      },
    },
    { selector: 'edge[dropped > 0]', style: { 'line-color': '#dc2626', 'target-arrow-color': '#dc2626', 'line-style': 'dashed', color: '#b91c1c' } },
    { selector: 'edge[dropped > 0][forwarded > 0]', style: { 'line-style': 'solid', 'line-color': '#f97316', 'target-arrow-color': '#f97316' } },
    { selector: 'node:selected', style: { 'border-color': '#f59e0b', 'border-width': 4 } },
    { selector: 'edge:selected', style: { width: 4, 'underlay-color': '#fbbf24', 'underlay-opacity': 0.45, 'underlay-padding': 5 } },
    { selector: '.flash', style: { 'underlay-color': '#fde047', 'underlay-opacity': 0.6, 'underlay-padding': 4 } },
  ],
});

// ---------------------------------------------------------------------------------------------
// Model -> cytoscape

let layoutTimer;
let layoutDone = false;
const ELEM_LIMIT_FOR_ANIMATION = 60;

function nodeLabel(n) {
  if (n.type === 'vm') return `VM ${n.label}`;
  if (n.type === 'workload') return n.label;
  return n.label;
}

function nodeData(n) {
  const data = { id: n.id, label: nodeLabel(n), type: n.type, identity: n.identity, kind: n.kind ?? '' };
  if (n.namespace) data.parent = `ns:${n.namespace}`;
  if (n.registered === false && n.type !== 'world' && n.type !== 'host') data.gone = true;
  return data;
}

function layoutRun() {
  const animate = cy.elements().length < ELEM_LIMIT_FOR_ANIMATION && layoutDone;
  const common = { animate, animationDuration: 400, nodeDimensionsIncludeLabels: true, padding: 50, fit: true };
  const l = cy.layout(
    FCOSE
      ? {
          ...common,
          name: 'fcose',
          quality: 'proof',
          randomize: !layoutDone,
          idealEdgeLength: () => 170,
          nodeRepulsion: () => 9000,
          nestingFactor: 0.2,
          gravity: 0.3,
          gravityCompound: 1.2,
          tilingPaddingVertical: 30,
          tilingPaddingHorizontal: 30,
          packComponents: true,
        }
      : { ...common, name: 'cose', randomize: !layoutDone, idealEdgeLength: () => 160, nodeRepulsion: () => 12000, componentSpacing: 120 },
  );
  l.one('layoutstop', () => {
    layoutDone = true;
    cy.fit(undefined, 50);
    window.kitnetMap.layouts++;
  });
  l.run();
}

function layoutSoon() {
  clearTimeout(layoutTimer);
  layoutTimer = setTimeout(layoutRun, 250);
}

let renderQueued = false;
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  renderQueued = false;
  let added = false;
  cy.batch(() => {
    for (const n of model.nodes.values()) {
      if (n.namespace && cy.getElementById(`ns:${n.namespace}`).empty()) {
        cy.add({ group: 'nodes', data: { id: `ns:${n.namespace}`, label: `namespace ${n.namespace}`, type: 'namespace' } });
        added = true;
      }
      const el = cy.getElementById(n.id);
      const data = nodeData(n);
      if (el.empty()) {
        cy.add({ group: 'nodes', data });
        added = true;
      } else {
        el.data(data);
        if (!data.gone) el.removeData('gone');
      }
    }
    for (const e of model.edges.values()) {
      const data = { id: e.id, source: e.source, target: e.target, label: edgeLabel(e), forwarded: e.forwarded, dropped: e.dropped, protocol: e.protocol, port: e.port ?? '' };
      const el = cy.getElementById(e.id);
      if (el.empty()) {
        cy.add({ group: 'edges', data });
        added = true;
      } else el.data(data);
    }
    // Namespaces whose workloads are all gone.
    cy.nodes('[type = "namespace"]').forEach((ns) => {
      if (ns.children().empty()) ns.remove();
    });
  });
  $('stat-workloads').textContent = String([...model.nodes.values()].filter((n) => n.type === 'workload' || n.type === 'vm').length);
  $('stat-flows').textContent = String(model.flows);
  $('stat-dropped').textContent = String(model.dropped);
  $('stat-lost').textContent = String(model.lost);
  $('stat-lost-wrap').hidden = model.lost === 0;
  if (added) layoutSoon();
}

// ---------------------------------------------------------------------------------------------
// Selection panel: recent flows of a node or an edge

let selection;

function selectionVisible(rec) {
  return !$('only-dropped').checked || rec.flow?.verdict === 'DROPPED';
}

function flowPrepend(rec) {
  const tbody = $('flows').querySelector('tbody');
  tbody.prepend(flowRow(rec));
  while (tbody.children.length > FLOW_LIST_MAX) tbody.lastElementChild.remove();
}

async function selectionLoad() {
  if (!selection) return;
  const sel = selection;
  let filters = sel.kind === 'node' ? model.nodeFilters(sel.id) : model.edgeFilters(sel.id);
  // Fields within one filter AND (a shorthand parameter would be one more filter, ORed).
  if ($('only-dropped').checked) filters = filters.map((f) => ({ ...f, verdict: ['DROPPED'] }));
  const q = new URLSearchParams({ last: String(FLOW_LIST_MAX), whitelist: JSON.stringify(filters) });
  $('sel-filter').textContent = `GET /v1/flows?${decodeURIComponent(q.toString())}`;
  const tbody = $('flows').querySelector('tbody');
  try {
    const res = await fetch(`/v1/flows?${q}`);
    if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
    const lines = (await res.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    if (selection !== sel) return;
    tbody.replaceChildren();
    for (const rec of lines) if (rec.flow) tbody.prepend(flowRow(rec));
    window.kitnetMap.panelLoads++;
  } catch (err) {
    tbody.replaceChildren();
    const tr = document.createElement('tr');
    tr.append(cell(`could not load flows: ${err.message}`));
    tbody.append(tr);
  }
}

function selectionShow(kind, id) {
  selection = { kind, id };
  $('panel-empty').hidden = true;
  $('panel-sel').hidden = false;
  const meta = $('sel-meta');
  meta.replaceChildren();
  const tag = (text, cls) => {
    const s = document.createElement('span');
    s.className = `tag ${cls ?? ''}`;
    s.textContent = text;
    meta.append(s);
  };
  if (kind === 'node') {
    const n = model.nodes.get(id);
    $('sel-title').textContent = n.namespace ? `${n.namespace}/${n.label}` : n.label;
    tag(n.type === 'vm' ? 'VirtualMachine' : n.type === 'workload' ? n.kind || 'workload' : n.type, n.type === 'vm' ? 'vm' : '');
    if (n.identity !== undefined) tag(`identity ${n.identity}`);
    if (n.mode) tag(n.mode);
    if (n.state && n.state !== 'ready') tag(n.state);
    const ips = [n.ipv4, n.ipv6].filter(Boolean).join('  ');
    if (ips) meta.append(document.createElement('br'), document.createTextNode(ips));
  } else {
    const e = model.edges.get(id);
    const name = (nid) => {
      const n = model.nodes.get(nid);
      return n?.namespace ? `${n.namespace}/${n.label}` : (n?.label ?? nid);
    };
    $('sel-title').textContent = `${name(e.source)} → ${name(e.target)}`;
    tag(e.port === null ? e.protocol : `${e.protocol}/${e.port}`);
    tag(`${e.forwarded} forwarded`);
    if (e.dropped) {
      tag(`${e.dropped} dropped`, 'drop');
      meta.append(document.createElement('br'), document.createTextNode(Object.entries(e.dropReasons).map(([r, c]) => `${r} ×${c}`).join(', ')));
    }
  }
  void selectionLoad();
}

function selectionClear() {
  selection = undefined;
  $('panel-empty').hidden = false;
  $('panel-sel').hidden = true;
}

cy.on('tap', 'node', (ev) => {
  const n = ev.target;
  if (n.data('type') === 'namespace') return;
  selectionShow('node', n.id());
});
cy.on('tap', 'edge', (ev) => selectionShow('edge', ev.target.id()));
cy.on('tap', (ev) => {
  if (ev.target === cy) selectionClear();
});
$('only-dropped').addEventListener('change', () => void selectionLoad());

// ---------------------------------------------------------------------------------------------
// Data: workloads, status, and the live flow stream

async function workloadsLoad() {
  try {
    const res = await fetch('/v1/workloads');
    if (!res.ok) return;
    const list = await res.json();
    for (const w of list) model.workloadAdd(w);
    const removed = model.workloadsSync(list);
    for (const id of removed) cy.getElementById(id).remove();
    renderSoon();
    window.kitnetMap.workloadLoads++;
  } catch {
    // The agent may be restarting; the next round tries again.
  }
}

async function statusLoad() {
  try {
    const s = await (await fetch('/v1/status')).json();
    $('node-name').textContent = `node ${s.nodeName}`;
  } catch {
    /* shown again on the next load */
  }
}

function liveSet(on, text) {
  $('live').className = `live ${on ? 'on' : 'off'}`;
  $('live').querySelector('span').textContent = text;
  window.kitnetMap.live = on;
}

function onRecord(rec) {
  const change = model.record(rec);
  if (!change) return;
  window.kitnetMap.records++;
  if (change.edge) {
    renderSoon();
    if (selection && flowMatches(model, selection, rec) && selectionVisible(rec)) flowPrepend(rec);
  } else if (change.lost) renderSoon();
}

async function follow() {
  let backoff = 500;
  for (;;) {
    try {
      // `last` fills the map with recent history; then new flows stream in as they happen.
      const res = await fetch('/v1/flows?follow=true&last=2000', { headers: { accept: 'application/x-ndjson' } });
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      liveSet(true, 'live');
      backoff = 500;
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line) continue;
          try {
            onRecord(JSON.parse(line));
          } catch (err) {
            console.warn('bad flow line', err);
          }
        }
      }
      throw new Error('stream ended');
    } catch (err) {
      liveSet(false, `reconnecting (${err.message})`);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 8000);
    }
  }
}

window.kitnetMap = { cy, model, live: false, records: 0, layouts: 0, panelLoads: 0, workloadLoads: 0, select: selectionShow, selected: () => selection?.id };
void statusLoad();
void workloadsLoad();
setInterval(() => void workloadsLoad(), 3000);
void follow();
