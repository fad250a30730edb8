"""A TCP proxy in front of an S3 server, run as its own process so tests can kill it (S3 "goes down") and start
it again on the same port (S3 "comes back", with every object the server behind it kept).

``--slowdown N`` answers the first N HTTP requests with ``503 SlowDown`` (S3's throttling answer) instead of
forwarding them; each one is logged as a line ``slowdown`` to ``--log``. Everything else is piped through
byte for byte.

    python tests/s3_proxy.py --port 0 --upstream 127.0.0.1:5000 [--slowdown 3] [--log F]

It prints ``listening <port>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)


class Proxy:
    def __init__(self, upstream: tuple[str, int], slowdown: int, log: str | None) -> None:
        self.upstream = upstream
        self.slowdown = slowdown
        self.log = log

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _drain_body(self, reader: asyncio.StreamReader, head: bytes) -> None:
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip().lower()
        if headers.get("expect") == "100-continue":
            return  # the client waits for us: answering at once is allowed, and it then sends no body
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return
                await reader.readexactly(size + 2)
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = b""
        if self.slowdown > 0:
            try:
                first = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                writer.close()
                return
            if self.slowdown > 0:
                self.slowdown -= 1
                with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
                    await self._drain_body(reader, first)
                if self.log:
                    with open(self.log, "a") as f:
                        f.write("slowdown\n")
                writer.write(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(SLOWDOWN_BODY)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + SLOWDOWN_BODY
                )
                try:
                    await writer.drain()
                finally:
                    writer.close()
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        if first:
            up_writer.write(first)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--slowdown", type=int, default=0)
    parser.add_argument("--log", default=None)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    proxy = Proxy((host, int(port)), args.slowdown, args.log)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, reuse_address=True)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
