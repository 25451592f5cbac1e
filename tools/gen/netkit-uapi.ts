// Generator: the kernel's own values of the constants netkit/uapi.ts types by hand, written to
// netkit/uapi.facts.json, which test/unit/netkit-uapi.test.ts checks uapi.ts against.
//   enums        (IFLA_*, IFLA_NETKIT_*, NETKIT_*, RTM_*, RTA_*, IFA_*, NDA_*, TCA_*, RT_SCOPE_*, ...)
//                from the BTF of the lab kernels (bookworm's linux-libc-dev has no netkit): the vmlinux
//                inside each vmlinuz that test/lab/fetch.sh puts under .cache/lab/kernel; every kernel
//                must agree (these numbers are ABI).
//   struct sizes (ifinfomsg, ifaddrmsg, rtmsg, ndmsg, tcmsg, nlmsghdr) from the same BTF.
//   macros       (NLM_F_*, IFF_*, AF_*, NUD_*, TC_H_*, IFNAMSIZ, ...) are not in BTF, nor is veth.ko's
//                VETH_INFO_PEER: from this host's UAPI headers (linux-libc-dev), compiled and printed by cc.
// Usage: node dist/tools/gen/netkit-uapi.js [--check]   (needs bpftool, cc, zstd or xz; after
// `bash test/lab/fetch.sh`, or KITNET_LAB_CACHE=DIR for a cache elsewhere)
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface UapiFacts {
  generatedBy: string;
  kernels: string[];
  enums: Record<string, number>;
  structSizes: Record<string, number>;
  macros: Record<string, number>;
}

const STRUCTS = ['nlmsghdr', 'ifinfomsg', 'ifaddrmsg', 'rtmsg', 'ndmsg', 'tcmsg'];
const ENUM_PREFIXES = /^(IFLA_|NETKIT_|RTM_|RTA_|IFA_|NDA_|TCA_|RT_SCOPE_|RT_TABLE_|RTN_|RTPROT_|NLMSGERR_ATTR_|VETH_INFO_)/;
const MACROS = [
  'NLMSG_ERROR', 'NLMSG_DONE', 'NLM_F_REQUEST', 'NLM_F_MULTI', 'NLM_F_ACK', 'NLM_F_ECHO', 'NLM_F_ROOT', 'NLM_F_MATCH',
  'NLM_F_DUMP', 'NLM_F_REPLACE', 'NLM_F_EXCL', 'NLM_F_CREATE', 'NLM_F_CAPPED', 'NLM_F_ACK_TLVS',
  'AF_UNSPEC', 'AF_INET', 'AF_INET6', 'IFF_UP', 'IFF_LOOPBACK', 'IFF_NOARP', 'IFF_LOWER_UP',
  'IFA_F_NODAD', 'IFA_F_PERMANENT', 'NUD_PERMANENT', 'TC_H_CLSACT', 'IFNAMSIZ', 'IFALIASZ', 'RTPROT_STATIC',
  'RTM_F_LOOKUP_TABLE', 'RTM_F_FIB_MATCH',
  // an enum, but of veth.ko (a module: not in vmlinux BTF)
  'VETH_INFO_PEER',
];

function repoRoot(): string {
  for (let d = dirname(fileURLToPath(import.meta.url)); d !== '/'; d = dirname(d)) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'netkit'))) return d;
  }
  throw new Error('cannot find the kitnet checkout above ' + fileURLToPath(import.meta.url));
}

/** The lab kernels' directories (each with a vmlinuz), from the cache test/lab/fetch.sh fills. */
export function labKernelDirs(root = repoRoot()): string[] {
  const dir = join(process.env.KITNET_LAB_CACHE ?? join(root, '.cache', 'lab'), 'kernel');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((k) => existsSync(join(dir, k, 'vmlinuz')))
    .sort()
    .map((k) => join(dir, k));
}

/** The ELF vmlinux inside a bzImage: the payload after the first zstd or xz magic, decompressed. */
function vmlinuxExtract(vmlinuz: string, out: string): void {
  const img = readFileSync(vmlinuz);
  for (const [magic, cmd] of [[Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), 'zstd'], [Buffer.from('fd377a585a00', 'hex'), 'xz']] as const) {
    const at = img.indexOf(magic);
    if (at < 0) continue;
    // Trailing bytes after the compressed stream make the tools complain; the output is complete.
    try {
      execFileSync('sh', ['-c', `${cmd} -dc > "$1" 2>/dev/null || true`, 'sh', out], { input: img.subarray(at), maxBuffer: 1 << 30 });
    } catch {
      // checked below
    }
    if (existsSync(out) && readFileSync(out).subarray(0, 4).toString('latin1') === '\x7fELF') return;
  }
  throw new Error(`${vmlinuz}: no zstd or xz payload with an ELF vmlinux inside`);
}

function kernelFacts(kernelDir: string, tmp: string): { enums: Record<string, number>; structSizes: Record<string, number> } {
  const vmlinux = join(tmp, 'vmlinux');
  rmSync(vmlinux, { force: true });
  vmlinuxExtract(join(kernelDir, 'vmlinuz'), vmlinux);
  const raw = execFileSync('bpftool', ['btf', 'dump', 'file', vmlinux], { maxBuffer: 1 << 30 }).toString();
  const enums: Record<string, number> = {};
  const structSizes: Record<string, number> = {};
  for (const m of raw.matchAll(/^\t'([A-Z0-9_]+)' val=(-?\d+)$/gm)) {
    if (ENUM_PREFIXES.test(m[1]!)) enums[m[1]!] = Number(m[2]);
  }
  for (const m of raw.matchAll(/^\[\d+\] STRUCT '([a-z_]+)' size=(\d+)/gm)) {
    if (STRUCTS.includes(m[1]!)) structSizes[m[1]!] = Number(m[2]);
  }
  return { enums, structSizes };
}

function hostMacros(tmp: string): Record<string, number> {
  const src = join(tmp, 'macros.c');
  const bin = join(tmp, 'macros');
  const headers = ['sys/socket.h', 'linux/netlink.h', 'linux/rtnetlink.h', 'linux/if.h', 'linux/if_addr.h', 'linux/neighbour.h', 'linux/pkt_sched.h', 'linux/veth.h'];
  writeFileSync(src, [...headers.map((h) => `#include <${h}>`), '#include <stdio.h>', 'int main(void) {',
    ...MACROS.map((m) => `  printf("%s %llu\\n", "${m}", (unsigned long long)(${m}));`), '  return 0;', '}', ''].join('\n'));
  execFileSync('cc', ['-o', bin, src]);
  const out: Record<string, number> = {};
  for (const line of execFileSync(bin).toString().trim().split('\n')) {
    const [name, value] = line.split(' ');
    out[name!] = Number(value);
  }
  return out;
}

export function factsGenerate(kernelDirs: string[]): UapiFacts {
  if (!kernelDirs.length) throw new Error('no lab kernel under .cache/lab/kernel: run `bash test/lab/fetch.sh` first (or set KITNET_LAB_CACHE)');
  const tmp = mkdtempSync(join(tmpdir(), 'kitnet-uapi-'));
  try {
    const kernels = kernelDirs.map((d) => ({ name: d.split('/').pop()!, ...kernelFacts(d, tmp) }));
    const enums: Record<string, number> = {};
    const structSizes: Record<string, number> = {};
    for (const k of kernels) {
      for (const [table, into] of [[k.enums, enums], [k.structSizes, structSizes]] as const) {
        for (const [name, v] of Object.entries(table)) {
          if (into[name] !== undefined && into[name] !== v) throw new Error(`${name} is ${into[name]} in one lab kernel and ${v} in ${k.name}`);
          into[name] = v;
        }
      }
    }
    const sorted = (r: Record<string, number>) => Object.fromEntries(Object.entries(r).sort(([a], [b]) => a.localeCompare(b)));
    return {
      generatedBy: 'node dist/tools/gen/netkit-uapi.js (after bash test/lab/fetch.sh)',
      kernels: kernels.map((k) => k.name),
      enums: sorted(enums),
      structSizes: sorted(structSizes),
      macros: sorted(hostMacros(tmp)),
    };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

export const FACTS_PATH = join(repoRoot(), 'netkit', 'uapi.facts.json');

function main(argv: string[]): number {
  const text = `${JSON.stringify(factsGenerate(labKernelDirs()), null, 2)}\n`;
  if (argv.includes('--check')) {
    const same = existsSync(FACTS_PATH) && readFileSync(FACTS_PATH, 'utf8') === text;
    console.log(same ? `${FACTS_PATH} is current` : `${FACTS_PATH} differs from the lab kernels: run node dist/tools/gen/netkit-uapi.js`);
    return same ? 0 : 1;
  }
  writeFileSync(FACTS_PATH, text);
  console.log(`wrote ${FACTS_PATH}`);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) process.exitCode = main(process.argv.slice(2));
