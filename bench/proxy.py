#!/usr/bin/env python3
"""A TCP proxy that caps every connection's bandwidth, like a per-connection limit on the path
to S3 (one TCP stream rarely exceeds ~50-100 MB/s to S3; parallel streams add up).

    proxy.py --target 127.0.0.1:PORT --rate-mbps 50 --port-file FILE

Listens on a free loopback port (written to FILE) and forwards each connection to the target.
Each direction of each connection is paced by a token bucket: at most RATE MB/s (10^6 bytes).
"""

import argparse
import asyncio
import time

CHUNK = 64 * 1024


async def pipe(reader, writer, rate):
    # Token bucket without burst credit: idle time (keep-alive) earns nothing beyond one chunk.
    free_at = time.monotonic()
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            now = time.monotonic()
            free_at = max(free_at, now) + len(data) / rate
            if free_at > now:
                await asyncio.sleep(free_at - now)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--rate-mbps", type=float, default=50.0)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    rate = args.rate_mbps * 1e6

    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, upstream_writer, rate),
            pipe(upstream_reader, client_writer, rate),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    with open(args.port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
