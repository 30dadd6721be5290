"""An HTTP/1.1 load generator on raw asyncio sockets: closed loop (throughput) or open loop (fixed rate).

`python -m bench.loadgen REQUESTS_FILE --port P --mode closed|open ...` sends
the pre-built raw requests of REQUESTS_FILE (a pickled list of bytes, each one
request used at most once), prints one JSON object: answers per status, the
indexes answered 2xx, throughput, latency percentiles and the CPU it used.

Open loop: request i is due at start + i/rate and its latency counts from that
due time, so a slow server cannot slow the sender down and hide its own
queueing (coordinated omission). It runs in a process of its own so that the
benchmark's simulators do not share its interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pickle
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_HEAD_END = b"\r\n\r\n"
MAX_OPEN_CONNECTIONS = 256


@dataclass
class Results:
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: list[int] = field(default_factory=list)  # indexes of the requests answered 2xx
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def record(self, index: int, status: int, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.accepted.append(index)
        self.latencies.append(latency)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def exchange(self, raw: bytes) -> int:
        """Sends one request in one write and reads its whole answer; returns the status."""
        self.writer.write(raw)
        head = await self.reader.readuntil(_HEAD_END)
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def closed_loop(
    requests: list[bytes], port: int, connections: int, seconds: float, *, cycle: bool = False
) -> tuple[Results, float]:
    """`connections` clients, each sending its next request as soon as the last one is answered.

    Each request goes once, unless `cycle` (a server that stores nothing may see one twice).
    """
    results = Results()
    counter = itertools.cycle(range(len(requests))) if cycle else iter(range(len(requests)))
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        conn = await Connection.open(port)
        try:
            while time.perf_counter() < deadline and (index := next(counter, None)) is not None:
                sent = time.perf_counter()
                try:
                    status = await conn.exchange(requests[index])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    results.errors += 1
                    conn.close()
                    conn = await Connection.open(port)
                    continue
                results.record(index, status, time.perf_counter() - sent)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return results, time.perf_counter() - started


async def open_loop(
    requests: list[bytes], port: int, rate: float, seconds: float, stop_file: Path | None = None
) -> tuple[Results, float]:
    """Request i is due at start + i/rate, latency measured from then; none is sent once `stop_file` exists."""
    results, idle = Results(), asyncio.Queue[Connection]()
    opened = 0
    total = min(len(requests), int(rate * seconds))
    started = time.perf_counter()

    async def send(index: int, due: float) -> None:
        nonlocal opened
        if idle.empty() and opened < MAX_OPEN_CONNECTIONS:
            opened += 1
            conn = await Connection.open(port)
        else:
            conn = await idle.get()
        try:
            status = await conn.exchange(requests[index])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            results.errors += 1
            conn.close()
            opened -= 1
            return
        results.record(index, status, time.perf_counter() - due)
        idle.put_nowait(conn)

    tasks = []
    for index in range(total):
        if stop_file is not None and stop_file.exists():
            break
        due = started + index / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(send(index, due)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return results, time.perf_counter() - started


async def sink(port_file: Path) -> None:
    """A minimal HTTP/1.1 server answering 202 to every request: what the generator alone can send."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(_HEAD_END)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(results: Results, elapsed: float, cpu: float) -> dict[str, object]:
    answered = sum(results.statuses.values())
    return {
        "statuses": {str(k): v for k, v in sorted(results.statuses.items())},
        "accepted": results.accepted,
        "errors": results.errors,
        "answered": answered,
        "elapsed": elapsed,
        "throughput": answered / elapsed if elapsed else 0.0,
        "p50_ms": percentile(results.latencies, 0.50) * 1000,
        "p99_ms": percentile(results.latencies, 0.99) * 1000,
        "max_ms": max(results.latencies, default=0.0) * 1000,
        "cpu_seconds": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument(
        "requests", type=Path, help="pickled list of raw HTTP requests (sink: file to write the port to)"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=("closed", "open", "sink"), default="closed")
    parser.add_argument("--cycle", action="store_true", help="closed loop: send the requests round and round")
    parser.add_argument("--connections", type=int, default=32, help="closed loop: concurrent clients")
    parser.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stop-file", type=Path, default=None, help="open loop: stop sending once this file exists")
    args = parser.parse_args(argv)
    if args.mode == "sink":
        asyncio.run(sink(args.requests))
        return 0
    requests: list[bytes] = pickle.loads(args.requests.read_bytes())  # noqa: S301 - the benchmark wrote it
    before = resource.getrusage(resource.RUSAGE_SELF)
    if args.mode == "closed":
        run = closed_loop(requests, args.port, args.connections, args.seconds, cycle=args.cycle)
    else:
        run = open_loop(requests, args.port, args.rate, args.seconds, args.stop_file)
    results, elapsed = asyncio.run(run)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sys.stdout.write(json.dumps(summary(results, elapsed, cpu)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
