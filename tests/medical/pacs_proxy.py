"""Loopback helpers for PACS tests: a TCP proxy that cuts connections at chosen byte counts, and
an HTTP server that answers every request with something that is not DICOM."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CuttingProxy:
    """Forwards 127.0.0.1:port to ``upstream``; counts the bytes sent back to clients and, each time
    that count reaches the next of ``cuts``, drops the connection that carried it (both ways)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.cuts: list[int] = []
        self.sent = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self, cuts: list[int] = ()) -> None:
        with self._lock:
            self.cuts, self.sent, self.dropped = sorted(cuts), 0, 0

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                if to_client:
                    with self._lock:
                        if self.cuts and self.sent + len(data) >= self.cuts[0]:
                            data = data[: max(0, self.cuts.pop(0) - self.sent)]
                            cut = True
                            self.dropped += 1
                        self.sent += len(data)
                dst.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class NotDicomServer:
    """Answers QIDO instance lists with one made-up instance and everything else with an HTML page."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                if self.path.split("?")[0].endswith("/instances"):
                    body, kind = json.dumps([{"00080018": {"vr": "UI", "Value": ["1.2.3.4.5"]}}]).encode(), "application/dicom+json"
                else:
                    body, kind = b"<html><body>Please log in</body></html>", "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/dicom-web"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
