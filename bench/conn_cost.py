# SPDX-License-Identifier: Apache-2.0
"""conn_cost.py — what one held connection costs a ferry target (docs/SECURITY.md).

Starts `ferry-bench --mode=target` (caps lifted), fetches its descriptor, opens N idle
data connections that say HELLO from 127.0.0.2, and prints the target's resident memory
and thread count before and after.

usage: /usr/bin/python3 bench/conn_cost.py [build/ferry-bench] [N=200]
"""
import json
import re
import socket
import struct
import subprocess
import sys
import time

bench = sys.argv[1] if len(sys.argv) > 1 else "build/ferry-bench"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
p = subprocess.Popen([bench, "--mode=target", "--local_server_name=127.0.0.1", "--buffer_size=16777216"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                     env={"FERRY_MAX_CONNECTIONS_PER_PEER": "0", "FERRY_MAX_CONNECTIONS": str(N + 100)})
line = p.stdout.readline()
seg = re.search(r"segment (\S+)", line).group(1)
host, port = seg.split(":")
s = socket.create_connection((host, int(port)))
req = b'{"op":"descriptor"}'
s.sendall(b"FERRYHS1" + struct.pack("<I", len(req)) + req)
buf = b""
while len(buf) < 12 or len(buf) < 12 + struct.unpack("<I", buf[8:12])[0]:
    buf += s.recv(65536)
d = json.loads(buf[12:])
eid = int(d["engine_id"], 16); dport = d["transports"]["tcp"]["port"]


def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))


def threads():
    return int(re.search(r"Threads:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))
time.sleep(0.5)
r0, t0 = rss(), threads()
conns = []
for i in range(N):
    c = socket.socket(); c.bind(("127.0.0.2", 0)); c.connect(("127.0.0.1", dport))
    name = b"attacker"
    hdr = struct.pack("<IHBBiIQQQQ", 0x59525246, 1, 1, 0, 0, 0, 0, 0, len(name), eid)
    c.sendall(hdr + name); c.recv(48); conns.append(c)
time.sleep(0.5)
r1, t1 = rss(), threads()
print(f"{N} idle data connections after HELLO: RSS {r0} -> {r1} KiB ({(r1-r0)/N:.1f} KiB each), threads {t0} -> {t1}")
p.kill()
