# Shared by the lab scripts (sourced, not run): paths, logging, the private apt wrapper.
# shellcheck shell=bash

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LAB_DIR/../.." && pwd)
# Everything downloaded or built lives here; it is disposable (delete it to start over).
LAB_CACHE=${KITNET_LAB_CACHE:-$REPO_DIR/.cache/lab}
# The kernels the lab knows, by the name run.sh takes, with the apt suite they come from.
LAB_KERNELS=(6.12 unstable)

lab_log() { printf '[lab] %s\n' "$*" >&2; }
lab_die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

# The Debian mirror the machine already uses (the one serving bookworm), unless KITNET_LAB_MIRROR says.
lab_mirror() {
  if [ -n "${KITNET_LAB_MIRROR:-}" ]; then echo "$KITNET_LAB_MIRROR"; return; fi
  local m
  m=$(apt-get indextargets --format '$(SITE) $(CODENAME)' 2>/dev/null | awk '$2 == "bookworm" { print $1; exit }')
  echo "${m:-http://deb.debian.org/debian}"
}

# lab_apt ROOT CMD ARGS...: runs apt-get/apt-cache against a private configuration and state under
# $LAB_CACHE/apt/ROOT, so the system's sources, lists and package state are never touched.
lab_apt() {
  local root=$LAB_CACHE/apt/$1; shift
  "$@" -q \
    -o Dir::Etc::SourceList="$root/sources.list" -o Dir::Etc::SourceParts="$root/sources.list.d" \
    -o Dir::Etc::Preferences="$root/preferences" -o Dir::Etc::PreferencesParts="$root/preferences.d" \
    -o Dir::State="$root/state" -o Dir::State::status="$root/state/status" \
    -o Dir::Cache="$root/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
    -o APT::Architecture=amd64 -o APT::Architectures=amd64 -o Acquire::Languages=none \
    -o APT::Get::List-Cleanup=true
}

# lab_apt_root NAME SUITE: creates the private apt root for one suite (idempotent).
lab_apt_root() {
  local root=$LAB_CACHE/apt/$1 suite=$2
  mkdir -p "$root/sources.list.d" "$root/preferences.d" "$root/state/lists/partial" "$root/cache/archives/partial"
  [ -f "$root/state/status" ] || : > "$root/state/status"
  local line="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(lab_mirror) $suite main"
  [ "$(cat "$root/sources.list" 2>/dev/null)" = "$line" ] || echo "$line" > "$root/sources.list"
}
