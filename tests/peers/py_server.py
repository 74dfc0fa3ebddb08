"""Echo server on a Unix socket with Python `websockets` (see README.md)."""
import asyncio
import signal
import sys

from websockets.asyncio.server import unix_serve
from websockets.exceptions import ConnectionClosed


async def handler(ws):
    print(f"path {ws.request.path}", flush=True)
    try:
        async for msg in ws:
            if isinstance(msg, str) and msg.startswith("close:"):
                await ws.close(4000, msg[len("close:"):])
                break
            await ws.send(msg)
    except ConnectionClosed:
        pass  # a close code other than 1000/1001 ends the iteration this way
    await ws.wait_closed()
    print(f"closed {ws.close_code} {ws.close_reason}", flush=True)


async def main(path):
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with unix_serve(handler, path, max_size=64 << 20):
        print("ready", flush=True)
        await stop


asyncio.run(main(sys.argv[1]))
