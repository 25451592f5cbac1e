#!/usr/bin/env bash
# Every lab node: the private network's IPv6 address beside the IPv4 one Vagrant configured (Vagrant's
# Debian guest writes a systemd-networkd file per NIC; the address goes into a drop-in of that file, so
# it survives reboots, and onto the link now).
# usage: network.sh IPV4 IPV6
set -euo pipefail
ipv4=$1 ipv6=$2
dev=$(ip -o -4 addr show | awk -v a="$ipv4" '{split($4, p, "/"); if (p[1] == a) print $2}' | head -1)
[ -n "$dev" ] || { echo "network.sh: no interface has $ipv4 (Vagrant's private network did not come up)" >&2; ip -br addr >&2; exit 1; }
for f in /etc/systemd/network/*.network; do
  grep -qs "^Name=$dev\$" "$f" || continue
  mkdir -p "$f.d"
  printf '[Network]\nAddress=%s/64\nIPv6AcceptRA=no\n' "$ipv6" > "$f.d/kitnet-lab-ipv6.conf"
done
sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=0"
ip -6 addr replace "$ipv6/64" dev "$dev" nodad
echo "network.sh: $dev has $ipv4 and $ipv6"
