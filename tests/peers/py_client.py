"""Interop client with Python `websockets` (see README.md)."""
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

path = sys.argv[1]
uri = "ws://localhost/interop?x=1"
big = bytes(i % 251 for i in range(1 << 20))
messages = ["hello ✓", bytes(range(256)), "", big]

with unix_connect(path, uri=uri, max_size=64 << 20) as ws:
    for m in messages:
        ws.send(m)
        got = ws.recv()
        if got != m:
            print(f"echo mismatch: sent {type(m).__name__} of {len(m)}, got {type(got).__name__} of {len(got)}")
            sys.exit(1)
    ws.close(4000, "client-bye")

with unix_connect(path, uri=uri, max_size=64 << 20) as ws:
    ws.send("close:server-bye")
    try:
        ws.recv()
        print("expected the server to close")
        sys.exit(1)
    except ConnectionClosed as e:
        if e.rcvd is None or e.rcvd.code != 4000 or e.rcvd.reason != "server-bye":
            print(f"server close arrived as {e.rcvd!r}")
            sys.exit(1)

print("ok", flush=True)
