"""Echo the client's source IP over TCP and UDP (run inside the external server's netns).

    python echo.py PORT      # serves [::]:PORT dual-stack until killed
    python echo.py probe IP PORT tcp|udp [TIMEOUT] [SRC]   # prints the source IP the server saw
    python echo.py stream IP PORT SECONDS    # one long-lived TCP flow; prints "answer=count ..."
    python echo.py ustream IP PORT SECONDS   # the same over one UDP socket (one conntrack entry); lost = "-"
    python echo.py until IP PORT EXPECT DEADLINE  # UDP probes every 50 ms; prints the epoch time of the first EXPECT reply
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any


def _plain(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") else ip


def serve(port: int) -> None:
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("::", port))
    tcp.listen(64)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))

    def answer(conn: socket.socket, addr: tuple[str, ...]) -> None:
        """The source IP at once, and again for every line the client sends (long-lived flows)."""
        with conn:
            reply = _plain(addr[0]).encode() + b"\n"
            try:
                conn.sendall(reply)
                while conn.recv(256):
                    conn.sendall(reply)
            except OSError:
                pass

    def tcp_loop() -> None:
        while True:
            conn, addr = tcp.accept()
            threading.Thread(target=answer, args=(conn, addr), daemon=True).start()

    threading.Thread(target=tcp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        _, addr = udp.recvfrom(2048)
        udp.sendto(_plain(addr[0]).encode() + b"\n", addr)


def probe(ip: str, port: int, proto: str, timeout: float = 3.0) -> str:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        if proto == "tcp":
            s.connect((ip, port))
            return s.recv(256).decode().strip()
        s.sendto(b"hi", (ip, port))
        return s.recv(256).decode().strip()


def stream(ip: str, port: int, seconds: float) -> None:
    """One TCP connection, a line every 50 ms for `seconds`; prints each distinct answer and a count."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    answers: dict[str, int] = {}
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect((ip, port))
        f = s.makefile("r")
        f.readline()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.sendall(b"x\n")
            line = f.readline().strip()
            answers[line] = answers.get(line, 0) + 1
            time.sleep(0.05)
    print(" ".join(f"{k}={v}" for k, v in sorted(answers.items())), flush=True)


def ustream(ip: str, port: int, seconds: float) -> None:
    """One UDP socket, a datagram every 50 ms for `seconds`; prints the answers in order, run-length
    encoded ("answer=count ...")."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    runs: list[list[Any]] = []
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.sendto(b"x", (ip, port))
            try:
                line = s.recv(256).decode().strip()
            except OSError:
                line = "-"
            if runs and runs[-1][0] == line:
                runs[-1][1] += 1
            else:
                runs.append([line, 1])
            time.sleep(0.05)
    print(" ".join(f"{k}={v}" for k, v in runs), flush=True)


def until(ip: str, port: int, expect: str, deadline: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            if probe(ip, port, "udp", 0.05) == expect:
                print(f"{time.time():.6f}", flush=True)
                return
        except OSError:
            time.sleep(0.02)
    print("timeout", flush=True)
    sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        try:
            print(probe(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]) if len(sys.argv) > 5 else 3.0))
        except OSError as exc:
            print(f"error: {exc}")
            sys.exit(1)
    elif sys.argv[1] == "stream":
        try:
            stream(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        except OSError as exc:
            print(f"error: {exc}")
            sys.exit(1)
    elif sys.argv[1] == "ustream":
        ustream(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif sys.argv[1] == "until":
        until(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    else:
        serve(int(sys.argv[1]))
