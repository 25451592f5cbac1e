#!/usr/bin/env bash
# Compiles the datapath object from a source tree: ROOT/bpf/src/kitnet.bpf.c with ROOT/bpf/include.
# The one place that knows the clang flags: bpf/build.sh uses it for this checkout, the upgrade test
# for an earlier release's sources (git archive).
# usage: bpf/compile.sh ROOT OUT
set -euo pipefail
root=$1 out=$2
# clang-14 with -target bpf does not search the multiarch include dir by itself.
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
clang -O2 -g -target bpf -mcpu=v3 -Wall -Werror -Wno-unused-function \
  -I/usr/include/"$multiarch" -I"$root"/bpf/include \
  -c "$root"/bpf/src/kitnet.bpf.c -o "$out.tmp"
mv "$out.tmp" "$out"
