// netkit/uapi.ts against the kernel's own numbers: netkit/uapi.facts.json, generated from the lab
// kernels' BTF and this host's UAPI headers by tools/gen/netkit-uapi.ts. Every numeric constant of
// uapi.ts must be found there (or derived from what is there, below) with the same value. When the lab
// kernels are in .cache/lab (test/lab/fetch.sh), the facts file is also generated again and compared.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import * as uapi from '../../netkit/uapi.js';
import { FACTS_PATH, factsGenerate, labKernelDirs, type UapiFacts } from '../../tools/gen/netkit-uapi.js';

const facts = JSON.parse(readFileSync(FACTS_PATH, 'utf8')) as UapiFacts;

/** uapi.ts names that are kitnet's spelling of a kernel fact rather than a kernel name. */
const DERIVED: Readonly<Record<string, () => number | undefined>> = {
  IFINFOMSG_LEN: () => facts.structSizes.ifinfomsg,
  IFADDRMSG_LEN: () => facts.structSizes.ifaddrmsg,
  RTMSG_LEN: () => facts.structSizes.rtmsg,
  NDMSG_LEN: () => facts.structSizes.ndmsg,
  TCMSG_LEN: () => facts.structSizes.tcmsg,
  // TC_H_MAKE(TC_H_CLSACT, 0): the clsact qdisc's handle
  TC_H_CLSACT_HANDLE: () => (facts.macros.TC_H_CLSACT! & 0xffff0000) >>> 0,
  IFNAME_MAX_BYTES: () => facts.macros.IFNAMSIZ! - 1,
  IFALIAS_MAX_BYTES: () => facts.macros.IFALIASZ! - 1,
};

function kernelValue(name: string): number | undefined {
  return facts.enums[name] ?? facts.macros[name] ?? DERIVED[name]?.();
}

test('the facts come from netkit kernels (IFLA_NETKIT_* present)', () => {
  assert.ok(facts.kernels.length >= 1);
  assert.equal(facts.enums.IFLA_NETKIT_PEER_INFO, 1);
  assert.equal(facts.enums.NETKIT_L2, 0);
});

test('every numeric constant in netkit/uapi.ts has the kernel value', () => {
  const checked: string[] = [];
  for (const [name, value] of Object.entries(uapi)) {
    if (typeof value !== 'number') continue;
    const expected = kernelValue(name);
    assert.notEqual(expected, undefined, `${name} is not in netkit/uapi.facts.json: add it to tools/gen/netkit-uapi.ts (or DERIVED here) and regenerate`);
    assert.equal(value, expected, `${name} is ${value} in netkit/uapi.ts, ${expected} in the kernel (${facts.kernels.join(', ')})`);
    checked.push(name);
  }
  assert.ok(checked.length > 60, `checked ${checked.length} constants`);
});

test('RTM_NAMES names each message type by its kernel name', () => {
  for (const [type, name] of Object.entries(uapi.RTM_NAMES)) assert.equal(facts.enums[name], Number(type), name);
});

const kernels = labKernelDirs();
/**
 * With every kernel the facts were made from in .cache/lab, regenerating gives the committed file.
 * With only some of them (the lab fetches its kernels later in the test command, and a partly filled
 * cache is normal), whatever those kernels say must agree with the committed facts: a newer kernel adds
 * enum values, never changes one.
 */
test('netkit/uapi.facts.json is what the lab kernels in .cache/lab give', { skip: kernels.length ? false : 'no lab kernel in .cache/lab (test/lab/fetch.sh)' }, () => {
  const now = factsGenerate(kernels);
  if (now.kernels.join() === facts.kernels.join()) {
    assert.deepEqual(now, facts, 'regenerate: node dist/tools/gen/netkit-uapi.js');
    return;
  }
  for (const k of now.kernels) assert.ok(facts.kernels.includes(k), `${k} is in .cache/lab but the facts are from ${facts.kernels.join(', ')}: regenerate with node dist/tools/gen/netkit-uapi.js`);
  for (const table of ['enums', 'structSizes', 'macros'] as const) {
    for (const [name, value] of Object.entries(now[table])) {
      assert.equal(facts[table][name], value, `${table}.${name} is ${value} in ${now.kernels.join(', ')}, ${facts[table][name]} in netkit/uapi.facts.json`);
    }
  }
});
