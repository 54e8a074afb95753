"""A monitoring endpoint on loopback, in the test process, that records the
pings it gets, or hangs, or is a closed port that refuses them."""
import http.server
import socket
import threading
import time

import pytest


class PingServer:
    """Healthchecks on loopback: records (monotonic time, method, path, body,
    headers) of each request; with hang, reads it and never answers."""

    def __init__(self, hang=False):
        self.hang = hang
        self.pings = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length).decode('utf-8')
                server.pings.append(dict(at=time.monotonic(), method='POST',
                                         path=self.path, body=body,
                                         headers=dict(self.headers)))
                if server.hang:
                    server.release.wait(60)
                    return
                self.send_response(200)
                self.send_header('Content-Length', '2')
                self.end_headers()
                self.wfile.write(b'OK')

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)

    @property
    def url(self):
        return 'http://127.0.0.1:%d/0b4b-secret-uuid' % self.httpd.server_port

    def paths(self):
        return [ping['path'] for ping in self.pings]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url():
    """Return a loopback URL on a port nobody listens on: it refuses."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    return 'http://127.0.0.1:%d/0b4b-secret-uuid' % port


@pytest.fixture
def ping_server():
    with PingServer() as server:
        yield server


@pytest.fixture
def hanging_ping_server():
    with PingServer(hang=True) as server:
        yield server
