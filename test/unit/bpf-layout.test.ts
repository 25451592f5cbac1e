// The generated layout is current, matches what clang actually lays out (BTF of the compiled object —
// Cilium's alignchecker idea), and its kernel UAPI numbers match the running kernel's BTF.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { generate } from '../../tools/gen/bpf-layout.js';
import { ADDRESSES, addressBytes } from '../../tools/gen/bpf-layout/addresses.js';
import { CONSTANTS } from '../../tools/gen/bpf-layout/constants.js';
import { DROP_REASONS } from '../../tools/gen/bpf-layout/drop-reasons.js';
import { structLayout } from '../../tools/gen/bpf-layout/layout.js';
import { STRUCTS } from '../../tools/gen/bpf-layout/structs.js';
import * as L from '../../bpf/layout.gen.js';
import { ipv4Parse, ipv6Parse } from '../../bpf/addr.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('generated files are current (re-run tools/gen/bpf-layout.ts: bash bpf/build.sh)', () => {
  for (const f of generate()) {
    const committed = readFileSync(join(ROOT, f.path), 'utf8');
    assert.equal(committed, f.content, `${f.path} is stale`);
  }
});

test('generated TS layout equals the description', () => {
  for (const s of STRUCTS) {
    const ts = (L as unknown as Record<string, L.StructLayout>)[s.name.toUpperCase()];
    assert.ok(ts, `layout.gen.ts lacks ${s.name}`);
    const want = structLayout(s);
    assert.equal(ts.size, want.size);
    for (const f of want.fields) assert.equal(ts.fields[f.name]?.offset, f.offset, `${s.name}.${f.name}`);
  }
});

test('shared gateway addresses: TS text, C initialisers and words agree with bpf/addr.ts', () => {
  assert.equal(L.GATEWAY_IPV4, '169.254.1.1');
  assert.equal(L.GATEWAY_IPV6, 'fe80::1');
  const h = generate().find((f) => f.path.endsWith('shared.gen.h'))!.content;
  for (const [name, text] of ADDRESSES) {
    const want = [...(text.includes(':') ? ipv6Parse(text) : ipv4Parse(text))];
    assert.deepEqual(addressBytes(text), want, name);
    assert.ok(h.includes(`#define ${name}_INIT { ${want.join(', ')} }`), `${name}_INIT`);
    for (let i = 0; i < want.length; i += 4) {
      const w = Buffer.from(want.slice(i, i + 4)).readUInt32BE(0);
      const macro = `${name}_U32${want.length > 4 ? `_${i / 4}` : ''}`;
      assert.ok(h.includes(`#define ${macro} 0x${w.toString(16).padStart(8, '0')}`), macro);
    }
  }
  assert.deepEqual(addressBytes('2001:db8::8:0:1'), [...ipv6Parse('2001:db8::8:0:1')]);
  assert.deepEqual(addressBytes('::'), new Array(16).fill(0));
  assert.throws(() => addressBytes('1.2.3'));
  assert.throws(() => addressBytes('1::2::3'));
});

test('drop reasons are unique and in Hubble range', () => {
  const nums = DROP_REASONS.map(([, v]) => v);
  assert.equal(new Set(nums).size, nums.length);
  assert.equal(L.DROP_REASON.POLICY_DENIED, 133);
  assert.equal(L.DROP_REASON.POLICY_DENY, 181);
  assert.equal(L.DROP_REASON_DESC.get(133)?.[0], 'POLICY_DENIED');
  for (const n of nums) assert.ok(n >= 130 && n < 256, `${n}`);
});

interface BtfMember {
  name: string;
  bits_offset: number;
}
interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  members?: BtfMember[];
}

function btfStructs(obj: string): Map<string, BtfType> {
  const btf = JSON.parse(execFileSync('bpftool', ['btf', 'dump', 'file', obj, 'format', 'raw', '-j'], { maxBuffer: 64 << 20 }).toString()) as {
    types: BtfType[];
  };
  return new Map(btf.types.filter((x) => x.kind === 'STRUCT').map((x) => [x.name, x]));
}

function assertLayout(got: BtfType, name: string): void {
  const s = STRUCTS.find((x) => x.name === name);
  assert.ok(s);
  const want = structLayout(s);
  assert.equal(got.size, want.size, `sizeof(struct ${name})`);
  assert.deepEqual(
    got.members?.map((m) => [m.name, m.bits_offset / 8]),
    want.fields.map((f) => [f.name, f.offset]),
    `members of struct ${name}`,
  );
}

test('struct layouts match the BTF clang produces (alignchecker)', (t) => {
  if (!have('clang') || !have('bpftool')) {
    t.skip('clang/bpftool not installed');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-btf-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const cflags = ['-O2', '-g', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', `-I${join(ROOT, 'bpf/include')}`];

  // 1. The datapath object itself: every struct that reaches its BTF (map keys and values).
  const obj = join(dir, 'kitnet.bpf.o');
  execFileSync('clang', [...cflags, '-c', join(ROOT, 'bpf/src/kitnet.bpf.c'), '-o', obj]);
  const inObject = btfStructs(obj);
  for (const name of ['endpoint_info', 'ipcache_key', 'ipcache_value', 'policy_key', 'policy_value', 'frag_key', 'frag_value', 'ct_key', 'ct_entry', 'metrics_value', 'dp_config']) {
    const got = inObject.get(name);
    assert.ok(got, `struct ${name} missing from the object's BTF`);
    assertLayout(got, name);
  }

  // 2. An alignchecker unit that instantiates every shared struct (flow_event only travels through the
  //    ring buffer, so it never lands in the object's BTF).
  const src = join(dir, 'alignchecker.bpf.c');
  writeFileSync(src, ['#include "shared.gen.h"', ...STRUCTS.map((s) => `struct ${s.name} check_${s.name} __attribute__((used));`)].join('\n') + '\n');
  const ac = join(dir, 'alignchecker.bpf.o');
  execFileSync('clang', [...cflags, '-c', src, '-o', ac]);
  const all = btfStructs(ac);
  for (const s of STRUCTS) {
    const got = all.get(s.name);
    assert.ok(got, `struct ${s.name} missing from the alignchecker's BTF`);
    assertLayout(got, s.name);
  }
});

test('kernel UAPI constants match the running kernel (vmlinux BTF)', (t) => {
  if (!existsSync('/sys/kernel/btf/vmlinux') || !have('bpftool')) {
    t.skip('no vmlinux BTF or bpftool');
    return;
  }
  const c = execFileSync('bpftool', ['btf', 'dump', 'file', '/sys/kernel/btf/vmlinux', 'format', 'c'], { maxBuffer: 256 << 20 }).toString();
  const uapi = CONSTANTS.find((g) => g.doc.startsWith('Kernel UAPI'));
  assert.ok(uapi);
  for (const [name, value] of uapi.values) {
    const m = new RegExp(`\\b${name} = (-?\\d+),`).exec(c);
    if (!m) {
      t.diagnostic(`${name} not in this kernel's BTF (older kernel?)`);
      continue;
    }
    assert.equal(Number(m[1]), value, name);
  }
  // offsetof(struct __sk_buff, ifindex) used by testRun: the 11th u32 member
  const skb = /struct __sk_buff \{([^}]*)\}/.exec(c)?.[1] ?? '';
  const members = skb.split(';').map((s) => s.trim()).filter(Boolean);
  assert.equal(members.findIndex((m) => /\bifindex$/.test(m)), 10, 'ifindex is the 11th __u32 of __sk_buff (offset 40)');
});
