"""The sandbox's "server outside the cluster": tells each client its source address.

HTTP on :8080 answers `Remote IP: <source>` (the walkthrough's nettools server); TCP :8081 and
UDP :8082 echo back `<source>\n` followed by what they got; UDP :53 answers every DNS query with
NXDOMAIN (busybox `nslookup NAME SERVER` is the UDP sender a busybox pod has). Every connection,
datagram and query is appended to a JSON-lines record file with a tag (HTTP path, datagram text,
query name), so tests can assert that no packet ever left with a wrong source.
Run inside the external netns: `python -m devtools.sandbox.extserver --record FILE`.
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import socketserver
import threading
import time
from pathlib import Path

from devtools.sandbox.plan import DNS_PORT, HTTP_PORT, TCP_ECHO_PORT, UDP_ECHO_PORT


class Recorder:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def note(self, proto: str, source: str, tag: str = "") -> None:
        """tag: the HTTP path or the first bytes of a datagram, so tests can pick out their own traffic."""
        line = json.dumps({"t": time.time(), "proto": proto, "src": source, "tag": tag}) + "\n"
        with self._lock, self._path.open("a") as handle:
            handle.write(line)


def unmapped(address: str) -> str:
    return address.removeprefix("::ffff:")


def dns_question(packet: bytes) -> tuple[str, int]:
    """(query name, offset just past the question) of a DNS query; ("", 0) when it is not one."""
    labels, offset = [], 12
    try:
        while (length := packet[offset]) != 0:
            labels.append(packet[offset + 1:offset + 1 + length].decode(errors="replace"))
            offset += 1 + length
    except IndexError:
        return "", 0
    end = offset + 5  # the zero byte, QTYPE, QCLASS
    return ".".join(labels), end if end <= len(packet) else 0


def serve(recorder: Recorder) -> list[socketserver.BaseServer]:
    class Http(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            source = unmapped(self.client_address[0])
            recorder.note("http", source, self.path[:128])
            body = f"Remote IP: {source}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

    class TcpEcho(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            source = unmapped(self.client_address[0])
            recorder.note("tcp", source)
            self.wfile.write(f"{source}\n".encode())
            self.wfile.write(self.rfile.readline(4096))

    class UdpEcho(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            source = unmapped(self.client_address[0])
            recorder.note("udp", source, data[:64].decode(errors="replace").strip())
            sock.sendto(f"{source}\n".encode() + data, self.client_address)

    class Dns(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            source = unmapped(self.client_address[0])
            name, end = dns_question(data)
            recorder.note("dns", source, name)
            if end:  # NXDOMAIN: same id, QR=1, RD/RA, rcode 3, the question echoed, no answers
                sock.sendto(data[:2] + b"\x81\x83" + data[4:6] + b"\x00\x00" * 3 + data[12:end], self.client_address)

    class DualStack:
        address_family: int = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # type: ignore[attr-defined]
            super().server_bind()  # type: ignore[misc]

    class HttpServer(DualStack, http.server.ThreadingHTTPServer):
        pass

    class TcpServer(DualStack, socketserver.ThreadingTCPServer):
        pass

    class UdpServer(DualStack, socketserver.ThreadingUDPServer):
        pass

    servers: list[socketserver.BaseServer] = [
        HttpServer(("::", HTTP_PORT), Http), TcpServer(("::", TCP_ECHO_PORT), TcpEcho),
        UdpServer(("::", UDP_ECHO_PORT), UdpEcho), UdpServer(("::", DNS_PORT), Dns),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", type=Path, required=True, help="JSON-lines file of every client source")
    args = parser.parse_args()
    serve(Recorder(args.record))
    print(f"extserver: http :{HTTP_PORT}, tcp echo :{TCP_ECHO_PORT}, udp echo :{UDP_ECHO_PORT}, dns :{DNS_PORT}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
