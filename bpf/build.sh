#!/usr/bin/env bash
# Builds the datapath: regenerates the shared layout (only when the generator changed), compiles the BPF
# object and the native libbpf addon — each step only when its inputs are newer than its outputs, so a
# second run is a no-op. Called by scripts/setup.sh from the repo root, before tsc.
# Outputs (gitignored): bpf/build/kitnet.bpf.o, bpf/native/build/Release/kitnet_bpf.node
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[bpf] %s\n' "$*" >&2; }

# newer OUT IN... : true when OUT is missing or any IN is newer than it.
newer() {
  local out=$1; shift
  [ -e "$out" ] || return 0
  [ -n "$(find "$@" -newer "$out" -print -quit 2>/dev/null)" ]
}

mkdir -p bpf/build

# 1. Generated layout. The generator is TypeScript; compile just it and its parts in tools/gen/bpf-layout/
#    (no project build needed yet).
gen_src=tools/gen/bpf-layout.ts
if newer bpf/include/shared.gen.h "$gen_src" tools/gen/bpf-layout || newer bpf/layout.gen.ts "$gen_src" tools/gen/bpf-layout; then
  log "regenerating shared layout"
  npx --no-install tsc --module nodenext --moduleResolution nodenext --target es2022 --types node \
    --skipLibCheck --outDir bpf/build/gen "$gen_src"
  node bpf/build/gen/bpf-layout.js
  touch bpf/include/shared.gen.h bpf/layout.gen.ts
fi

# 2. BPF object (flags in bpf/compile.sh).
obj=bpf/build/kitnet.bpf.o
if newer "$obj" bpf/src bpf/include bpf/build.sh bpf/compile.sh; then
  log "compiling $obj"
  bash bpf/compile.sh . "$obj"
fi

# 3. Native addon (N-API, plain C, linked against the system libbpf). Node headers come from nodedir
#    (npm config: /usr on Debian's nodejs), so no download is needed.
addon=bpf/native/build/Release/kitnet_bpf.node
if newer "$addon" bpf/native/src bpf/native/binding.gyp; then
  log "building native addon"
  args=(rebuild -C bpf/native --loglevel=warn)
  # Prefer installed headers (npm's nodedir, then the distro's) so node-gyp never needs to download them.
  for d in "$(npm config get nodedir 2>/dev/null || true)" /usr /usr/local; do
    if [ -n "$d" ] && [ -f "$d/include/node/node_api.h" ]; then args+=(--nodedir="$d"); break; fi
  done
  node node_modules/node-gyp/bin/node-gyp.js "${args[@]}" >&2
fi
