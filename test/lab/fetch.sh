#!/usr/bin/env bash
# Fetches what the lab VM needs, idempotently, into $KITNET_LAB_CACHE (default .cache/lab/ in the
# checkout):
#   - qemu-system-x86, busybox-static, kmod and cpio, installed into the system when missing;
#   - the newest 6.12 kernel of bookworm-backports and the newest kernel of Debian unstable, resolved
#     at run time through a private apt configuration (the system's sources stay untouched), unpacked
#     with their modules indexed by depmod;
#   - iproute2 and bpftool from bookworm-backports, unpacked to be first on PATH inside the VM.
# A second run with a warm cache only checks stamps (well under a second). The package lists are
# refreshed when older than KITNET_LAB_MAX_AGE_DAYS (default 7) or with --refresh; a refresh that
# resolves to the same versions downloads nothing.
# usage: test/lab/fetch.sh [--refresh] [KERNEL...]     (KERNEL: 6.12 | unstable; default both)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

refresh=0
kernels=()
for a in "$@"; do
  case "$a" in
    --refresh) refresh=1 ;;
    6.12|unstable) kernels+=("$a") ;;
    *) lab_die "usage: $0 [--refresh] [6.12|unstable]..." ;;
  esac
done
((${#kernels[@]})) || kernels=("${LAB_KERNELS[@]}")
mkdir -p "$LAB_CACHE"
# one fetch at a time per cache (parallel lab runs share it)
exec 9> "$LAB_CACHE/.fetch.lock"
flock 9

# --- host tools --------------------------------------------------------------------------------
host_packages=(qemu-system-x86 busybox-static kmod cpio)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  lab_log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- package lists (private apt roots, one per suite so candidates are unambiguous) --------------
suite_of() { case "$1" in bpo) echo bookworm-backports ;; sid) echo unstable ;; esac; }
lists_fresh() { # ROOT: lists exist and are younger than the max age
  local f
  f=$(find "$LAB_CACHE/apt/$1/state/lists" -maxdepth 1 -name '*_Packages*' -mtime -"${KITNET_LAB_MAX_AGE_DAYS:-7}" 2>/dev/null | head -1)
  [ -n "$f" ]
}
updated=()
ensure_lists() { # ROOT
  local root=$1
  lab_apt_root "$root" "$(suite_of "$root")"
  if ((refresh)) || ! lists_fresh "$root"; then
    [[ " ${updated[*]} " == *" $root "* ]] && return 0
    lab_log "apt update ($(suite_of "$root"), private lists in $LAB_CACHE/apt/$root)"
    lab_apt "$root" apt-get update >/dev/null
    # apt keeps the old file's mtime when nothing changed; the age check wants "checked recently"
    touch "$LAB_CACHE/apt/$root/state/lists/"*_Packages* 2>/dev/null || true
    updated+=("$root")
  fi
}

# Versions in use are recorded here; run.sh reads it.
resolved=$LAB_CACHE/resolved.env
touch "$resolved"
set_resolved() { # KEY VALUE
  local tmp; tmp=$(mktemp "$LAB_CACHE/.resolved.XXXXXX")
  grep -v "^$1=" "$resolved" > "$tmp" || true
  echo "$1=$2" >> "$tmp"
  mv "$tmp" "$resolved"
}
get_resolved() { sed -n "s/^$1=//p" "$resolved" | tail -1; }

# deps ROOT PKG: the linux-{binary,modules,base}-* packages PKG depends on (Debian's split of the
# kernel since 7.x; empty for the older layout where linux-image-* holds everything).
deps() {
  lab_apt "$1" apt-cache show --no-all-versions "$2" | sed -n 's/^Depends: //p' | tr ',|' '\n\n' |
    sed 's/(.*//; s/ //g' | grep -E '^linux-(binary|modules|base)-[0-9]' || true
}

# download ROOT DIR PKG...: apt-get download into DIR (kept as the .deb cache).
download() {
  local root=$1 dir=$2; shift 2
  mkdir -p "$dir"
  (cd "$dir" && lab_apt "$root" apt-get download "$@" >/dev/null)
}

# kernel_config KDIR KVER: links KDIR/config to the kernel's config (boot/config-KVER in the old
# layout, lib/modules/KVER/config in the new one).
kernel_config() {
  [ -e "$1/config" ] && return 0
  local config; config=$(find "$1" \( -name "config-$2" -o -path "*/modules/$2/config" \) -type f | head -1)
  if [ -n "$config" ]; then ln -sfnr "$config" "$1/config"; fi
}

# --- kernels -------------------------------------------------------------------------------------
fetch_kernel() { # NAME
  local name=$1 root image
  case "$name" in
    6.12) root=bpo ;;
    unstable) root=sid ;;
  esac
  local kdir; kdir=$(get_resolved "KERNEL_DIR_${name//./_}")
  if ((refresh == 0)) && [ -n "$kdir" ] && [ -f "$kdir/.done" ] && lists_fresh "$root"; then
    kernel_config "$kdir" "$(cat "$kdir/kver")"
    lab_log "kernel $name: $(cat "$kdir/kver") (cached)"
    return 0
  fi
  ensure_lists "$root"
  case "$name" in
    6.12) # the newest 6.12 ABI in backports, generic flavour
      image=$(lab_apt "$root" apt-cache pkgnames linux-image-6.12. | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | sort -V | tail -1) ;;
    unstable) # whatever the metapackage points at
      image=$(lab_apt "$root" apt-cache show --no-all-versions linux-image-amd64 | sed -n 's/^Depends: //p' | tr ',' '\n' |
        sed 's/(.*//; s/ //g' | grep -E '^linux-image-[0-9]' | head -1) ;;
  esac
  [ -n "$image" ] || lab_die "kernel $name: no linux-image package found in $(suite_of "$root")"
  local kver=${image#linux-image-}
  local pkgs=("$image" $(deps "$root" "$image"))
  kdir=$LAB_CACHE/kernel/$kver
  if [ ! -f "$kdir/.done" ]; then
    lab_log "kernel $name: downloading ${pkgs[*]}"
    download "$root" "$LAB_CACHE/debs" "${pkgs[@]}"
    rm -rf "$kdir"; mkdir -p "$kdir"
    local p deb
    for p in "${pkgs[@]}"; do
      deb=$(ls -t "$LAB_CACHE/debs/${p}_"*.deb | head -1)
      lab_log "kernel $name: unpacking $(basename "$deb")"
      dpkg-deb -x "$deb" "$kdir"
    done
    # usr-merged packages put modules under usr/lib; the VM mounts one lib/modules tree
    local mods=$kdir/lib/modules
    [ -d "$mods/$kver" ] || { [ -d "$kdir/usr/lib/modules/$kver" ] && mods=$kdir/usr/lib/modules; }
    [ -d "$mods/$kver" ] || lab_die "kernel $name: no modules directory for $kver in ${pkgs[*]}"
    local vmlinuz; vmlinuz=$(ls "$kdir"/boot/vmlinuz-"$kver" "$kdir"/usr/lib/linux/vmlinuz-"$kver" 2>/dev/null | head -1 || true)
    [ -n "$vmlinuz" ] || vmlinuz=$(find "$kdir" -name "vmlinuz*" -type f | head -1)
    [ -n "$vmlinuz" ] || lab_die "kernel $name: no vmlinuz in ${pkgs[*]}"
    lab_log "kernel $name: depmod $kver"
    depmod -b "$(dirname "$(dirname "$mods")")" "$kver"
    ln -sfnr "$vmlinuz" "$kdir/vmlinuz"
    ln -sfnr "$mods" "$kdir/modules"
    echo "$kver" > "$kdir/kver"
    : > "$kdir/.done"
  fi
  kernel_config "$kdir" "$kver"
  grep -q '^CONFIG_NETKIT=y' "$kdir/config" 2>/dev/null || lab_log "kernel $name: warning: $kver has no CONFIG_NETKIT=y"
  set_resolved "KERNEL_DIR_${name//./_}" "$kdir"
  lab_log "kernel $name: $kver"
}

for k in "${kernels[@]}"; do fetch_kernel "$k"; done

# --- iproute2 and bpftool from backports ---------------------------------------------------------
tools=$(get_resolved TOOLS_DIR)
if ((refresh == 0)) && [ -n "$tools" ] && [ -f "$tools/.done" ] && lists_fresh bpo; then
  lab_log "tools: $(cat "$tools/versions") (cached)"
else
  ensure_lists bpo
  want=()
  for p in iproute2 bpftool; do
    v=$(lab_apt bpo apt-cache policy "$p" | sed -n 's/^ *Candidate: //p')
    [ -n "$v" ] && [ "$v" != "(none)" ] || lab_die "tools: $p has no candidate in bookworm-backports"
    want+=("$p=$v")
  done
  tools=$LAB_CACHE/tools/$(echo "${want[*]}" | sed 's/[^A-Za-z0-9.]/_/g')
  if [ ! -f "$tools/.done" ]; then
    lab_log "tools: downloading ${want[*]}"
    download bpo "$LAB_CACHE/debs" "${want[@]}"
    rm -rf "$tools"; mkdir -p "$tools"
    for w in "${want[@]}"; do
      deb=$(ls "$LAB_CACHE/debs/${w%%=*}_${w#*=}"_*.deb 2>/dev/null | head -1 || true)
      [ -n "$deb" ] || deb=$(ls -t "$LAB_CACHE/debs/${w%%=*}_"*.deb | head -1)
      dpkg-deb -x "$deb" "$tools"
    done
    echo "${want[*]}" > "$tools/versions"
    : > "$tools/.done"
  fi
  set_resolved TOOLS_DIR "$tools"
  lab_log "tools: $(cat "$tools/versions")"
fi
# Sanity: they must run on this system's libraries.
"$tools/usr/bin/ip" -V >/dev/null 2>&1 || "$tools/bin/ip" -V >/dev/null 2>&1 || lab_die "tools: unpacked ip does not run here"

# --- busybox-static from unstable: Debian 12's busybox has no udhcpc6, unstable's (1.38) has --------
# (a static binary, so it runs on the host and in the VM alike; the DHCPv6 tests use it)
bb=$(get_resolved BUSYBOX_SID_DIR)
if ((refresh == 0)) && [ -n "$bb" ] && [ -f "$bb/.done" ] && lists_fresh sid; then
  lab_log "busybox: $(cat "$bb/version") (cached)"
else
  ensure_lists sid
  v=$(lab_apt sid apt-cache policy busybox-static | sed -n 's/^ *Candidate: //p')
  [ -n "$v" ] && [ "$v" != "(none)" ] || lab_die "busybox: busybox-static has no candidate in unstable"
  bb=$LAB_CACHE/tools/busybox-static_$(echo "$v" | sed 's/[^A-Za-z0-9.]/_/g')
  if [ ! -f "$bb/.done" ]; then
    lab_log "busybox: downloading busybox-static=$v"
    download sid "$LAB_CACHE/debs" "busybox-static=$v"
    rm -rf "$bb"; mkdir -p "$bb"
    dpkg-deb -x "$(ls -t "$LAB_CACHE/debs/busybox-static_"*.deb | head -1)" "$bb"
    echo "$v" > "$bb/version"
    : > "$bb/.done"
  fi
  set_resolved BUSYBOX_SID_DIR "$bb"
  lab_log "busybox: $(cat "$bb/version")"
fi
"$bb/usr/bin/busybox" udhcpc6 --help >/dev/null 2>&1 || lab_die "busybox: $bb/usr/bin/busybox has no udhcpc6"
lab_log "ready (cache: $LAB_CACHE)"
