"""Python `websockets` as a client with its default compression
(permessage-deflate offered): sends compressible text and binary to an
echo server at PATH (a Unix socket, or a ws:// URL) and checks the
echoes; prints the negotiated extensions and 'ok' (tests/compression.rs,
and the proxy's tests)."""
import json
import sys

from websockets.sync.client import connect, unix_connect

path = sys.argv[1]
doc = json.dumps([{"id": i, "name": f"user {i}", "tags": ["a", "b", "c"]} for i in range(60)])
messages = [doc, doc.encode() * 3, "short", doc[::-1]]
if path.startswith("ws://"):
    opened = connect(path)
else:
    opened = unix_connect(path, uri="ws://localhost/compressed")
with opened as ws:
    print("extensions", [e.name for e in ws.protocol.extensions], flush=True)
    for m in messages:
        ws.send(m)
        got = ws.recv(timeout=10)
        if got != m:
            print(f"echo mismatch for a {type(m).__name__} of {len(m)}")
            sys.exit(1)
    ws.close()
print("ok", flush=True)
