#!/usr/bin/env python3
# A hand-made DHCP sender for the hostile-sender tests: writes raw Ethernet frames on an interface
# (run inside the guest's namespace) and, for `exchange`, waits for one reply to UDP port 68.
# usage: dhcp-probe.py send IFACE HEX...        (each HEX one whole frame)
#        dhcp-probe.py exchange IFACE HEX SECONDS  (prints the reply frame as hex, or nothing)
#        dhcp-probe.py tap-exchange TAP HEX SECONDS (the same as the VM behind an existing tap: its fd)
import fcntl, os, select, socket, struct, sys, time


def is_reply(f):
    if len(f) < 42 or f[12:14] != b'\x08\x00' or f[23] != 17:
        return False
    ihl = (f[14] & 15) * 4
    return int.from_bytes(f[14 + ihl + 2:14 + ihl + 4], 'big') == 68


if sys.argv[1] == 'tap-exchange':
    TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454ca, 0x0002, 0x1000
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', sys.argv[2].encode(), IFF_TAP | IFF_NO_PI))
    os.write(fd, bytes.fromhex(sys.argv[3]))
    deadline = time.time() + float(sys.argv[4])
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        f = os.read(fd, 4096)
        if is_reply(f):
            print(f.hex())
            break
    sys.exit(0)

iface = sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((iface, 0))
if sys.argv[1] == 'send':
    for h in sys.argv[3:]:
        s.send(bytes.fromhex(h))
elif sys.argv[1] == 'exchange':
    s.send(bytes.fromhex(sys.argv[3]))
    deadline = time.time() + float(sys.argv[4])
    while time.time() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        f, addr = s.recvfrom(4096)
        if addr[2] != socket.PACKET_OUTGOING and is_reply(f):
            print(f.hex())
            break
