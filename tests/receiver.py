"""A real HTTP receiver for the end-to-end tests: records every request and answers each path
with a programmed sequence of responses (then 200)."""

import http.server
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    at: float
    # The client's address and port: pushes from one port came over one kept-alive connection.
    peer: tuple
    # When the request had been read, before the programmed delay; `at` is after it.
    started: float


@dataclass
class Response:
    status: int = 200
    body: bytes = b"ok"
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


class Server(http.server.ThreadingHTTPServer):
    # Python's default backlog of 5 overflows when several workers open their connections at once:
    # the kernel then drops the handshake and the client sees a reset a second later.
    request_queue_size = 128


class Receiver:
    def __init__(self, tls=None):
        """tls: an ssl.SSLContext for the server side (see tls.py), to answer HTTPS."""
        self.requests: list[Received] = []
        self.plans: dict[str, list[Response]] = {}
        # Per path: (a byte string of the body, the responses for the requests whose body has it).
        self.body_plans: dict[str, list[tuple[bytes, list[Response]]]] = {}
        self.lock = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: without this, Nagle's algorithm holds the body until
            # the client's delayed ACK, 40 ms per push.
            disable_nagle_algorithm = True

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (a test killed it): no request arrived.
                    self.close_connection = True
                    return
                started = time.time()
                path = self.path.split("?")[0]
                with receiver.lock:
                    plan = next((responses for marker, responses in receiver.body_plans.get(path, [])
                                 if marker in body and responses), None) or receiver.plans.get(path)
                    response = plan.pop(0) if plan else Response()
                if response.delay:
                    time.sleep(response.delay)
                with receiver.lock:
                    receiver.requests.append(Received(path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.time(), self.client_address, started))
                    receiver.lock.notify_all()
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A client that rejects the certificate or hangs up is the test's business, not stderr's.
        self.server.handle_error = lambda request, client_address: None
        self.port = self.server.server_address[1]
        self.scheme = "http"
        if tls is not None:
            # The handshake happens on the first read, in the request's thread: a client that
            # rejects the certificate never holds up the accepting thread.
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"{self.scheme}://{at}{host}:{self.port}{path}"

    def plan(self, path: str, *responses: Response) -> None:
        with self.lock:
            self.plans[path] = list(responses)

    def plan_for_body(self, path: str, marker: bytes, *responses: Response) -> None:
        """Responses for the requests to path whose body contains marker, before the path's plan."""
        with self.lock:
            self.body_plans.setdefault(path, []).append((marker, list(responses)))

    def received(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.time() + timeout
        with self.lock:
            while True:
                got = [r for r in self.requests if r.path == path]
                if len(got) >= count or time.time() >= deadline:
                    return got
                self.lock.wait(timeout=max(0.0, deadline - time.time()))

    def most_at_once(self, path: str) -> int:
        """The most requests to path that were being answered at the same time."""
        edges = sorted(edge for r in self.received(path) for edge in ((r.started, 1), (r.at, -1)))
        at_once = most = 0
        for _, change in edges:
            at_once += change
            most = max(most, at_once)
        return most

    def close(self):
        self.server.shutdown()
        self.server.server_close()
