"""A broadcast reader that consumes slower than the sender sends
(tests/broadcast.rs in unixws-cli): says hello into the room, then expects
COUNT messages 'm000000 ...', 'm000001 ...' in order, sleeping DELAY
seconds after each (hellos of other readers are skipped). Prints
'ok COUNT', or what went wrong and exits 1."""
import sys
import time

from websockets.sync.client import unix_connect

path, count, delay, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with unix_connect(path, uri="ws://localhost/room", max_size=1 << 24) as ws:
    ws.send(f"hello {name}")
    expected = 0
    while expected < count:
        message = ws.recv(timeout=60)
        if message.startswith("hello "):
            continue
        want = f"m{expected:06} "
        if not message.startswith(want):
            print(f"{name}: expected {want!r}, got {message[:20]!r}", flush=True)
            sys.exit(1)
        expected += 1
        time.sleep(delay)
print(f"ok {count}", flush=True)
