#!/usr/bin/env bash
# The etcd node: Debian's etcd-server (in the box, off) listening on the private network's address,
# one member, plain HTTP on the isolated network (the lab's kitnet hosts are its only clients).
# usage: etcd.sh IPV4 IPV6
set -euo pipefail
ipv4=$1
cat > /etc/default/etcd <<CONF
# Written by vagrant/provision/etcd.sh
ETCD_NAME=etcd
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=http://$ipv4:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ipv4:2379
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER=etcd=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER_STATE=new
CONF
systemctl enable etcd > /dev/null 2>&1
systemctl restart etcd
for _ in $(seq 1 120); do
  if ETCDCTL_API=3 etcdctl --endpoints "http://$ipv4:2379" endpoint health > /dev/null 2>&1; then
    echo "etcd.sh: etcd healthy at http://$ipv4:2379"
    exit 0
  fi
  sleep 1
done
echo "etcd.sh: etcd did not become healthy at http://$ipv4:2379 in 120 s" >&2
journalctl -u etcd --no-pager -n 30 >&2
exit 1
