#!/usr/bin/env bash
# The Vagrant lab from nothing to a verdict: Debian packages (only the missing ones), libvirtd (started
# when it does not answer), the checkout's build, the box (vagrant/box/build.sh, cached), `vagrant up`
# (etcd node and KITNET_LAB_HOSTS kitnet hosts), every agent healthy and in the cluster, the workloads
# (a netns client and a DHCP/RA-configured QEMU guest per host), the policy, allowed and denied traffic
# between hosts over v4 and v6, the flows on both ends in `kitnet observe` (and `hubble observe` when the
# CLI is around) with the remote workload's name and identity, `vagrant destroy`.
# Prints the time of each phase; exits non-zero at the first failure (the VMs are destroyed anyway,
# unless KITNET_LAB_KEEP=1).
# usage: bash vagrant/smoke.sh     (as root, Debian 12)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$here"
export VAGRANT_DEFAULT_PROVIDER=libvirt
# vagrant's own lock and state beside the Vagrantfile; a run per checkout
export VAGRANT_DOTFILE_PATH=$here/.vagrant
started=$SECONDS
phases=()
current=""
phase_start=0
log() { printf '[smoke %4ds] %s\n' "$((SECONDS - started))" "$*"; }
begin() { current=$1; phase_start=$SECONDS; log "== $1"; }
end() { phases+=("$(printf '%-22s %5d s' "$current" "$((SECONDS - phase_start))")"); log "== $current: $((SECONDS - phase_start)) s"; current=""; }
summary() {
  local p
  echo "---- phases ----"
  for p in "${phases[@]}"; do echo "$p"; done
  [ -z "$current" ] || printf '%-22s %5d s  (FAILED here)\n' "$current" "$((SECONDS - phase_start))"
  echo "total                  $((SECONDS - started)) s"
}
fail() { log "FAIL: $*"; exit 1; }

destroy() {
  local rc=$?
  if [ -f "$here/Vagrantfile" ] && [ "${KITNET_LAB_KEEP:-0}" != 1 ] && command -v vagrant > /dev/null; then
    [ -z "$current" ] || phases+=("$(printf '%-22s %5d s  (FAILED here)' "$current" "$((SECONDS - phase_start))")")
    current=""
    begin destroy
    vagrant destroy -f > "$here/.vagrant-destroy.log" 2>&1 || log "vagrant destroy failed (see $here/.vagrant-destroy.log)"
    end
  fi
  summary
  ((rc == 0)) && log "PASS" || log "FAILED (exit $rc)"
  exit "$rc"
}

[ "$(id -u)" = 0 ] || fail "run as root (libvirt's system instance, debootstrap)"

# ------------------------------------------------------------------------------------------------
begin packages
packages=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  debootstrap e2fsprogs dosfstools mtools syslinux syslinux-common fdisk rsync dnsmasq-base iptables jq curl xz-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q > /dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" > /dev/null
fi
end

begin libvirtd
if ! virsh -c qemu:///system version > /dev/null 2>&1; then
  if [ "$(cat /proc/1/comm)" = systemd ]; then
    systemctl start libvirtd virtlogd
  else
    # no systemd (a container): the daemons by hand
    pgrep -x virtlogd > /dev/null || virtlogd -d
    pgrep -x libvirtd > /dev/null || libvirtd -d
  fi
  for _ in $(seq 1 30); do virsh -c qemu:///system version > /dev/null 2>&1 && break; sleep 1; done
  virsh -c qemu:///system version > /dev/null || fail "libvirtd does not answer on qemu:///system"
fi
log "libvirt $(virsh -c qemu:///system version | sed -n 's/^Running hypervisor: //p')"
end

trap destroy EXIT
# a signal is a failure: the EXIT trap then sees its status, not the last command's
trap 'exit 130' INT
trap 'exit 143' TERM

begin build
(cd "$repo" && bash scripts/setup.sh) > "$here/.setup.log" 2>&1 || { tail -20 "$here/.setup.log"; fail "scripts/setup.sh failed"; }
bash "$here/box/build.sh"
# KVM only where a KVM guest really runs: /dev/kvm can open and still fail every guest ("KVM internal
# error: Emulation failure" at the first AVX instruction of the kernel on this kind of nested setup);
# then, or without /dev/kvm, QEMU TCG. The probe boots the box's kernel without a root file system: a
# working KVM reaches the kernel's "VFS: Unable to mount root" panic in seconds. KITNET_LAB_DRIVER
# decides when set.
if [ -z "${KITNET_LAB_DRIVER:-}" ]; then
  KITNET_LAB_DRIVER=qemu
  kernel=${KITNET_BOX_CACHE:-$repo/.cache/vagrant-box}/vmlinuz
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ -f "$kernel" ]; then
    # a guest that hit the internal error stays paused, so watch its output instead of waiting for it
    probe_log=$(mktemp)
    timeout 60 qemu-system-x86_64 -accel kvm -M pc -m 128 -nodefaults -display none -no-reboot -serial stdio \
      -kernel "$kernel" -append "console=ttyS0 panic=-1" > "$probe_log" 2>&1 &
    probe=$!
    for _ in $(seq 1 120); do
      grep -qE 'Unable to mount root|KVM internal error' "$probe_log" && break
      kill -0 "$probe" 2> /dev/null || break
      sleep 0.5
    done
    kill "$probe" 2> /dev/null || true
    wait "$probe" 2> /dev/null || true
    kvm_out=$(cat "$probe_log")
    rm -f "$probe_log"
    if grep -q 'Unable to mount root' <<< "$kvm_out" && ! grep -q 'KVM internal error' <<< "$kvm_out"; then
      KITNET_LAB_DRIVER=kvm
    else
      log "KVM does not run guests here ($(grep -m1 -E 'KVM internal error|error' <<< "$kvm_out" || echo 'no kernel panic within 60 s')): QEMU TCG"
    fi
  fi
fi
export KITNET_LAB_DRIVER
log "libvirt driver: $KITNET_LAB_DRIVER"
plan=$(node "$repo/dist/vagrant/lab-config.js" plan)
mapfile -t hosts < <(jq -r '.hosts[].name' <<< "$plan")
log "hosts: ${hosts[*]}; etcd at $(jq -r .etcd.endpoint <<< "$plan")"
end

# ------------------------------------------------------------------------------------------------
begin "vagrant up"
# in order (etcd first), and the workloads only once every agent is healthy (next phases)
vagrant up --no-parallel --provision-with network,etcd,host > "$here/.vagrant-up.log" 2>&1 ||
  { tail -40 "$here/.vagrant-up.log"; fail "vagrant up failed (log: $here/.vagrant-up.log)"; }
end

on() { local h=$1; shift; vagrant ssh "$h" -c "sudo bash -c $(printf '%q' "$*")" -- -q 2> /dev/null; }

begin "agents healthy"
n=${#hosts[@]}
for h in "${hosts[@]}"; do
  deadline=$((SECONDS + 600))
  while :; do
    s=$(on "$h" 'kitnet cluster status -o json' || true)
    if jq -e --argjson n "$n" '.mode == "on" and .etcd.state == "connected" and (.nodes | length) == $n' <<< "$s" > /dev/null 2>&1; then
      break
    fi
    ((SECONDS < deadline)) || { on "$h" 'systemctl status kitnet --no-pager; journalctl -u kitnet --no-pager -n 30' || true; fail "$h: not healthy in the cluster: $s"; }
    sleep 5
  done
  on "$h" 'systemctl is-active kitnet && kitnet cluster status'
done
end

begin "workloads"
# every host at once: most of the time is the guests' boot (TCG inside TCG)
declare -A provisioning
for h in "${hosts[@]}"; do
  vagrant provision "$h" --provision-with workloads > "$here/.vagrant-workloads-$h.log" 2>&1 &
  provisioning[$h]=$!
done
for h in "${hosts[@]}"; do
  wait "${provisioning[$h]}" || { tail -40 "$here/.vagrant-workloads-$h.log"; fail "$h: registering the workloads failed"; }
  grep -E 'KN-|registered|guest:' "$here/.vagrant-workloads-$h.log" | sed 's/^ *[a-z0-9]*: //' || true
done
declare -A ip4 ip6 identity
for h in "${hosts[@]}"; do
  ws=$(on "$h" 'kitnet workload ls -n lab -o json')
  for w in client guest; do
    ip4[$w-$h]=$(jq -r --arg n "$w-$h" '.[] | select(.name == $n) | .ipv4' <<< "$ws")
    ip6[$w-$h]=$(jq -r --arg n "$w-$h" '.[] | select(.name == $n) | .ipv6' <<< "$ws")
    identity[$w-$h]=$(jq -r --arg n "$w-$h" '.[] | select(.name == $n) | .identity' <<< "$ws")
    log "$w-$h: ${ip4[$w-$h]} ${ip6[$w-$h]} identity ${identity[$w-$h]}"
  done
done
end

begin policy
for h in "${hosts[@]}"; do
  on "$h" "kitnet policy apply -f /opt/kitnet/vagrant/policy.yaml"
done
end

# ------------------------------------------------------------------------------------------------
begin traffic
# curl from a client namespace: prints the HTTP body, or fails
fetch() { on "$1" "ip netns exec client curl -sS -g --max-time 5 http://$2/" 2>&1; }
checks=0
for a in "${hosts[@]}"; do
  for b in "${hosts[@]}"; do
    [ "$a" != "$b" ] || continue
    for fam in 4 6; do
      if [ $fam = 4 ]; then addr=${ip4[guest-$b]}; else addr="[${ip6[guest-$b]}]"; fi
      # allowed: port 80 (the guest answers with its name)
      got=$(fetch "$a" "$addr:80" || true)
      [[ "$got" == *"guest-$b:80"* ]] || fail "client-$a -> guest-$b:80 over IPv$fam should be allowed; got: $got"
      log "allowed: client-$a -> guest-$b $addr:80 (IPv$fam): $got"
      # denied: port 81 (the guest serves it, the policy does not allow it)
      if got=$(fetch "$a" "$addr:81"); then fail "client-$a -> guest-$b:81 over IPv$fam should be denied; got: $got"; fi
      log "denied:  client-$a -> guest-$b $addr:81 (IPv$fam)"
      checks=$((checks + 2))
    done
  done
done
log "$checks traffic checks passed"
end

begin observe
hubble_cli=${KITNET_HUBBLE_CLI:-/work/shared/tools/hubble/hubble}
for a in "${hosts[@]}"; do
  for b in "${hosts[@]}"; do
    [ "$a" != "$b" ] || continue
    # on b (the guest's host): ingress from the remote client, named, with its identity
    flows=$(on "$b" "kitnet observe --last 2000 -o json --to-workload guest-$b")
    for want in "FORWARDED 80" "DROPPED 81"; do
      set -- $want
      # the first match, found by jq itself (`| head -1` under pipefail ended the run with SIGPIPE)
      hit=$(jq -cn --arg c "client-$a" --arg v "$1" --argjson p "$2" --argjson id "${identity[client-$a]}" '
        first(inputs | (.flow // .) | select(.verdict == $v and .source.pod_name == $c and .source.identity == $id
          and ((.l4.TCP.destination_port // -1) == $p))) // empty' <<< "$flows")
      [ -n "$hit" ] || fail "$b: no $1 flow to guest-$b:$2 from client-$a (identity ${identity[client-$a]}) in kitnet observe"
    done
    { on "$b" "kitnet observe --last 2000 --from-workload client-$a" | grep -E ':(80|81) ' || true; } | tail -4
    # on a (the client's host): egress to the remote guest, named
    flows=$(on "$a" "kitnet observe --last 2000 -o json --from-workload client-$a")
    hit=$(jq -cn --arg g "guest-$b" --argjson id "${identity[guest-$b]}" 'first(inputs | (.flow // .) | select(.destination.pod_name == $g and .destination.identity == $id)) // empty' <<< "$flows")
    [ -n "$hit" ] || fail "$a: no flow from client-$a to guest-$b (identity ${identity[guest-$b]}) in kitnet observe"
    { on "$a" "kitnet observe --last 2000 --to-workload guest-$b" || true; } | tail -4
    log "kitnet observe: client-$a -> guest-$b seen on $a and $b with names and identities"
  done
done
if [ -x "$hubble_cli" ]; then
  for h in "${hosts[@]}"; do
    # the binary itself, or the compressed one beside a wrapper script (/work/shared/tools/hubble)
    if [ "$(head -c 4 "$hubble_cli" | od -An -c | tr -d ' ')" = '177ELF' ]; then
      cat "$hubble_cli"
    else
      xz -dc "$(ls "$(dirname "$hubble_cli")"/hubble-*-linux-amd64.xz | head -1)"
    fi | vagrant ssh "$h" -c 'cat > /tmp/hubble && chmod +x /tmp/hubble' -- -q
    out=$(on "$h" "/tmp/hubble observe --server unix:///run/kitnet/hubble.sock --last 2000 --namespace lab -o compact" || true)
    { grep -E 'lab/client-.*lab/guest-' <<< "$out" || true; } | tail -4
    grep -q 'lab/client-' <<< "$out" || fail "$h: hubble observe shows no flows of lab/client-*"
    log "hubble observe on $h: $(grep -c 'lab/' <<< "$out") flows of namespace lab"
  done
else
  log "hubble CLI not found at $hubble_cli: hubble observe skipped"
fi
end
