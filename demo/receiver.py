"""The demo's webhook receiver: prints every push and checks its Standard Webhooks signature with
the secret (v1, HMAC) or public key (v1a, ed25519) stored for that webhook. /flaky answers 500 to its
first two pushes. /load (the load phase) answers quietly, 500 to the first attempt of one push in 100."""

import base64
import http.server
import json
import sys
import threading

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT, DSN = int(sys.argv[1]), sys.argv[2]
failures_left = {"/flaky": 2}
refused_once = set()
lock = threading.Lock()


def secrets(webhook_id):
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute("SELECT signing_secret, previous_signing_secret FROM billhook.webhooks WHERE id = %s",
                           (webhook_id,)).fetchone()
    return [s for s in row or () if s]


def public_key(webhook_id):
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute("SELECT public_key FROM billhook.webhooks WHERE id = %s AND signature <> 'hmac'",
                           (webhook_id,)).fetchone()
    return row[0] if row else None


def ed25519_verdict(body, headers, key):
    """A v1a signature: ed25519 over "webhook-id.webhook-timestamp.body", checked with the public key."""
    verifier = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.removeprefix("whpk_")))
    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    for part in headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        if version == "v1a":
            try:
                verifier.verify(base64.b64decode(signature), message)
                return "ed25519 signature valid"
            except InvalidSignature:
                continue
    return "ed25519 signature NOT valid"


def verdict(body, headers, webhook_id):
    key = public_key(webhook_id)
    if key:
        return ed25519_verdict(body, headers, key)
    for secret in secrets(webhook_id):
        try:
            Webhook(secret).verify(body, headers)
            return "signature valid"
        except WebhookVerificationError:
            continue
    return "signature NOT valid" if secrets(webhook_id) else "webhook not committed yet (registration check)"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, Nagle's algorithm holds the body until
    # the client's delayed ACK, 40 ms per push.
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/load":
            return self.answer_load()
        push = json.loads(body)
        with lock:
            fail = failures_left.get(self.path, 0) > 0
            if fail:
                failures_left[self.path] -= 1
        status = 500 if fail else 200
        line = (f"receiver {self.path:10} {status}  {push['action']:36} {push['entity_type']:12}"
                f" id={push['entity_id']:3} state={str(push['state']):9} key={self.headers['Idempotency-Key'][:8]}…"
                f"  {verdict(body, {k.lower(): v for k, v in self.headers.items()}, push['webhook_id'])}")
        with lock:  # one whole line at a time: pushes arrive on several threads
            print(line, flush=True)
        self.reply(status, b"try again" if fail else b"ok")

    def answer_load(self):
        key = self.headers["Idempotency-Key"]
        with lock:
            refuse = int(key.replace("-", ""), 16) % 100 == 0 and key not in refused_once
            refused_once.add(key)
        self.reply(500 if refuse else 200, b"busy" if refuse else b"ok")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
