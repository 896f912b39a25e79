"""A large result moved peer to peer: worker A computes it, a task on worker B reads it.

Two real worker processes of a ``LocalCluster`` (mutual TLS, as users get it). Worker A keeps a
result of ``--mb`` megabytes (a ``bytes`` value, which travels unpickled; other values are
pickled once on A and unpickled once on B); a task on worker B takes it as an argument (a
reference the worker resolves by fetching from A) and returns its length, ``--runs`` times (the
first includes the connection between the two workers). Prints the median fetch's time and
rate, next to a plain loopback copy of the same bytes through a socket pair for scale.
Run: python bench/transfer.py [--mb 200] [--plain] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from typing import Any

from bndl.local import LocalCluster
from bndl.wire import RemoteRef
from bndl.wire.tls import BENCH_INSECURE_ENV


def make(mb: int) -> bytes:
    return b"x" * (mb * 1_000_000)


def length(value: bytes) -> int:
    return len(value)


def loopback_copy(size: int) -> float:
    """Seconds to push ``size`` bytes through a loopback TCP connection (the floor)."""
    server = socket.create_server(("127.0.0.1", 0))
    data = b"x" * size

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(data)

    sender = threading.Thread(target=send)
    sender.start()
    start = time.perf_counter()
    with socket.create_connection(server.getsockname()) as client:
        received = 0
        while received < size:
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    seconds = time.perf_counter() - start
    sender.join()
    server.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="megabytes of the result")
    parser.add_argument(
        "--plain", action="store_true", help="encryption off (the benchmark-only switch)"
    )
    parser.add_argument("--runs", type=int, default=3, help="transfers of the same result")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    plain: dict[str, Any] = (
        {"insecure_benchmark_only": True, "env": {BENCH_INSECURE_ENV: "1"}} if args.plain else {}
    )
    cluster = LocalCluster(workers=2, **plain)
    with cluster:
        a, b = (p.worker for p in cluster.processes)
        a.run("transfer/big.1", make, (args.mb,), {}, True, reply=False).result(120)
        ref = RemoteRef("transfer/big.1", "big", a.name, a.url)
        times = []
        for n in range(args.runs):
            start = time.perf_counter()
            assert b.run(f"transfer/len.{n}", length, (ref,), {}, False).result(300) == size
            times.append(time.perf_counter() - start)
    floor = loopback_copy(size)
    how = "plain HTTP (encryption off)" if args.plain else "mutual TLS"
    seconds = sorted(times)[len(times) // 2]
    print(
        f"{args.mb} MB result, worker to worker over {how}: {seconds:.2f} s, "
        f"{args.mb / seconds:,.0f} MB/s (median of {args.runs}; "
        f"each: {', '.join(f'{t:.2f}' for t in times)} s)"
    )
    print(
        f"the same bytes through a plain loopback socket: {floor:.2f} s, "
        f"{args.mb / floor:,.0f} MB/s ({floor / seconds:.0%} of it)"
    )


if __name__ == "__main__":
    main()
