#!/usr/bin/env python3
"""Hold N idle implicit-TLS sessions open against a local submitd, to measure
memory per session. Loopback only; bounded in count and time.

usage: scripts/idle-sessions.py PORT CA_FILE [COUNT=1000] [PER_ADDRESS=20] [SECONDS=30]

Connections come from 127.0.0.2, 127.0.0.3, ... (PER_ADDRESS each, the
server's per-client limit). Prints "open N" when all are up, holds them for
SECONDS, then closes them and exits.
"""
import socket
import ssl
import sys
import time

port, ca = int(sys.argv[1]), sys.argv[2]
count = min(int(sys.argv[3]) if len(sys.argv) > 3 else 1000, 20000)
per_address = int(sys.argv[4]) if len(sys.argv) > 4 else 20
seconds = min(float(sys.argv[5]) if len(sys.argv) > 5 else 30.0, 600.0)

ctx = ssl.create_default_context(cafile=ca)
held = []
for i in range(count):
    source = "127.0.%d.%d" % ((2 + i // per_address) // 250, 2 + (i // per_address) % 250)
    raw = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=10)
    conn = ctx.wrap_socket(raw, server_hostname="localhost")
    conn.recv(128)  # the greeting
    held.append(conn)
print("open", len(held), flush=True)
time.sleep(seconds)
for conn in held:
    conn.close()
