"""A TCP forwarder between two network namespaces (a stand-alone script, standard library only).

The harness creates a listening socket on 127.0.0.1 in the *host* namespace and passes its file
descriptor to this script, which runs inside the cluster's namespace (nsenter --net=...). Sockets
keep the namespace they were created in, so connections accepted here come from the host side and
the upstream connections made here reach the apiserver inside the cluster's namespace. This lets
the test process, kubectl and helm talk to the cluster without leaving the host namespace.

    python3 _forward.py --listen-fd FD --target HOST:PORT
"""

import argparse
import contextlib
import signal
import socket
import sys
import threading


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def serve(conn: socket.socket, target: tuple[str, int]) -> None:
    try:
        up = socket.create_connection(target, timeout=10)
    except OSError:
        conn.close()
        return
    up.settimeout(None)
    t = threading.Thread(target=pump, args=(up, conn), daemon=True)
    t.start()
    pump(conn, up)
    t.join()
    conn.close()
    up.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(fileno=args.listen_fd)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, target), daemon=True).start()


if __name__ == "__main__":
    main()
