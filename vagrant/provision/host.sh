#!/usr/bin/env bash
# A kitnet host of the lab: the config (cluster section: the lab's cluster, the etcd node, this host's
# private-network addresses as nodeIP/nodeIPv6) from vagrant/lab-config.ts, then `kitnet install` from
# the synced checkout, as an operator installs it: unit in /etc/systemd/system, enabled and started.
# Waits until the agent answers /healthz. `kitnet` on PATH runs the checkout's CLI.
# usage: host.sh HOST     (as root, in the VM; the checkout at $KITNET_CHECKOUT, default /opt/kitnet)
set -euo pipefail
host=$1
checkout=${KITNET_CHECKOUT:-/opt/kitnet}
timeout=${KITNET_LAB_AGENT_TIMEOUT:-600}
say() { printf '[host.sh %s] %s\n' "$host" "$*"; }
[ -f "$checkout/dist/vagrant/lab-config.js" ] || { say "$checkout/dist is missing: build the checkout on the machine running vagrant (bash scripts/setup.sh)" >&2; exit 1; }

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
printf '#!/bin/sh\nexec /usr/bin/node %s/bin/kitnet.js "$@"\n' "$checkout" > /usr/local/bin/kitnet
chmod 0755 /usr/local/bin/kitnet

mkdir -p /etc/kitnet
new=$(mktemp)
node "$checkout/dist/vagrant/lab-config.js" config "$host" > "$new"
if ! cmp -s "$new" /etc/kitnet/config.yaml; then
  install -m 0644 "$new" /etc/kitnet/config.yaml
  say "wrote /etc/kitnet/config.yaml"
  changed=1
else
  changed=0
fi
rm -f "$new"
kitnet config check /etc/kitnet/config.yaml

# The lab's hosts are one-vCPU TCG VMs that also emulate a guest: the agent's start (node loading the
# agent, restoring workloads) can take minutes there, longer than the unit's 90 s.
mkdir -p /etc/systemd/system/kitnet.service.d
printf '[Service]\nTimeoutStartSec=900\n' > /etc/systemd/system/kitnet.service.d/lab.conf
was_active=0
systemctl is-active -q kitnet && was_active=1
kitnet install
# a second provisioning with a new config restarts the agent (install leaves a running service as it is)
if ((changed && was_active)); then systemctl restart kitnet; fi

say "waiting for the agent (up to ${timeout} s)"
deadline=$((SECONDS + timeout))
until curl -sf --unix-socket /run/kitnet/kitnet.sock http://kitnet/healthz > /dev/null 2>&1; do
  if ((SECONDS > deadline)); then
    say "the agent did not answer /healthz in ${timeout} s" >&2
    systemctl status kitnet --no-pager -n 0 >&2 || true
    journalctl -u kitnet --no-pager -n 40 >&2 || true
    exit 1
  fi
  sleep 2
done
systemctl status kitnet --no-pager -n 0 | sed -n '1,4p'
say "agent healthy after ${SECONDS} s"
