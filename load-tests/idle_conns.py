#!/usr/bin/env python3
# Run by load-tests/run.sh: python3 load-tests/idle_conns.py --port PORT --pid PID [--pid PID ...] [--conns N]
"""Memory per idle keep-alive connection of a proxy.

Reads the proxy's resident memory, opens N connections, sends one complete keep-alive
request on each and reads its response (so the proxy has done real work on every
connection and is now waiting for the next request), holds them all idle, reads the
resident memory again, and prints the difference divided by the number of connections.

Output: one line of key=value pairs that run.sh parses, e.g.
    conns=10000 failed=0 rss_before_kib=5120 rss_after_kib=140000 kib_per_conn=13.49
"""

import argparse
import asyncio
import resource
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: loadtest\r\nUser-Agent: idle_conns\r\n\r\n"


def rss_kib(pids):
    """Sum of VmRSS over the given processes (nginx: its worker(s); others: the one process)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def raise_fd_limit(wanted):
    """Each connection is one descriptor here; lift the soft limit as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def read_response(reader):
    """Read one HTTP/1.1 response: head, then a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        await reader.readuntil(b"0\r\n\r\n")  # the small bodies used here come in one chunk
    else:
        length = 0
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
    if b"connection: close" in lower:
        raise ConnectionError("proxy asked to close the connection")
    return status


async def open_one(host, port, gate, timeout):
    """One connection with one finished request on it; returns (reader, writer) to keep it open."""
    async with gate:  # bound the connects in flight so the listen backlog does not overflow
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(REQUEST)
        status = await asyncio.wait_for(read_response(reader), timeout)
        if status != 200:
            writer.close()
            raise ConnectionError(f"status {status}")
        return reader, writer


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, action="append", required=True, help="process(es) whose RSS to sum")
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=256, help="connects in flight at once")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per connect and per response")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to hold before reading RSS")
    args = p.parse_args()

    limit = raise_fd_limit(args.conns + 256)
    conns = min(args.conns, limit - 256)
    if conns < args.conns:
        print(f"idle_conns: descriptor limit {limit}: opening {conns} connections, not {args.conns}", file=sys.stderr)

    before = rss_kib(args.pid)
    gate = asyncio.Semaphore(args.parallel)
    started = time.monotonic()
    results = await asyncio.gather(
        *(open_one(args.host, args.port, gate, args.timeout) for _ in range(conns)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    opened_in = time.monotonic() - started

    # Let the proxy finish whatever it does after a response (timers, buffer release) before reading.
    await asyncio.sleep(args.settle)
    after = rss_kib(args.pid)

    # Count only connections the proxy still holds open: one it closed has seen EOF by now.
    still_open = sum(1 for r, w in held if not r.at_eof() and not w.transport.is_closing())
    for _, w in held:
        w.close()

    print(
        f"conns={still_open} failed={conns - still_open} rss_before_kib={before} rss_after_kib={after} "
        f"kib_per_conn={(after - before) / max(still_open, 1):.2f} open_seconds={opened_in:.1f}"
    )
    if errors:
        kinds = sorted({type(e).__name__ + (f": {e}" if str(e) else "") for e in errors})[:3]
        print(f"idle_conns: {len(errors)} connections failed, e.g. {kinds}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
