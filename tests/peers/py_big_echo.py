"""Large echoes with Python `websockets` (asyncio): sends each size, one
after another, and checks the echo; a receive that takes over 15 s fails
(a hang check; an echo takes milliseconds). Usage: py_big_echo.py URL."""
import asyncio
import sys

import websockets


async def main(url):
    async with websockets.connect(url, max_size=64 << 20) as ws:
        for size in (1 << 20, 4 << 20, 8 << 20):
            message = "*" * size
            await ws.send(message)
            try:
                got = await asyncio.wait_for(ws.recv(), 15)
            except asyncio.TimeoutError:
                print(f"no echo of {size} bytes within 15 s")
                sys.exit(1)
            if got != message:
                print(f"echo of {size} bytes came back as {len(got)} bytes")
                sys.exit(1)
    print("ok", flush=True)


asyncio.run(main(sys.argv[1]))
