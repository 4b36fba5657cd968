"""The hostile and the unlucky: forged events, purges racing the fan-out and replays, crashes in the
middle of a drain, receivers that lie, trickle, flood, redirect or ask for a pause, endpoints that
hang, locks left open, proxies in the environment. Every case asserts what actually happened: rows,
requests received, keys."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import psycopg
import pytest

from cluster import CLUSTER_SCRIPT
from helpers import customer, fan_out, wait_until, webhook
from receiver import Receiver, Response

TRIGGER_FUNCTIONS = ["record_change", "capture_deleted_entity", "note_webhooks_changed", "mark_event_restored",
                     "touch_updated_at", "record_tracked_change", "capture_deleted_tracked_row"]


@pytest.fixture
def nobody(cluster, db):
    """A login role with USAGE on schema billhook and nothing else, as docs/operations.md tells DBAs to grant."""
    db.execute("DROP ROLE IF EXISTS billhook_nobody")
    db.execute("CREATE ROLE billhook_nobody LOGIN")
    db.execute("GRANT USAGE ON SCHEMA billhook TO billhook_nobody")
    with cluster.connect(user="billhook_nobody") as conn:
        yield conn
    db.execute("DROP OWNED BY billhook_nobody")
    db.execute("DROP ROLE billhook_nobody")


def test_a_role_with_usage_only_cannot_attach_any_billhook_trigger_function(db, nobody):
    before = db.execute("SELECT count(*) FROM billhook.events").fetchone()[0]
    nobody.execute("CREATE TEMP TABLE t (id bigint, administration_id bigint DEFAULT 1, state text,"
                   " sent_at timestamptz, customer_id bigint, updated_at timestamptz)")
    for function in TRIGGER_FUNCTIONS:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute(f"CREATE TRIGGER f AFTER INSERT OR UPDATE ON t FOR EACH ROW"
                           f" EXECUTE FUNCTION billhook.{function}('Invoice')")
    nobody.execute("INSERT INTO t (id, state) VALUES (1, 'open')")
    nobody.execute("UPDATE t SET state = 'paid'")
    assert db.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == before


SHAPED_LIKE_INVOICES = "(id bigint, administration_id bigint DEFAULT 1, state text, sent_at timestamptz, customer_id bigint)"


@pytest.mark.parametrize("table, create, insert", [
    ("pg_temp.t", f"CREATE TEMP TABLE t {SHAPED_LIKE_INVOICES}", "INSERT INTO pg_temp.t (id, state) VALUES (1, 'paid')"),
    ("public.invoices", f"CREATE TABLE public.invoices {SHAPED_LIKE_INVOICES}",
     "INSERT INTO public.invoices (id, state) VALUES (1, 'paid')"),
    ("billhook.expenses", None, "INSERT INTO billhook.expenses (supplier_name, amount) VALUES ('x', 1)"),
])
def test_record_change_refuses_every_table_but_its_own_even_for_a_superuser(cluster, table, create, insert):
    with cluster.connect() as conn:
        before = conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0]
        if create:
            conn.execute(create)
        for function, timing in [("record_change", "AFTER"), ("capture_deleted_entity", "BEFORE")]:
            conn.execute(f"CREATE TRIGGER forged_{function} {timing} INSERT OR UPDATE OR DELETE ON {table}"
                         f" FOR EACH ROW EXECUTE FUNCTION billhook.{function}('Invoice')")
        try:
            with pytest.raises(psycopg.errors.TriggeredActionException, match="does not hold Invoice changes"):
                conn.execute(insert)
        finally:
            for function in ["record_change", "capture_deleted_entity"]:
                conn.execute(f"DROP TRIGGER forged_{function} ON {table}")
            if table == "public.invoices":
                conn.execute("DROP TABLE public.invoices")
        assert conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == before


def test_the_tracked_table_triggers_refuse_an_untracked_table_even_for_a_superuser(cluster):
    """Only billhook.track_table decides which application tables emit: its trigger functions,
    attached by hand (here by a superuser) to a table it does not track, emit nothing."""
    with cluster.connect() as conn:
        before = conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0]
        conn.execute("CREATE TABLE public.forged_orders (id bigint PRIMARY KEY, status text)")
        try:
            for function, timing in [("record_tracked_change", "AFTER"), ("capture_deleted_tracked_row", "BEFORE")]:
                conn.execute(f"CREATE TRIGGER forged_{function} {timing} INSERT OR UPDATE OR DELETE ON public.forged_orders"
                             f" FOR EACH ROW EXECUTE FUNCTION billhook.{function}()")
            with pytest.raises(psycopg.errors.TriggeredActionException, match="does not track"):
                conn.execute("INSERT INTO public.forged_orders VALUES (1, 'new')")
        finally:
            conn.execute("DROP TABLE public.forged_orders")
        assert conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == before


def test_the_registration_check_and_the_queue_functions_are_not_for_public(db, nobody):
    for call in ["billhook.verify_endpoint(1, 1, 'http://127.0.0.1:9/', 't', 's', '{}', '{}', 'now')",
                 "billhook.fan_out()", "billhook.purge('1 day')", "billhook.run_schedules()",
                 "billhook.emit_event('Invoice', 1, 'invoice.paid', '{}')",
                 "billhook.track_table('billhook.customers', 'X', 'x')", "billhook.untrack_table('billhook.customers')"]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute(f"SELECT * FROM {call}")
    # What stays public is harmless: pure checks and the worker's status.
    assert nobody.execute("SELECT billhook.check_webhook_url('https://example.com/')").fetchone()[0] is True
    assert nobody.execute("SELECT billhook.check_webhook_headers('{}', 'https://example.com/')").fetchone()[0] is True
    assert nobody.execute("SELECT preloaded FROM billhook.worker_status()").fetchone()[0] is True


def age_events(db, admin, days):
    db.execute("UPDATE billhook.events SET occurred_at = now() - make_interval(days => %s)"
               " WHERE administration_id = %s", (days, admin))


def test_events_older_than_retention_that_were_never_fanned_out_are_kept(db, admin):
    """Reproduces the review's finding: a worker that comes back after a week must deliver every
    event, not purge those its fan-out has not reached yet."""
    hook = webhook(db, admin, ["customer"])
    db.execute("UPDATE billhook.webhooks SET created_at = now() - interval '30 days' WHERE id = %s", (hook,))
    for n in range(30):
        customer(db, admin, company_name=f"c{n}")
    age_events(db, admin, 10)
    assert db.execute("SELECT events FROM billhook.purge('7 days')").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s", (admin,)).fetchone()[0] == 30
    fan_out(db)
    assert db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()[0] == 30
    assert db.execute("SELECT * FROM billhook.purge('7 days')").fetchone() == (0, 0), "pending deliveries stay"
    db.execute("UPDATE billhook.deliveries SET status = 'succeeded', delivered_at = now() - interval '8 days'"
               " WHERE webhook_id = %s", (hook,))
    purged = (0, 0)
    while True:
        step = db.execute("SELECT * FROM billhook.purge('7 days')").fetchone()
        if step == (0, 0):
            break
        purged = (purged[0] + step[0], purged[1] + step[1])
    assert purged[0] == 30
    assert db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s", (admin,)).fetchone()[0] == 0


def test_purge_never_deletes_a_delivery_requeued_while_it_ran(cluster, db, admin):
    hook = webhook(db, admin, ["customer"])
    customer(db, admin)
    fan_out(db)
    db.execute("UPDATE billhook.deliveries SET status = 'succeeded', delivered_at = now() - interval '8 days'"
               " WHERE webhook_id = %s", (hook,))
    [delivery] = db.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()
    with cluster.connect() as app:
        app.execute("BEGIN")
        app.execute("SELECT billhook.redeliver(%s)", (delivery,))
        db.execute("SET statement_timeout = '5s'")
        started = time.time()
        db.execute("SELECT * FROM billhook.purge('7 days')")
        assert time.time() - started < 2, "the purge does not wait for the row"
        app.execute("COMMIT")
    db.execute("SELECT * FROM billhook.purge('7 days')")
    assert db.execute("SELECT status FROM billhook.deliveries WHERE id = %s", (delivery,)).fetchone() == ("pending",)
    # The same for a failed delivery replayed while the purge of failed ones ran.
    db.execute("UPDATE billhook.deliveries SET status = 'failed', last_attempt_at = now() - interval '40 days'"
               " WHERE id = %s", (delivery,))
    with cluster.connect() as app:
        app.execute("BEGIN")
        app.execute("SELECT billhook.redeliver(%s)", (delivery,))
        started = time.time()
        assert db.execute("SELECT * FROM billhook.purge('7 days', 10, '30 days')").fetchone() == (0, 0)
        assert time.time() - started < 2, "the purge does not wait for the row"
        app.execute("COMMIT")
    assert db.execute("SELECT * FROM billhook.purge('7 days', 10, '30 days')").fetchone() == (0, 0)
    assert db.execute("SELECT status FROM billhook.deliveries WHERE id = %s", (delivery,)).fetchone() == ("pending",)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT * FROM billhook.purge('-1 day')")


def test_purge_deletes_failed_deliveries_by_their_own_age_and_never_a_younger_or_pending_one(db, admin):
    hook = webhook(db, admin, ["customer"])
    for n in range(5):
        customer(db, admin, company_name=f"f{n}")
    fan_out(db)
    ids = [r[0] for r in db.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s ORDER BY id",
                                    (hook,)).fetchall()]
    # Failed 40 days ago, failed 40 days ago but never attempted (created then), failed an hour ago,
    # failed never attempted and created now, still pending.
    db.execute("UPDATE billhook.deliveries SET status = 'failed', last_attempt_at = now() - interval '40 days'"
               " WHERE id = %s", (ids[0],))
    db.execute("UPDATE billhook.deliveries SET status = 'failed', created_at = now() - interval '40 days'"
               " WHERE id = %s", (ids[1],))
    db.execute("UPDATE billhook.deliveries SET status = 'failed', last_attempt_at = now() - interval '1 hour',"
               " created_at = now() - interval '40 days' WHERE id = %s", (ids[2],))
    db.execute("UPDATE billhook.deliveries SET status = 'failed' WHERE id = %s", (ids[3],))
    db.execute("UPDATE billhook.deliveries SET last_attempt_at = now() - interval '40 days' WHERE id = %s", (ids[4],))
    age_events(db, admin, 40)
    db.execute("INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at,"
               " duration_ms, succeeded) SELECT id, event_id, webhook_id, 1, now() - interval '40 days', 5, false"
               " FROM billhook.deliveries WHERE id = %s", (ids[0],))

    def remaining():
        return [r[0] for r in db.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s ORDER BY id",
                                         (hook,)).fetchall()]

    assert db.execute("SELECT * FROM billhook.purge('7 days')").fetchone() == (0, 0), "failed stay without an age"
    assert db.execute("SELECT * FROM billhook.purge('7 days', 1, '30 days')").fetchone() == (1, 1)
    assert db.execute("SELECT * FROM billhook.purge('7 days', 1000, '30 days')").fetchone() == (1, 1)
    assert remaining() == ids[2:]
    assert db.execute("SELECT count(*) FROM billhook.delivery_attempts WHERE delivery_id = %s",
                      (ids[0],)).fetchone()[0] == 0, "its attempts went with it"
    assert db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s",
                      (admin,)).fetchone()[0] == 3, "the events of the deliveries left stay"
    for call in ("billhook.purge('7 days', 10, '-1 second')", "billhook.purge(NULL, 10, '1 day')"):
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            db.execute(f"SELECT * FROM {call}")
        assert "failed_older_than" in refused.value.diag.message_hint


def test_idempotency_keys_are_derived_from_event_webhook_and_install(db, admin):
    hook = webhook(db, admin, ["customer"])
    customer(db, admin)
    fan_out(db)
    event, key = db.execute("SELECT event_id, idempotency_key FROM billhook.deliveries WHERE webhook_id = %s",
                            (hook,)).fetchone()
    assert db.execute("SELECT billhook.delivery_key(key_namespace, %s, %s) FROM billhook.fan_out_state",
                      (event, hook)).fetchone()[0] == key
    assert key.version == 8


def test_a_fan_out_lost_in_a_crash_is_made_again_with_the_same_keys(db, admin):
    """The worker's fan-out commits asynchronously and its pushes leave at once; a crash before the
    WAL reaches disk (power loss, failover) loses the deliveries and the fan-out's progress together,
    and the next fan-out makes them again. kill -9 cannot make that happen on demand (WAL the
    kernel already has survives it), so this restores the state such a crash leaves."""
    hook = webhook(db, admin, ["customer"])
    fan_out(db)
    saved = db.execute("SELECT done::text, pass::text, after_transaction_id::text, after_event_id"
                       " FROM billhook.fan_out_state").fetchone()
    for n in range(5):
        customer(db, admin, company_name=f"k{n}")
    fan_out(db)
    keys_query = "SELECT event_id, idempotency_key FROM billhook.deliveries WHERE webhook_id = %s ORDER BY event_id"
    keys = db.execute(keys_query, (hook,)).fetchall()
    assert len(keys) == 5
    db.execute("DELETE FROM billhook.deliveries WHERE webhook_id = %s", (hook,))
    db.execute("UPDATE billhook.fan_out_state SET done = %s::pg_snapshot, pass = %s::pg_snapshot,"
               " after_transaction_id = %s::xid8, after_event_id = %s", saved)
    fan_out(db)
    assert db.execute(keys_query, (hook,)).fetchall() == keys, "the receiver sees each push under its first key"


def test_credentials_in_urls_are_never_shown(cluster, db, admin, receiver):
    secret_url = receiver.url("/secret").replace("http://", "http://alice:s3cret-pw@")
    hook = webhook(db, admin, ["customer"], url=secret_url)
    customer(db, admin)
    fan_out(db)
    assert db.execute("SELECT url FROM billhook.webhook_overview WHERE id = %s", (hook,)).fetchone()[0] == \
        receiver.url("/***").replace("http://", "http://***@")
    assert "s3cret-pw" not in str(db.execute("SELECT url FROM billhook.delivery_status WHERE webhook_id = %s",
                                             (hook,)).fetchall())
    with pytest.raises(psycopg.errors.InvalidParameterValue) as bad:
        db.execute("SELECT billhook.check_webhook_url(%s)", ("ftp://alice:s3cret-pw@example.com/",))
    assert "s3cret-pw" not in str(bad.value) and "alice:***@" in str(bad.value)
    receiver.plan("/secret", Response(404))
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        db.execute("SELECT billhook.create_webhook(%s, '{customer}', %s)", (secret_url, admin))
    assert "answered HTTP 404" in str(refused.value) and "s3cret-pw" not in str(refused.value)
    assert "s3cret-pw" not in cluster.server_log()


def test_a_reader_sees_no_part_of_a_url_that_may_be_its_secret(cluster, db, admin, receiver):
    """A URL's path or query is often its secret (Slack's /services/T/B/<secret>, ?token=...):
    billhook_reader, which may not read webhooks.url, sees only the scheme, host and port of it in
    the views and in the operational events."""
    db.execute("SELECT billhook.create_roles()")
    secret_url = receiver.url("/services/T0/B0/s3cret-path?token=s3cret-query").replace(
        "http://", "http://alice:s3cret-pw@")
    origin = receiver.url("/").removesuffix("/")
    hook = webhook(db, admin, ["customer"], url=secret_url)
    customer(db, admin)
    fan_out(db)
    db.execute("SELECT billhook.emit_operations(ARRAY[%s]::bigint[], ARRAY[%s]::bigint[], '{}')", (hook, hook))
    db.execute("SET ROLE billhook_reader")
    try:
        shown = {
            view: db.execute(f"SELECT v::text FROM billhook.{view} AS v WHERE {column} = %s", (hook,)).fetchall()
            for view, column in (("webhook_overview", "id"), ("webhook_health", "id"),
                                 ("delivery_status", "webhook_id"))
        }
        shown["operational events"] = db.execute(
            "SELECT entity::text FROM billhook.events WHERE entity_type = 'Webhook' AND entity_id = %s",
            (hook,)).fetchall()
        url_shown = db.execute("SELECT url FROM billhook.webhook_overview WHERE id = %s", (hook,)).fetchone()[0]
    finally:
        db.execute("RESET ROLE")
    assert all(shown.values()), f"every view and the operational events show the webhook: {shown}"
    for where, rows in shown.items():
        assert "s3cret" not in str(rows), f"{where} shows a secret of the URL: {rows}"
    assert url_shown == origin.replace("http://", "http://***@") + "/***"


def test_retry_schedules_that_overflow_are_refused(db):
    try:
        for bad in ["400d", "99999999999999999999999s", ",".join(["1s"] * 101)]:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                db.execute(f"ALTER SYSTEM SET billhook.retry_schedule = '{bad}'")
        db.execute("ALTER SYSTEM SET billhook.retry_schedule = '30d'")
    finally:
        db.execute("ALTER SYSTEM RESET billhook.retry_schedule")


def test_run_schedules_changes_at_most_max_changes_and_skips_locked_rows(cluster, db, admin):
    c = customer(db, admin)
    # Due long ago, so that no other test's invoice is overdue as of then.
    invoices = [db.execute("INSERT INTO billhook.invoices (administration_id, customer_id, state, invoice_date, due_date)"
                           " VALUES (%s, %s, 'open', '2000-01-01', '2000-01-15') RETURNING id", (admin, c)).fetchone()[0]
                for _ in range(5)]
    with cluster.connect() as app:
        app.execute("BEGIN")
        app.execute("SELECT 1 FROM billhook.invoices WHERE id = %s FOR UPDATE", (invoices[0],))
        db.execute("SET statement_timeout = '5s'")
        first = db.execute("SELECT entity_id FROM billhook.run_schedules('2000-02-01', 0, 2)"
                           " WHERE action = 'overdue' AND entity_id = ANY(%s)", (invoices,)).fetchall()
        rest = db.execute("SELECT entity_id FROM billhook.run_schedules('2000-02-01', 0, 1000)"
                          " WHERE action = 'overdue' AND entity_id = ANY(%s)", (invoices,)).fetchall()
        app.execute("COMMIT")
    assert len(first) == 2 and invoices[0] not in [r[0] for r in first + rest]
    assert sorted(r[0] for r in first + rest) == invoices[1:]
    late = db.execute("SELECT id FROM billhook.invoices WHERE id = ANY(%s) AND state = 'late' ORDER BY id",
                      (invoices,)).fetchall()
    assert [r[0] for r in late] == invoices[1:]


# --- the worker against hostile receivers ---------------------------------------------------------

class RawReceiver:
    """A TCP server that answers every connection with `respond(socket)`: for receivers no HTTP
    library would write (floods, trickles, garbage)."""

    def __init__(self, respond):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.respond = respond
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            conn.recv(65536)
            self.respond(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.listener.close()


def flood(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(1600):
        conn.sendall(chunk)


def trickle(conn):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        conn.sendall(bytes([byte]))
        time.sleep(1)


def garbage(conn):
    conn.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")


def worker_memory_kib(cluster, field):
    """A line of the worker's /proc status in KiB: VmRSS now, VmHWM at its peak."""
    for line in open(f"/proc/{cluster.worker_pid()}/status"):
        if line.startswith(f"{field}:"):
            return int(line.split()[1])


def delivery_of(conn, hook):
    """The webhook's one delivery (Nones until the fan-out has made it)."""
    row = conn.execute("SELECT status, attempts, last_http_status, length(last_http_body), last_error"
                       " FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()
    return row or (None,) * 5


def test_floods_trickles_and_garbage_are_failed_or_bounded_attempts(cluster, worker_db, worker_admin):
    cluster.configure(request_timeout="2s", retry_schedule="")
    receivers = {name: RawReceiver(respond) for name, respond in [("flood", flood), ("trickle", trickle),
                                                                   ("garbage", garbage)]}
    try:
        pid = cluster.worker_pid()
        hooks = {name: webhook(worker_db, worker_admin, ["customer.created"], url=r.url(f"/{name}"))
                 for name, r in receivers.items()}
        customer(worker_db, worker_admin)
        assert wait_until(lambda: all(delivery_of(worker_db, h)[0] not in (None, "pending") for h in hooks.values()), 30)
        flooded = delivery_of(worker_db, hooks["flood"])
        # 100 MB announced: billhook reads its 16 kB and drops the connection.
        assert flooded[2] == 200 and flooded[3] == 16 * 1024
        assert delivery_of(worker_db, hooks["trickle"])[:2] == ("failed", 1)
        assert "timed out" in delivery_of(worker_db, hooks["trickle"])[4]
        garbled = delivery_of(worker_db, hooks["garbage"])
        assert garbled[:3] == ("failed", 1, None) and garbled[4]
        assert cluster.worker_pid() == pid, "the worker kept running"
        assert worker_memory_kib(cluster, "VmRSS") < 200 * 1024
    finally:
        for r in receivers.values():
            r.close()
        cluster.configure(request_timeout=None, retry_schedule=None)


def test_a_redirect_is_not_followed(cluster, worker_db, worker_admin, receiver):
    cluster.configure(retry_schedule="")
    try:
        receiver.plan("/redirecting", Response(302, headers={"Location": receiver.url("/redirect-target")}))
        hook = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/redirecting"))
        customer(worker_db, worker_admin)
        assert wait_until(lambda: delivery_of(worker_db, hook)[0] == "failed")
        assert delivery_of(worker_db, hook)[2] == 302
        time.sleep(0.3)
        assert receiver.received("/redirect-target") == []
    finally:
        cluster.configure(retry_schedule=None)


@pytest.mark.parametrize("status", [429, 502, 504])
def test_an_overloaded_endpoint_with_retry_after_pauses_the_whole_endpoint(cluster, worker_db, worker_admin, receiver,
                                                                          status):
    cluster.configure(max_in_flight_per_webhook=1, retry_schedule="100ms,100ms")
    path = f"/slow-down-{status}"
    try:
        receiver.plan(path, Response(status, b"slow down", headers={"Retry-After": "3"}))
        hook = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url(path))
        with worker_db.transaction():
            for n in range(10):
                customer(worker_db, worker_admin, company_name=f"p{n}")
        pushes = receiver.wait_for(path, 11, timeout=20)
        assert len(pushes) == 11, "ten pushes, one of them twice"
        gap = pushes[1].at - pushes[0].at
        assert 2.8 <= gap < 6, f"the endpoint rested {gap:.2f}s after asking for 3"
        assert wait_until(lambda: worker_db.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded') FROM billhook.deliveries WHERE webhook_id = %s",
            (hook,)).fetchone()[0] == 10)
        assert worker_db.execute("SELECT count(*) FROM billhook.delivery_attempts WHERE webhook_id = %s"
                                 " AND http_status = %s", (hook, status)).fetchone()[0] == 1
    finally:
        cluster.configure(max_in_flight_per_webhook=None, retry_schedule=None)


def test_410_gone_disables_the_webhook_at_once_and_keeps_its_deliveries(cluster, worker_db, worker_admin, receiver):
    """Automatic disabling is off (disable_after = 0): a 410 disables anyway, after one attempt, while
    a webhook beside it whose endpoint answers 500 stays enabled."""
    cluster.configure(max_in_flight_per_webhook=1, retry_schedule="100ms", disable_after="0")
    try:
        receiver.plan("/gone", Response(410, b"no such hook"))
        receiver.plan("/broken", *[Response(500)] * 20)
        gone = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/gone"))
        broken = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/broken"))
        with worker_db.transaction():
            for n in range(5):
                customer(worker_db, worker_admin, company_name=f"g{n}")
        assert wait_until(lambda: not worker_db.execute(
            "SELECT enabled FROM billhook.webhooks WHERE id = %s", (gone,)).fetchone()[0])
        assert len(receiver.wait_for("/broken", 10)) >= 10, "each push to /broken tried twice"
        time.sleep(0.5)
        assert len(receiver.received("/gone")) == 1, "nothing more after the 410"
        reason, disabled_at, health = worker_db.execute(
            "SELECT w.disabled_reason, w.disabled_at, h.health FROM billhook.webhooks AS w"
            " JOIN billhook.webhook_health AS h ON h.id = w.id WHERE w.id = %s", (gone,)).fetchone()
        assert reason.startswith("the endpoint answered 410 Gone at "), reason
        assert disabled_at is not None and health == "auto_disabled"
        assert worker_db.execute("SELECT change FROM billhook.webhook_health_log WHERE webhook_id = %s",
                                 (gone,)).fetchall() == [("disabled",)]
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s AND status = 'pending'",
                                 (gone,)).fetchone()[0] == 5, "every delivery kept, held"
        assert worker_db.execute("SELECT enabled, disabled_at FROM billhook.webhooks WHERE id = %s",
                                 (broken,)).fetchone() == (True, None), "500 disables nothing with disable_after = 0"
        # The receiver is back: enabling sends the held pushes, with the key the first one had.
        first_key = receiver.received("/gone")[0].headers["idempotency-key"]
        receiver.plan("/gone")
        worker_db.execute("SELECT billhook.enable_webhook(%s)", (gone,))
        pushes = receiver.wait_for("/gone", 6)
        assert len(pushes) == 6
        assert len({p.headers["idempotency-key"] for p in pushes}) == 5
        assert [p.headers["idempotency-key"] for p in pushes].count(first_key) == 2
    finally:
        cluster.configure(max_in_flight_per_webhook=None, retry_schedule=None, disable_after=None)


def drain_rate(conn, admin, receiver, path, count):
    """Pushes per second for `count` customer.created events to the webhook at `path`."""
    before = len(receiver.received(path))
    started = time.time()
    conn.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                 " SELECT %s, 'r' || n FROM generate_series(1, %s) AS n", (admin, count))
    got = receiver.wait_for(path, before + count, timeout=60)
    assert len(got) >= before + count
    return count / (got[before + count - 1].at - started)


def test_four_hanging_endpoints_leave_a_healthy_one_at_least_half_its_rate(cluster, worker_db, worker_admin):
    hanging = Receiver()
    healthy = Receiver()
    cluster.configure(request_timeout="5s", retry_schedule="")
    try:
        solo_admin = worker_admin
        webhook(worker_db, solo_admin, ["customer.created"], url=healthy.url("/healthy"))
        # Drains of a thousand pushes, a second or more each: shorter ones measured the start-up as much.
        solo = drain_rate(worker_db, solo_admin, healthy, "/healthy", 1000)
        for n in range(4):
            hanging.plan(f"/hang{n}", *[Response(200, delay=30)] * 1000)
            webhook(worker_db, solo_admin, ["customer.created"], url=hanging.url(f"/hang{n}"))
        # A backlog at every hanging endpoint, and their pushes hanging at the receiver (the healthy
        # webhook gets these events too).
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                          " SELECT %s, 'h' || n FROM generate_series(1, 200) AS n", (solo_admin,))
        assert len(healthy.wait_for("/healthy", 1200, timeout=30)) == 1200
        time.sleep(0.5)
        beside = drain_rate(worker_db, solo_admin, healthy, "/healthy", 1000)
        assert beside >= 0.5 * solo, f"{beside:.0f}/s beside four hanging endpoints, {solo:.0f}/s alone"
    finally:
        worker_db.execute("UPDATE billhook.webhooks SET enabled = false WHERE administration_id = %s", (worker_admin,))
        cluster.configure(request_timeout=None, retry_schedule=None)
        hanging.close()
        healthy.close()


# --- crashes, locks and the environment, on clusters of their own ---------------------------------

def test_a_crash_in_the_middle_of_a_drain_loses_nothing_and_keeps_every_key(own_cluster):
    """kill -9 of the worker, then of a backend: the postmaster restarts the cluster, outcomes not
    yet committed are lost and those pushes go out again."""
    receiver = Receiver()
    try:
        receiver.plan("/crash", *[Response(200, delay=0.01)] * 100000)
        cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                              "billhook.retry_schedule = '200ms,500ms,1s,2s'")
        with cluster.connect("postgres") as conn:
            conn.execute("CREATE EXTENSION billhook")
            hook = conn.execute("SELECT id FROM billhook.create_webhook(%s, '{customer.created}', verify => false)",
                                (receiver.url("/crash"),)).fetchone()[0]
        for victim in ("worker", "backend"):
            with cluster.connect("postgres") as conn:
                conn.execute("INSERT INTO billhook.customers (company_name) SELECT 'c' || n"
                             " FROM generate_series(1, 400) AS n")
            wait_until(lambda: len(receiver.received("/crash")) > 20 + (400 if victim == "backend" else 0), 30)
            if victim == "worker":
                os.kill(cluster.worker_pid(), signal.SIGKILL)
            else:
                # Any backend killed hard makes the postmaster restart the whole cluster.
                with cluster.connect("postgres") as conn:
                    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                    os.kill(pid, signal.SIGKILL)

            def all_delivered():
                try:
                    with cluster.connect("postgres") as conn:
                        return conn.execute("SELECT count(*) FILTER (WHERE status = 'succeeded') = count(*)"
                                            " AND count(*) = (SELECT count(*) FROM billhook.events)"
                                            " FROM billhook.deliveries").fetchone()[0]
                except psycopg.OperationalError:
                    return False
            assert wait_until(all_delivered, 60), f"every delivery succeeded after the {victim} was killed"

        with cluster.connect("postgres") as conn:
            keys = dict(conn.execute("SELECT event_id::text, idempotency_key::text FROM billhook.deliveries"
                                     " WHERE webhook_id = %s", (hook,)).fetchall())
        received = {}
        for push in receiver.received("/crash"):
            received.setdefault(json.loads(push.body)["event_id"], set()).add(push.headers["idempotency-key"])
        assert set(received) == set(keys) and len(keys) == 800, "every event reached the receiver"
        assert all(received[event] == {keys[event]} for event in keys), "one key per push, crash or not"
    finally:
        receiver.close()


def test_open_locks_hold_up_nothing_and_stop_stays_prompt(own_cluster, receiver):
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "default_transaction_isolation = 'serializable'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook")
        locked, free = [conn.execute("SELECT id FROM billhook.create_webhook(%s, '{customer.created}', verify => false)",
                                     (receiver.url(path),)).fetchone()[0] for path in ("/locked", "/free")]
    idle, prepared = cluster.connect("postgres"), cluster.connect("postgres")
    try:
        idle.execute("BEGIN")
        idle.execute("SELECT billhook.update_webhook(%s, enabled => true)", (locked,))
        prepared.execute("BEGIN")
        prepared.execute("SELECT billhook.update_webhook(%s, enabled => true)", (free,))
        prepared.execute("PREPARE TRANSACTION 'left_open'")
        with cluster.connect("postgres") as app:
            app.execute("INSERT INTO billhook.customers (company_name) SELECT 'l' || n FROM generate_series(1, 20) n")
        assert len(receiver.wait_for("/free", 20)) == 20, "a webhook row held by a prepared transaction"
        assert len(receiver.wait_for("/locked", 20)) == 20, "a webhook row held by an idle transaction"
        with cluster.connect("postgres") as conn:
            assert wait_until(lambda: conn.execute("SELECT count(*) FROM billhook.deliveries"
                                                   " WHERE status = 'succeeded'").fetchone()[0] == 40)
            # A prepared transaction that locks the whole outbox survives the stop: the worker,
            # waiting for it, must still stop at once.
            conn.execute("BEGIN")
            conn.execute("LOCK TABLE billhook.deliveries IN ACCESS EXCLUSIVE MODE")
            conn.execute("PREPARE TRANSACTION 'outbox_locked'")
            conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('waits')")
        time.sleep(1.5)
        started = time.time()
        subprocess.run([str(CLUSTER_SCRIPT), "stop", cluster.directory], check=True, timeout=30)
        assert time.time() - started < 10, "pg_ctl stop -m fast returns while locks are held"
    finally:
        for conn in (idle, prepared):
            try:
                conn.close()
            except psycopg.Error:
                pass
    assert "trying again" in cluster.server_log(), "the worker logged the rounds it could not finish"


def test_proxy_variables_in_the_server_environment_are_ignored(own_cluster):
    proxy = Receiver()
    try:
        proxy_url = proxy.url("/")
        cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                              "billhook.retry_schedule = ''",
                              env={name: proxy_url for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY",
                                                                 "https_proxy", "ALL_PROXY", "all_proxy")})
        with cluster.connect("postgres") as conn:
            conn.execute("CREATE EXTENSION billhook")
            hook = conn.execute("SELECT id FROM billhook.create_webhook('http://billhook-proxy-test.invalid/hook',"
                                " '{customer.created}', verify => false)").fetchone()[0]
            conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('proxied?')")
            assert wait_until(lambda: conn.execute("SELECT status FROM billhook.deliveries WHERE webhook_id = %s",
                                                   (hook,)).fetchone() == ("failed",))
            error = conn.execute("SELECT last_error FROM billhook.deliveries WHERE webhook_id = %s",
                                 (hook,)).fetchone()[0]
        assert any(cause in error for cause in ("host not found", "lookup address", "timed out")), error
        assert proxy.requests == [], "nothing went through the proxy"
    finally:
        proxy.close()


@pytest.mark.parametrize("notes", [
    # Hex of random digests: hardly compressible, so the stored size is close to the JSON's.
    "(SELECT string_agg(md5(random()::text || n || m), '') FROM generate_series(1, 32000) AS m)",
    # One digest repeated: stored in a few kB, 3 MB once read. The budget counts what is read.
    "repeat(md5(n::text), 96000)",
], ids=["incompressible", "compressible"])
def test_huge_entities_are_claimed_within_a_memory_budget(own_cluster, notes):
    """A hundred events of 1 MB each (an invoice of many lines edited often): the worker claims them
    a few at a time instead of holding them all in one round, however well they compress."""
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on")
        with cluster.connect("postgres") as conn:
            conn.execute("CREATE EXTENSION billhook")
            # As many in flight as a webhook may have: the claim's budget is what bounds it.
            conn.execute("SELECT billhook.create_webhook(%s, '{customer.updated}', verify => false,"
                         " max_in_flight => 512)", (receiver.url("/huge"),))
            assert wait_until(lambda: cluster.worker_pid() is not None)
            before = worker_memory_kib(cluster, "VmHWM")
            conn.execute(f"""
                INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, entity)
                SELECT 1, 'customer.updated', 'Customer', n, jsonb_build_object('id', n::text, 'notes', {notes})
                FROM generate_series(1, 100) AS n""")
            conn.execute("SELECT billhook.wake_worker_at_commit()")
            assert len(receiver.wait_for("/huge", 100, timeout=120)) == 100
            grown = worker_memory_kib(cluster, "VmHWM") - before
        assert all(len(push.body) > 1_000_000 for push in receiver.received("/huge"))
        assert grown < 200 * 1024, f"the worker's peak memory grew by {grown // 1024} MiB for 100 pushes of 1 to 3 MB"
    finally:
        receiver.close()


def test_a_generation_that_waits_too_long_for_a_lock_is_deferred_not_failed(cluster, db, admin):
    """Contention (here a lock timeout; deadlocks and serialization failures alike) is no fault of
    the schedule: it is tried again next sweep, uncounted, with no recurring_invoice.failed."""
    c = customer(db, admin)
    with db.transaction():
        schedule = db.execute("INSERT INTO billhook.recurring_invoices (administration_id, customer_id, frequency,"
                              " start_date) VALUES (%s, %s, 'monthly', '2000-01-01') RETURNING id", (admin, c)).fetchone()[0]
        db.execute("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description,"
                   " price) VALUES (%s, %s, 'Hosting', 10)", (admin, schedule))
    events_before = db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s", (admin,)).fetchone()[0]
    with cluster.connect() as app:
        app.execute("BEGIN")
        # The new invoice's foreign key check needs a share lock on its customer.
        app.execute("SELECT 1 FROM billhook.customers WHERE id = %s FOR UPDATE", (c,))
        db.execute("SET lock_timeout = '200ms'")
        actions = db.execute("SELECT action, entity_id, detail FROM billhook.run_schedules('2000-01-15', 10)"
                             " WHERE entity_type = 'RecurringInvoice' AND entity_id = %s", (schedule,)).fetchall()
        db.execute("RESET lock_timeout")
        app.execute("ROLLBACK")
    assert [(a, e) for a, e, _ in actions] == [("deferred", schedule)]
    assert "lock timeout" in actions[0][2]
    assert db.execute("SELECT failed_attempts, occurrences, active FROM billhook.recurring_invoices WHERE id = %s",
                      (schedule,)).fetchone() == (0, 0, True)
    assert db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s",
                      (admin,)).fetchone()[0] == events_before, "no recurring_invoice.failed"
    generated = db.execute("SELECT action FROM billhook.run_schedules('2000-01-15', 10)"
                           " WHERE entity_type = 'RecurringInvoice' AND entity_id = %s", (schedule,)).fetchall()
    assert generated == [("generated",)], "the next sweep generates it"
    db.execute("UPDATE billhook.recurring_invoices SET active = false WHERE id = %s", (schedule,))


def test_sender_threads_block_the_signals_the_main_thread_handles(cluster, worker_db):
    pid = cluster.worker_pid()

    def blocked_signals(task):
        for line in open(f"/proc/{pid}/task/{task}/status"):
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)

    tasks = os.listdir(f"/proc/{pid}/task")
    senders = [t for t in tasks if open(f"/proc/{pid}/task/{t}/comm").read().startswith("billhook-sender")]
    assert senders, "the worker runs sender threads"
    for signal_number in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGINT):
        bit = 1 << (signal_number - 1)
        assert all(blocked_signals(t) & bit for t in senders), f"{signal_number!r} blocked in every sender"
        assert not blocked_signals(str(pid)) & bit, f"{signal_number!r} reaches the main thread"


def test_eight_backlogged_dead_endpoints_leave_claims_for_a_healthy_one(cluster, worker_db, worker_admin):
    """With a small batch, eight dead endpoints' backlogs once took every claim the worker would
    hold (half a batch each, four batches in all): the healthy endpoint waited for their timeouts."""
    hanging = Receiver()
    healthy = Receiver()
    cluster.configure(batch_size=100, request_timeout="10s", retry_schedule="")
    try:
        for n in range(8):
            hanging.plan(f"/dead{n}", *[Response(200, delay=30)] * 1000)
            webhook(worker_db, worker_admin, ["customer.created"], url=hanging.url(f"/dead{n}"))
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                          " SELECT %s, 'd' || n FROM generate_series(1, 300) AS n", (worker_admin,))
        time.sleep(1)
        webhook(worker_db, worker_admin, ["customer.created"], url=healthy.url("/alive"))
        started = time.time()
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                          " SELECT %s, 'a' || n FROM generate_series(1, 50) AS n", (worker_admin,))
        assert len(healthy.wait_for("/alive", 50, timeout=8)) == 50, "served before any dead push timed out"
        assert time.time() - started < 8
    finally:
        worker_db.execute("UPDATE billhook.webhooks SET enabled = false WHERE administration_id = %s", (worker_admin,))
        cluster.configure(batch_size=None, request_timeout=None, retry_schedule=None)
        hanging.close()
        healthy.close()


def test_a_delivery_whose_lease_ran_out_while_held_is_not_pushed_twice(cluster, worker_db, worker_admin, receiver):
    """Pushes queued behind a webhook's in-flight cap can outlive their leases; the next claim then
    finds those rows due again. The worker must not queue a second push of what it still holds."""
    cluster.configure(max_in_flight_per_webhook=1, retry_schedule="")
    try:
        receiver.plan("/held", *[Response(200, delay=0.1)] * 100)
        hook = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/held"))
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                          " SELECT %s, 'held' || n FROM generate_series(1, 20) AS n", (worker_admin,))
        receiver.wait_for("/held", 3)
        # The leases run out while the worker still holds the pushes.
        expired = worker_db.execute("UPDATE billhook.deliveries SET locked_until = now() - interval '1 second'"
                                    " WHERE webhook_id = %s AND status = 'pending' AND locked_by IS NOT NULL",
                                    (hook,)).rowcount
        assert expired >= 2
        receiver.wait_for("/held", 20, timeout=30)
        time.sleep(1)
        keys = [push.headers["idempotency-key"] for push in receiver.received("/held")]
        assert len(keys) == 20 and len(set(keys)) == 20, f"{len(keys)} pushes of {len(set(keys))} deliveries"
    finally:
        cluster.configure(max_in_flight_per_webhook=None, retry_schedule=None)


def test_an_outcome_kept_from_its_row_by_a_lock_is_written_soon_after_the_lock_goes(cluster, worker_db, worker_admin,
                                                                                    receiver):
    """The worker skips deliveries another session holds locked (an open redeliver, say) and writes
    their outcomes in a later round. With nothing else in flight, that round must not wait for the
    poll (60 s in these tests) or for the next commit."""
    receiver.plan("/row-locked", Response(200, delay=1.0))
    hook = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/row-locked"))
    customer(worker_db, worker_admin, company_name="Locked Row B.V.")
    delivery = wait_until(lambda: worker_db.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s"
                                                    " AND locked_by IS NOT NULL", (hook,)).fetchone())
    assert delivery, "the push was claimed"
    with cluster.connect("billhook_worker") as other:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM billhook.deliveries WHERE id = %s FOR UPDATE", delivery)
        assert len(receiver.wait_for("/row-locked", 1)) == 1
        time.sleep(0.5)  # the outcome's round finds the row locked
        status = lambda: worker_db.execute("SELECT status, attempts FROM billhook.deliveries WHERE id = %s",
                                           delivery).fetchone()
        assert status() == ("pending", 0), "written through another session's lock"
        other.execute("COMMIT")
    assert wait_until(lambda: status() == ("succeeded", 1), timeout=5), status()


def test_deleting_a_webhook_while_the_worker_writes_its_outcomes_is_no_deadlock(cluster, worker_db, worker_admin,
                                                                               receiver):
    """A DELETE of a webhook locks it, then its deliveries (the cascade); the worker writing their
    outcomes locks deliveries, then the webhook (delivery_counters' foreign key). A slow cascade (a
    DBA's trigger) keeps the two overlapping: the DELETE must succeed and the log show no deadlock."""
    hook = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/deleted-while-pushed"))
    worker_db.execute("CREATE FUNCTION public.slow_delivery_delete() RETURNS trigger LANGUAGE plpgsql AS"
                      " $$ BEGIN PERFORM pg_sleep(0.01); RETURN OLD; END $$")
    worker_db.execute("CREATE TRIGGER slow_delete BEFORE DELETE ON billhook.deliveries FOR EACH ROW"
                      " EXECUTE FUNCTION public.slow_delivery_delete()")
    try:
        log_before = len(cluster.server_log())
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                          " SELECT %s, 'Busy ' || n FROM generate_series(1, 400) AS n", (worker_admin,))
        receiver.wait_for("/deleted-while-pushed", 20)
        worker_db.execute("DELETE FROM billhook.webhooks WHERE id = %s", (hook,))
        received = len(receiver.received("/deleted-while-pushed"))
        assert 20 <= received < 400, "the DELETE overlapped the pushes"
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s",
                                 (hook,)).fetchone()[0] == 0
        time.sleep(0.5)
        assert "deadlock detected" not in cluster.server_log()[log_before:]
    finally:
        worker_db.execute("DROP TRIGGER slow_delete ON billhook.deliveries")
        worker_db.execute("DROP FUNCTION public.slow_delivery_delete()")


def test_the_outcomes_of_pushes_whose_webhook_was_deleted_in_flight_are_dropped_and_the_rest_go_on(
        cluster, worker_db, worker_admin, receiver):
    """A webhook deleted while its pushes are on the wire takes its deliveries along. Outcomes that
    came back while the DELETE held the rows wait for a later round, which finds the rows gone and
    the webhook gone: they must be let go of, not counted against the missing webhook (which failed
    every write of them) and tried again for ever while other webhooks' outcomes queue behind."""
    receiver.plan("/deleted-in-flight", *[Response(200, delay=1.0)] * 5)
    doomed = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/deleted-in-flight"))
    log_before = len(cluster.server_log())
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                      " SELECT %s, 'Doomed ' || n FROM generate_series(1, 5) AS n", (worker_admin,))
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                                " AND locked_by IS NOT NULL", (doomed,)).fetchone() == (5,))
    with cluster.connect("billhook_worker") as deleting:
        deleting.execute("BEGIN")
        deleting.execute("DELETE FROM billhook.webhooks WHERE id = %s", (doomed,))
        assert len(receiver.wait_for("/deleted-in-flight", 5)) == 5
        time.sleep(0.5)  # the answers come back to rows this transaction holds
        deleting.execute("COMMIT")
    survivor = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/survivor"))
    customer(worker_db, worker_admin, company_name="Survivor B.V.")
    assert len(receiver.wait_for("/survivor", 1, timeout=5)) == 1
    assert wait_until(lambda: worker_db.execute("SELECT status FROM billhook.deliveries WHERE webhook_id = %s",
                                                (survivor,)).fetchone() == ("succeeded",), timeout=5)
    time.sleep(0.5)
    log = cluster.server_log()[log_before:]
    assert "could not record" not in log, log


def test_outcomes_that_fail_for_no_row_of_theirs_are_set_aside_while_other_events_go_out(
        cluster, worker_db, worker_admin, receiver):
    """When every outcome of a batch fails alone (a DBA's trigger on the attempt log that rejects
    every row, slowly), no row is to blame: they are held and tried again after a pause. Meanwhile
    the rounds must not spend their budget failing on them again and again, which left new events
    unfanned and the log flooded: another webhook's event goes out at once, and once the fault is
    gone the held outcomes are written at once (more of them than one probe takes), not pushed again."""
    receiver.plan("/held-outcomes", *[Response(200, delay=1.0)] * 15)
    held = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/held-outcomes"))
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                      " SELECT %s, 'Held ' || n FROM generate_series(1, 15) AS n", (worker_admin,))
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                                " AND locked_by IS NOT NULL", (held,)).fetchone() == (15,))
    worker_db.execute("UPDATE billhook.webhooks SET enabled_events = '{customer.updated}' WHERE id = %s", (held,))
    worker_db.execute("CREATE FUNCTION public.reject_attempt() RETURNS trigger LANGUAGE plpgsql AS $$"
                      " BEGIN PERFORM pg_sleep(0.02); RAISE EXCEPTION 'the attempt log is closed'; END $$")
    log_before = len(cluster.server_log())
    try:
        # The outcomes come back while this session holds their rows: the worker keeps them
        # and tries them again together once the lock goes, into the closed attempt log.
        with cluster.connect("billhook_worker") as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT 1 FROM billhook.deliveries WHERE webhook_id = %s FOR UPDATE", (held,))
            worker_db.execute("CREATE TRIGGER reject_attempt BEFORE INSERT ON billhook.delivery_attempts"
                              " FOR EACH ROW EXECUTE FUNCTION public.reject_attempt()")
            assert len(receiver.wait_for("/held-outcomes", 15, timeout=20)) == 15
            time.sleep(1.0)
            holder.execute("COMMIT")
        stalls = lambda: cluster.server_log()[log_before:].count("could not record any of")
        assert wait_until(lambda: stalls() >= 2, timeout=5), "tried again after a pause"
        other = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/other-webhook"))
        customer(worker_db, worker_admin, company_name="Other B.V.")
        assert len(receiver.wait_for("/other-webhook", 1, timeout=5)) == 1, "the new event went out"
        counted = stalls()
        time.sleep(2)
        assert stalls() - counted <= 4, f"{stalls() - counted} warnings in 2 s: tried again in every round"
        assert "the attempt log is closed" in cluster.server_log()[log_before:], "the warning names the fault"
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                 " AND status = 'pending' AND attempts = 0", (held,)).fetchone() == (15,)
    finally:
        worker_db.execute("DROP TRIGGER IF EXISTS reject_attempt ON billhook.delivery_attempts")
        worker_db.execute("DROP FUNCTION public.reject_attempt()")
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                                " AND status = 'succeeded'", (held,)).fetchone() == (15,), timeout=5)
    assert len(receiver.received("/held-outcomes")) == 15, "written, not pushed again"
    # The other push's outcome failed alone (its delivery failed, saying why) or with a probe.
    other_status = lambda: worker_db.execute("SELECT status, coalesce(last_error, '') FROM billhook.deliveries"
                                             " WHERE webhook_id = %s", (other,)).fetchone()
    assert wait_until(lambda: other_status()[0] != "pending", timeout=5), other_status()
    assert other_status()[0] == "succeeded" or "the attempt log is closed" in other_status()[1], other_status()


def test_a_claim_that_fails_for_every_webhook_waits_a_pause_instead_of_spinning(cluster, worker_db, worker_admin,
                                                                                  receiver):
    """A DBA's trigger that rejects every lease the claim takes fails the claim for each webhook
    alone: no webhook is to blame (none is disabled), not even while a third webhook's delivery is
    held locked by another session, so that its claim goes through with nothing (no evidence that
    the others are at fault). The worker must not spin round after round on deliveries that are
    due, a WARNING each, but try again after a pause; once the trigger is gone the pushes go out."""
    hooks = [webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url(f"/unclaimable-{n}"))
             for n in range(3)]
    worker_db.execute("CREATE FUNCTION public.reject_lease() RETURNS trigger LANGUAGE plpgsql AS $$"
                      " BEGIN IF NEW.locked_by IS NOT NULL AND OLD.locked_by IS NULL"
                      " THEN RAISE EXCEPTION 'leases are refused'; END IF; RETURN NEW; END $$")
    worker_db.execute("CREATE TRIGGER reject_lease BEFORE UPDATE ON billhook.deliveries FOR EACH ROW"
                      " EXECUTE FUNCTION public.reject_lease()")
    log_before = len(cluster.server_log())
    stalls = lambda: cluster.server_log()[log_before:].count("could not claim deliveries for any of")
    try:
        customer(worker_db, worker_admin, company_name="Unclaimable B.V.")
        assert wait_until(lambda: stalls() >= 1, timeout=5), "the claim failed for every webhook"
        with cluster.connect("billhook_worker") as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT 1 FROM billhook.deliveries WHERE webhook_id = %s FOR UPDATE", (hooks[2],))
            counted = stalls()
            time.sleep(2.5)
            assert 1 <= stalls() - counted <= 5, f"{stalls() - counted} warnings in 2.5 s"
            holder.execute("COMMIT")
        assert "leases are refused" in cluster.server_log()[log_before:], "the warning names the fault"
        assert worker_db.execute("SELECT count(*) FROM billhook.webhooks WHERE id = ANY (%s) AND enabled",
                                 (hooks,)).fetchone() == (3,), "no webhook is blamed"
    finally:
        worker_db.execute("DROP TRIGGER reject_lease ON billhook.deliveries")
        worker_db.execute("DROP FUNCTION public.reject_lease()")
    for n in range(3):
        assert len(receiver.wait_for(f"/unclaimable-{n}", 1, timeout=5)) == 1


def test_outcomes_of_deleted_deliveries_are_no_evidence_against_the_others_of_their_round(
        cluster, worker_db, worker_admin, receiver):
    """Outcomes whose deliveries were deleted meanwhile (their webhook deleted) are let go of
    without being written: beside outcomes that all fail for a fault that is no row's (a trigger
    that rejects every row of the attempt log), they must not count as outcomes that went through,
    which had every other outcome of the round blamed and its delivery failed for good."""
    receiver.plan("/vanishing", *[Response(200, delay=3.0)] * 2)
    receiver.plan("/kept", *[Response(200, delay=3.0)] * 2)
    vanishing = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/vanishing"))
    kept = webhook(worker_db, worker_admin, ["customer.created"], url=receiver.url("/kept"))
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                      " SELECT %s, 'Twice ' || n FROM generate_series(1, 2) AS n", (worker_admin,))
    claimed = lambda hook: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                             " AND locked_by IS NOT NULL", (hook,)).fetchone() == (2,)
    assert wait_until(lambda: claimed(kept) and claimed(vanishing))
    worker_db.execute("UPDATE billhook.webhooks SET enabled_events = '{customer.updated}' WHERE id = ANY (%s)",
                      ([vanishing, kept],))
    worker_db.execute("CREATE FUNCTION public.reject_attempt() RETURNS trigger LANGUAGE plpgsql AS $$"
                      " BEGIN RAISE EXCEPTION 'the attempt log is closed'; END $$")
    try:
        worker_db.execute("CREATE TRIGGER reject_attempt BEFORE INSERT ON billhook.delivery_attempts"
                          " FOR EACH ROW EXECUTE FUNCTION public.reject_attempt()")
        # Every outcome comes back while this session holds its row, then all are tried together:
        # the deleted webhook's gone, the others into the closed attempt log.
        with cluster.connect("billhook_worker") as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT 1 FROM billhook.deliveries WHERE webhook_id = %s FOR UPDATE", (kept,))
            holder.execute("DELETE FROM billhook.webhooks WHERE id = %s", (vanishing,))
            assert len(receiver.wait_for("/kept", 2)) == 2 and len(receiver.wait_for("/vanishing", 2)) == 2
            time.sleep(1.0)
            holder.execute("COMMIT")
        time.sleep(2.5)
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                 " AND status = 'failed'", (kept,)).fetchone() == (0,), "none blamed"
    finally:
        worker_db.execute("DROP TRIGGER IF EXISTS reject_attempt ON billhook.delivery_attempts")
        worker_db.execute("DROP FUNCTION public.reject_attempt()")
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                                " AND status = 'succeeded'", (kept,)).fetchone() == (2,), timeout=5)
