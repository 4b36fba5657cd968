"""The demo's webhook receiver: prints every push and checks its Standard Webhooks signature with
the secret stored for that webhook. /flaky answers 500 to its first two pushes."""

import http.server
import json
import sys
import threading

import psycopg
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT, DSN = int(sys.argv[1]), sys.argv[2]
failures_left = {"/flaky": 2}
lock = threading.Lock()


def secrets(webhook_id):
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute("SELECT signing_secret, previous_signing_secret FROM billhook.webhooks WHERE id = %s",
                           (webhook_id,)).fetchone()
    return [s for s in row or () if s]


def verdict(body, headers, webhook_id):
    for secret in secrets(webhook_id):
        try:
            Webhook(secret).verify(body, headers)
            return "signature valid"
        except WebhookVerificationError:
            continue
    return "signature NOT valid" if secrets(webhook_id) else "webhook not committed yet (registration check)"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        push = json.loads(body)
        with lock:
            fail = failures_left.get(self.path, 0) > 0
            if fail:
                failures_left[self.path] -= 1
        status = 500 if fail else 200
        print(f"receiver {self.path:7} {status}  {push['action']:22} {push['entity_type']:9} id={push['entity_id']:3}"
              f" state={str(push['state']):9} key={self.headers['Idempotency-Key'][:8]}…"
              f"  {verdict(body, dict(self.headers), push['webhook_id'])}", flush=True)
        reply = b"try again" if fail else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
