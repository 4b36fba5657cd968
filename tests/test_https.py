"""HTTPS receivers with certificates from a test CA (trusted through billhook.tls_ca_file), what a
bad certificate or a silent TLS server costs, basic auth from the URL and a webhook's own headers."""

import base64
import json
import socket
import threading

import psycopg
import pytest

from cluster import free_port
from helpers import create_webhook, delivery_rows, wait_until
from receiver import Receiver
from tls import TestCA


def invoice_events(conn, admin, count):
    with conn.transaction():
        customer = conn.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                                " VALUES (%s, 'TLS B.V.') RETURNING id", (admin,)).fetchone()[0]
        for _ in range(count - 1):
            conn.execute("UPDATE billhook.customers SET company_name = company_name || '.' WHERE id = %s",
                         (customer,))
    return customer


def settled(conn, webhook_id, count):
    """The webhook's deliveries once `count` of them have had an attempt."""
    return wait_until(lambda: (rows := delivery_rows(conn, webhook_id)) and len(rows) == count
                      and all(r[2] > 0 for r in rows) and rows)


def test_https_delivery_and_registration_check_with_the_test_ca(worker_db, worker_admin, https_receiver):
    # verify => true: the registration check goes over TLS from the calling session.
    hook, _, _ = create_webhook(worker_db, worker_admin, https_receiver.url("/tls"), ("customer",), verify=True)
    [check] = https_receiver.received("/tls")
    assert json.loads(check.body)["action"] == "webhook.verification"
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'A')",
                      (worker_admin,))
    [push] = https_receiver.wait_for("/tls", 2)[1:]
    assert json.loads(push.body)["action"] == "customer.created"
    assert wait_until(lambda: delivery_rows(worker_db, hook)[0][1] == "succeeded")


def test_keep_alive_connections_are_reused_over_tls(worker_db, worker_admin, https_receiver):
    hook, _, _ = create_webhook(worker_db, worker_admin, https_receiver.url("/reuse"), ("customer",))
    for _ in range(60):
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'A')",
                          (worker_admin,))
    pushes = https_receiver.wait_for("/reuse", 60, timeout=20)
    assert len(pushes) == 60
    connections = {p.peer for p in pushes}
    # At most max_in_flight_per_webhook (8) connections at once; a handshake per push would be 60.
    assert len(connections) <= 16, f"{len(connections)} TLS connections for 60 pushes"


class SilentServer:
    """Accepts TCP connections and never says a word: a TLS handshake that never ends."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.held = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self):
        self.socket.close()
        for s in self.held:
            s.close()


def test_bad_certificates_and_a_silent_tls_server_are_failed_attempts(cluster, worker_db, worker_admin, test_ca):
    other_ca = TestCA("not trusted")
    receivers = {
        "untrusted": Receiver(tls=other_ca.server_context()),
        "expired": Receiver(tls=test_ca.server_context(expired=True)),
        "wrong name": Receiver(tls=test_ca.server_context(names=("other.example",))),
    }
    silent = SilentServer()
    cluster.configure(request_timeout="1s", retry_schedule="1h")
    try:
        hooks = {name: create_webhook(worker_db, worker_admin, r.url("/bad"), ("customer",))[0]
                 for name, r in receivers.items()}
        hooks["handshake timeout"] = create_webhook(worker_db, worker_admin,
                                                    f"https://127.0.0.1:{silent.port}/", ("customer",))[0]
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'A')",
                          (worker_admin,))
        expected = {
            "untrusted": "invalid peer certificate: UnknownIssuer",
            "expired": "invalid peer certificate: certificate expired",
            "wrong name": "invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
            "handshake timeout": "timed out",
        }
        for name, hook in hooks.items():
            [(_, status, attempts, _, http_status, error)] = settled(worker_db, hook, 1)
            assert (status, attempts, http_status) == ("pending", 1, None), name
            assert expected[name] in error, f"{name}: {error}"
        for r in receivers.values():
            assert r.received("/bad") == [], "no request went over a connection billhook does not trust"
        # The worker is still there and delivers.
        healthy = Receiver()
        try:
            hook, _, _ = create_webhook(worker_db, worker_admin, healthy.url("/after"), ("customer",))
            worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'B')",
                              (worker_admin,))
            assert len(healthy.wait_for("/after", 1)) == 1
        finally:
            healthy.close()
    finally:
        cluster.configure(request_timeout=None, retry_schedule=None)
        silent.close()
        for r in receivers.values():
            r.close()


def test_a_missing_ca_file_is_a_clear_error(cluster, worker_db, worker_admin, https_receiver, test_ca):
    cluster.configure(tls_ca_file="/nonexistent/ca.pem", retry_schedule="1h")
    try:
        hook, _, _ = create_webhook(worker_db, worker_admin, https_receiver.url("/noca"), ("customer",))
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'A')",
                          (worker_admin,))
        [(_, status, attempts, _, _, error)] = settled(worker_db, hook, 1)
        assert (status, attempts) == ("pending", 1)
        assert 'billhook.tls_ca_file "/nonexistent/ca.pem" cannot be read' in error, error
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="tls_ca_file"):
            create_webhook(worker_db, worker_admin, https_receiver.url("/noca-check"), verify=True)
    finally:
        cluster.configure(tls_ca_file=test_ca.pem_path, retry_schedule=None)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(cluster, worker_db, worker_admin,
                                                                       https_receiver):
    url = https_receiver.url("/auth", userinfo="shop:pa%40ss-w0rd")
    hook, _, _ = create_webhook(worker_db, worker_admin, url, ("customer",), verify=True)
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'A')",
                      (worker_admin,))
    check, push = https_receiver.wait_for("/auth", 2)
    for request in (check, push):
        assert request.headers["authorization"] == "Basic " + base64.b64encode(b"shop:pa@ss-w0rd").decode()
    # A failing URL with credentials: the error text, the views and the log show none of them.
    dead = f"https://shop:pa%40ss-w0rd@127.0.0.1:{free_port()}/x"
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        create_webhook(worker_db, worker_admin, dead, verify=True)
    shown = [str(refused.value), refused.value.diag.message_hint or ""]
    shown += [str(v) for row in worker_db.execute("SELECT * FROM billhook.webhook_overview WHERE id = %s",
                                                  (hook,)).fetchall() for v in row]
    shown.append(cluster.server_log())
    assert "shop:***@127.0.0.1" in shown[0]
    for text in shown:
        assert "pa%40ss-w0rd" not in text and "pa@ss-w0rd" not in text


def test_a_webhooks_own_headers_go_with_every_push(worker_db, worker_admin, receiver):
    headers = {"Authorization": "Bearer t0ken", "X-Shop": "7"}
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer}', %s, verify => false,"
                             " headers => %s)", (receiver.url("/headers"), worker_admin,
                                                 json.dumps(headers))).fetchone()[0]
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'A')",
                      (worker_admin,))
    [push] = receiver.wait_for("/headers", 1)
    assert (push.headers["authorization"], push.headers["x-shop"]) == ("Bearer t0ken", "7")
    overview = worker_db.execute("SELECT * FROM billhook.webhook_overview WHERE id = %s", (hook,)).fetchone()
    assert ["Authorization", "X-Shop"] in overview and "Bearer t0ken" not in str(overview)
    worker_db.execute("SELECT billhook.update_webhook(%s, headers => '{\"X-Shop\": \"8\"}')", (hook,))
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'B')",
                      (worker_admin,))
    [_, second] = receiver.wait_for("/headers", 2)
    assert second.headers["x-shop"] == "8" and "authorization" not in second.headers


@pytest.mark.parametrize("headers, name", [
    ({"X-A": "a\r\nX-Injected: 1"}, "X-A"),
    ({"Content-Type": "text/plain"}, "Content-Type"),
    ({"webhook-signature": "v1,forged"}, "webhook-signature"),
    ({"Idempotency-Key": "k"}, "Idempotency-Key"),
    ({"Host": "internal"}, "Host"),
    ({"Bad Name": "x"}, "Bad Name"),
    ({"X-N": 1}, "X-N"),
    (["X-A"], "headers"),
])
def test_bad_headers_are_22023_naming_the_header_and_nothing_is_written(db, admin, headers, name):
    before = db.execute("SELECT count(*) FROM billhook.webhooks").fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        db.execute("SELECT billhook.create_webhook('https://receiver.example/h', NULL, %s, verify => false,"
                   " headers => %s)", (admin, json.dumps(headers)))
    assert f'invalid webhook header "{name}"' in str(refused.value)
    assert "webhook-*" in refused.value.diag.message_hint
    assert db.execute("SELECT count(*) FROM billhook.webhooks").fetchone()[0] == before


def test_authorization_header_and_url_credentials_conflict(db, admin):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='"Authorization"'):
        db.execute("SELECT billhook.create_webhook('https://u:p@receiver.example/h', NULL, %s, verify => false,"
                   " headers => '{\"Authorization\": \"Bearer x\"}')", (admin,))
    hook = db.execute("SELECT id FROM billhook.create_webhook('https://receiver.example/h', NULL, %s,"
                      " verify => false, headers => '{\"Authorization\": \"Bearer x\"}')", (admin,)).fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='"Authorization"'):
        db.execute("SELECT billhook.update_webhook(%s, url => 'https://u:p@receiver.example/h')", (hook,))
