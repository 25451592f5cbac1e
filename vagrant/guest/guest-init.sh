#!/bin/busybox sh
# /init of the lab's guest VM: no network setup of its own, only the clients. Lines starting with KN-
# on the serial console say how far it got (vagrant/provision/workloads.sh waits for KN-READY).
/bin/busybox mkdir -p /bb
/bin/busybox --install -s /bb
export PATH=/usr/sbin:/sbin:/bb
IP=/usr/sbin/ip
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m; done
name=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^kn\.name=//p')
echo "KN-BOOTED $(uname -r) $name"
$IP link set lo up
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
i=0; while ! $IP link show eth0 >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
cat > /bin/udhcpc-script <<'S'
#!/bb/sh
IP=/usr/sbin/ip
case "$1" in
  deconfig) $IP link set "$interface" up ;;
  bound|renew)
    $IP addr replace "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      if [ "$2" = 0.0.0.0 ]; then $IP route replace "$1" dev "$interface" scope link
      else $IP route replace "$1" via "$2" dev "$interface"; fi
      shift 2
    done
    [ -n "$staticroutes" ] || $IP route replace default via "$router" dev "$interface" onlink
    echo "KN-LEASE4 ip=$ip mask=$mask router=$router hostname=$hostname mtu=$mtu lease=$lease"
    ;;
esac
S
cat > /sbin/dhclient-script <<'S'
#!/bb/sh
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    /usr/sbin/ip -6 addr replace "$new_ip6_address/128" dev "$interface" nodad
    echo "KN-LEASE6 ip=$new_ip6_address life=$new_max_life" ;;
esac
S
chmod +x /bin/udhcpc-script /sbin/dhclient-script
$IP link set eth0 up
# -b: keep renewing in the background once bound
udhcpc -i eth0 -b -t 20 -T 3 -s /bin/udhcpc-script -O staticroutes -O mtu -O hostname -x hostname:"$name" || echo KN-DHCP4 fail
i=0; while ! $IP -6 route show default | grep -q fe80::1 && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
$IP -6 route show default | grep -q fe80::1 && echo KN-RA ok || echo KN-RA fail
printf 'timeout 60;\n' > /etc/dhclient6.conf
# without -1/-d dhclient forks once bound and renews the lease
dhclient -6 -cf /etc/dhclient6.conf -sf /sbin/dhclient-script -lf /var/lib/dhcp/d6.leases -pf /run/d6.pid eth0 2>/tmp/dhclient.log \
  || { echo KN-DHCP6 fail; tail -n 20 /tmp/dhclient.log; }
for port in 80 81; do
  mkdir -p /www/$port
  echo "$name:$port" > /www/$port/index.html
  httpd -p $port -h /www/$port
done
echo "KN-READY $name v4=$($IP -4 -o addr show dev eth0 | awk '{print $4}') v6=$($IP -6 -o addr show dev eth0 scope global | awk '{print $4}')"
while true; do sleep 3600; done
