"""Python `websockets` as a client of the axum example (tests/axum.rs):
prints the server's greeting and this process's own pid, then checks an
echo."""
import os
import sys

from websockets.sync.client import unix_connect

path = sys.argv[1]
with unix_connect(path, uri="ws://localhost/ws") as ws:
    greeting = ws.recv(timeout=10)
    ws.send("ping from python")
    echo = ws.recv(timeout=10)
    if echo != "ping from python":
        print(f"echo mismatch: {echo!r}")
        sys.exit(1)
    ws.close()
print(f"greeting {greeting}")
print(f"pid {os.getpid()} uid {os.geteuid()}", flush=True)
