"""The delivery worker end to end: a cluster with billhook preloaded, a real HTTP receiver, and what
actually arrives there."""

import base64
import hashlib
import hmac
import json
import time

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from helpers import VERSION, create_webhook, customer, delivery_rows, expense, invoice, wait_until
from receiver import Response


@pytest.fixture
def quick_retries(cluster):
    cluster.configure(retry_schedule="200ms,200ms")
    yield
    cluster.configure(retry_schedule=None)


def own_signature(secret, headers, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_push_has_the_envelope_headers_and_a_valid_signature(worker_db, worker_admin, receiver):
    hook, token, secret = create_webhook(worker_db, worker_admin, receiver.url("/exact"), ["invoice.created"])
    c = customer(worker_db, worker_admin, company_name="Acme")
    i = invoice(worker_db, worker_admin, c, lines=[("Work", 2, "50.00", 21)])
    [push] = receiver.wait_for("/exact", 1)
    event = worker_db.execute(
        "SELECT id, entity, billhook.json_time(occurred_at) FROM billhook.events"
        " WHERE entity_id = %s AND event_type = 'invoice.created'", (i,)).fetchone()
    key = worker_db.execute("SELECT idempotency_key::text FROM billhook.deliveries WHERE webhook_id = %s",
                            (hook,)).fetchone()[0]

    assert json.loads(push.body) == {
        "administration_id": str(worker_admin),
        "webhook_id": str(hook),
        "webhook_token": token,
        "entity_type": "Invoice",
        "entity_id": str(i),
        "state": "draft",
        "action": "invoice.created",
        "event_id": str(event[0]),
        "occurred_at": event[2],
        "entity": event[1],
    }
    assert list(json.loads(push.body)) == ["administration_id", "webhook_id", "webhook_token", "entity_type",
                                           "entity_id", "state", "action", "event_id", "occurred_at", "entity"]
    headers = push.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"billhook/{VERSION}"
    assert headers["idempotency-key"] == headers["webhook-id"] == key
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert headers["webhook-signature"] == own_signature(secret, headers, push.body)
    assert Webhook(secret).verify(push.body, headers)["entity_id"] == str(i), "the standardwebhooks library accepts it"
    assert secret not in push.body.decode() and secret not in str(headers)

    status = wait_until(lambda: [r[1] for r in delivery_rows(worker_db, hook)] == ["succeeded"])
    assert status
    row = worker_db.execute("SELECT last_http_status, last_http_body, delivered_at IS NOT NULL, last_duration_ms >= 0"
                            " FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()
    assert row == (200, "ok", True, True)
    assert worker_db.execute("SELECT last_http_status, last_http_body FROM billhook.webhooks WHERE id = %s",
                             (hook,)).fetchone() == (200, "ok")


def test_500_500_200_is_three_attempts_with_one_key(worker_db, worker_admin, receiver, quick_retries):
    receiver.plan("/flaky", Response(500, b"boom"), Response(502, b"bad gateway"), Response(200, b"thanks"))
    hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/flaky"), ["customer"])
    customer(worker_db, worker_admin)
    pushes = receiver.wait_for("/flaky", 3)
    assert len(pushes) == 3
    assert len({p.headers["idempotency-key"] for p in pushes}) == 1
    assert len({p.body for p in pushes}) == 1, "every retry sends the same body"
    assert wait_until(lambda: [r[1:3] for r in delivery_rows(worker_db, hook)][:1] == [("succeeded", 3)])
    attempts = worker_db.execute(
        "SELECT a.attempt, a.http_status, a.response_body, a.succeeded FROM billhook.delivery_attempts a"
        " WHERE a.webhook_id = %s ORDER BY a.id", (hook,)).fetchall()
    assert attempts == [(1, 500, "boom", False), (2, 502, "bad gateway", False), (3, 200, "thanks", True)]
    assert worker_db.execute("SELECT last_http_status, last_http_body FROM billhook.webhooks WHERE id = %s",
                             (hook,)).fetchone() == (200, "thanks")


def test_retries_exhausted_is_failed_and_kept(worker_db, worker_admin, receiver, quick_retries):
    receiver.plan("/down", *[Response(500, b"down")] * 3)
    hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/down"), ["customer"])
    customer(worker_db, worker_admin)
    assert len(receiver.wait_for("/down", 3)) == 3
    assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, hook)] == ["failed"])
    time.sleep(0.6)
    assert len(receiver.received("/down")) == 3, "no fourth attempt after two retries"
    [(_, status, attempts, _, http_status, _)] = delivery_rows(worker_db, hook)
    assert (status, attempts, http_status) == ("failed", 3, 500)


def test_timeout_is_a_failed_attempt(cluster, worker_db, worker_admin, receiver):
    cluster.configure(request_timeout="300ms", retry_schedule="")
    try:
        receiver.plan("/slow", Response(200, delay=1.0))
        hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/slow"), ["customer"])
        customer(worker_db, worker_admin)
        assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, hook)] == ["failed"])
        [(_, _, attempts, _, http_status, error)] = delivery_rows(worker_db, hook)
        assert (attempts, http_status) == (1, None)
        assert "timed out" in error
    finally:
        cluster.configure(request_timeout=None, retry_schedule=None)


def test_retry_after_is_honoured(cluster, worker_db, worker_admin, receiver):
    cluster.configure(retry_schedule="100ms,10s")
    try:
        receiver.plan("/busy", Response(503, b"busy", headers={"Retry-After": "2"}))
        hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/busy"), ["customer"])
        customer(worker_db, worker_admin)
        first, second = receiver.wait_for("/busy", 2, timeout=10)
        assert 1.9 <= second.at - first.at < 4, second.at - first.at
    finally:
        cluster.configure(retry_schedule=None)


def test_redeliver_and_replay_reuse_the_idempotency_key(worker_db, worker_admin, receiver):
    hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/again"), ["customer"])
    customer(worker_db, worker_admin, company_name="one")
    customer(worker_db, worker_admin, company_name="two")
    assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, hook)] == ["succeeded"] * 2)
    (first_id, _, _, first_key, _, _), (_, _, _, second_key, _, _) = delivery_rows(worker_db, hook)

    row = worker_db.execute("SELECT status, attempts FROM billhook.redeliver(%s)", (first_id,)).fetchone()
    assert row == ("pending", 0)
    pushes = receiver.wait_for("/again", 3)
    assert pushes[2].headers["idempotency-key"] == first_key
    assert wait_until(lambda: [r[1:3] for r in delivery_rows(worker_db, hook)][:1] == [("succeeded", 1)])

    since = worker_db.execute("SELECT now() - interval '1 hour'").fetchone()[0]
    assert worker_db.execute("SELECT billhook.replay(%s, %s)", (hook, since)).fetchone()[0] == 0, "nothing failed"
    assert worker_db.execute("SELECT billhook.replay(%s, %s, only_failed => false)", (hook, since)).fetchone()[0] == 2
    pushes = receiver.wait_for("/again", 5)
    assert sorted(p.headers["idempotency-key"] for p in pushes[3:]) == sorted([first_key, second_key])
    with pytest.raises(psycopg.errors.NoDataFound):
        worker_db.execute("SELECT billhook.redeliver(-1)")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        worker_db.execute("SELECT billhook.replay(%s, now(), now() - interval '1 day')", (hook,))


def test_commit_wakes_the_worker_despite_a_60s_poll_interval(worker_db, worker_admin, receiver):
    create_webhook(worker_db, worker_admin, receiver.url("/fast"), ["customer"])
    latencies = []
    for n in range(5):
        committed = time.time()
        customer(worker_db, worker_admin, company_name=f"fast {n}")
        [*_, push] = receiver.wait_for("/fast", n + 1, timeout=5)
        latencies.append(push.at - committed)
    assert max(latencies) < 1.0, latencies


def test_commits_wake_the_worker_for_what_webhooks_subscribe_to_now(worker_db, worker_admin, receiver):
    # Commits wake the worker only for events some enabled webhook subscribes to; with a 60 s poll,
    # a stale idea of the subscriptions would show as a minute's delay.
    worker_db.execute("UPDATE billhook.webhooks SET enabled = false")
    expense(worker_db, worker_admin)
    hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/subscribed"), ["expense"])
    committed = time.time()
    expense(worker_db, worker_admin)
    [push] = receiver.wait_for("/subscribed", 1, timeout=5)
    assert push.at - committed < 1.0
    worker_db.execute("SELECT billhook.update_webhook(%s, enabled_events => '{customer}')", (hook,))
    committed = time.time()
    customer(worker_db, worker_admin)
    [_, push] = receiver.wait_for("/subscribed", 2, timeout=5)
    assert push.at - committed < 1.0
    assert json.loads(push.body)["action"] == "customer.created"


def test_rolled_back_changes_send_nothing(worker_db, worker_admin, receiver):
    create_webhook(worker_db, worker_admin, receiver.url("/rollback"), ["customer"])
    worker_db.execute("BEGIN")
    customer(worker_db, worker_admin)
    worker_db.execute("ROLLBACK")
    customer(worker_db, worker_admin, company_name="committed")
    [push] = receiver.wait_for("/rollback", 1)
    time.sleep(0.5)
    assert len(receiver.received("/rollback")) == 1
    assert json.loads(push.body)["entity"]["company_name"] == "committed"


def test_private_targets_are_refused_unless_allowed(cluster, worker_db, worker_admin, receiver):
    cluster.configure(allow_private_targets="off", retry_schedule="")
    try:
        hook, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/private"), ["customer"])
        customer(worker_db, worker_admin)
        assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, hook)] == ["failed"])
        error = delivery_rows(worker_db, hook)[0][5]
        assert "refused to connect to private address 127.0.0.1" in error
        assert receiver.received("/private") == []
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            create_webhook(worker_db, worker_admin, "http://169.254.169.254/latest/meta-data", verify=True)
        assert "private address 169.254.169.254" in str(refused.value)
    finally:
        cluster.configure(allow_private_targets=None, retry_schedule=None)


def test_registration_check_accepts_200_and_refuses_the_rest(worker_db, worker_admin, receiver):
    hook, token, secret = create_webhook(worker_db, worker_admin, receiver.url("/register"), verify=True)
    [ping] = receiver.received("/register")
    body = Webhook(secret).verify(ping.body, ping.headers)
    assert (body["action"], body["webhook_id"], body["webhook_token"], body["entity_type"]) == (
        "webhook.verification", str(hook), token, "Webhook")

    receiver.plan("/missing", Response(404, b"not here"))
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        create_webhook(worker_db, worker_admin, receiver.url("/missing"), verify=True)
    assert "failed the registration check: answered HTTP 404" in str(refused.value)
    assert "verify => false" in refused.value.diag.message_hint

    closed_port = receiver.port + 1 if receiver.port < 65535 else receiver.port - 1
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        create_webhook(worker_db, worker_admin, f"http://127.0.0.1:{closed_port}/", verify=True)
    count = worker_db.execute("SELECT count(*) FROM billhook.webhooks WHERE administration_id = %s",
                              (worker_admin,)).fetchone()[0]
    assert count == 1, "refused webhooks are not saved"


def test_secret_rotation_signs_with_both_secrets(worker_db, worker_admin, receiver):
    hook, _, old_secret = create_webhook(worker_db, worker_admin, receiver.url("/rotate"), ["customer"])
    new_secret = worker_db.execute("SELECT signing_secret FROM billhook.rotate_secret(%s)", (hook,)).fetchone()[0]
    customer(worker_db, worker_admin)
    [push] = receiver.wait_for("/rotate", 1)
    assert len(push.headers["webhook-signature"].split(" ")) == 2
    Webhook(new_secret).verify(push.body, push.headers)
    Webhook(old_secret).verify(push.body, push.headers)
    worker_db.execute("SELECT billhook.rotate_secret(%s, '0 seconds')", (hook,))
    customer(worker_db, worker_admin)
    second = receiver.wait_for("/rotate", 2)[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1


def test_a_dead_endpoint_does_not_stall_a_healthy_one(cluster, worker_db, worker_admin, receiver):
    cluster.configure(request_timeout="2s", max_in_flight_per_webhook=2)
    try:
        receiver.plan("/dead", *[Response(200, delay=3.0)] * 40)
        dead, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/dead"), ["customer"])
        create_webhook(worker_db, worker_admin, receiver.url("/healthy"), ["customer"])
        with worker_db.transaction():
            for n in range(20):
                customer(worker_db, worker_admin, company_name=f"c{n}")
        started = time.time()
        assert len(receiver.wait_for("/healthy", 20, timeout=5)) == 20
        assert time.time() - started < 2.0, "healthy deliveries did not wait for the dead endpoint's timeouts"
        in_flight = worker_db.execute("SELECT count(*) FROM billhook.delivery_attempts WHERE webhook_id = %s",
                                      (dead,)).fetchone()[0]
        assert in_flight == 0
    finally:
        cluster.configure(request_timeout=None, max_in_flight_per_webhook=None)


def test_retention_purges_succeeded_deliveries_then_failed_ones_by_failed_retention(cluster, worker_db, worker_admin,
                                                                                  receiver):
    receiver.plan("/purge-failed", Response(500))
    ok, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/purge-ok"), ["customer"])
    failed, _, _ = create_webhook(worker_db, worker_admin, receiver.url("/purge-failed"), ["customer"])
    cluster.configure(retry_schedule="")
    try:
        customer(worker_db, worker_admin)
        assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, ok)] == ["succeeded"])
        assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, failed)] == ["failed"])
        cluster.configure(retention="2s", failed_retention="0")
        assert wait_until(lambda: delivery_rows(worker_db, ok) == [], timeout=10)
        assert [r[1] for r in delivery_rows(worker_db, failed)] == ["failed"]
        assert worker_db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s",
                                 (worker_admin,)).fetchone()[0] == 1, "the failed delivery keeps its event"
        # With no retention, failed deliveries stay too, whatever their own.
        cluster.configure(retention="0", failed_retention="1s")
        time.sleep(3)
        assert [r[1] for r in delivery_rows(worker_db, failed)] == ["failed"]
        cluster.configure(retention="2s", failed_retention="2s")
        assert wait_until(lambda: delivery_rows(worker_db, failed) == [], timeout=10)
        assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s",
                                                    (worker_admin,)).fetchone()[0] == 0, timeout=10)
    finally:
        cluster.configure(retry_schedule=None, retention=None, failed_retention=None)


def test_a_webhooks_own_retry_schedule_and_request_timeout_apply(cluster, worker_db, worker_admin, receiver):
    cluster.configure(retry_schedule="1h")
    try:
        receiver.plan("/own-schedule", Response(500), Response(500))
        receiver.plan("/global-schedule", Response(500))
        receiver.plan("/slow", *[Response(delay=1.5)] * 4)
        own = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer}', %s, verify => false,"
                                " retry_schedule => '100ms')", (receiver.url("/own-schedule"), worker_admin)).fetchone()[0]
        default = create_webhook(worker_db, worker_admin, receiver.url("/global-schedule"), ("customer",))[0]
        impatient = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer}', %s, verify => false,"
                                      " retry_schedule => '', request_timeout => '300ms')",
                                      (receiver.url("/slow"), worker_admin)).fetchone()[0]
        patient = create_webhook(worker_db, worker_admin, receiver.url("/slow"), ("customer",))[0]
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'S')",
                          (worker_admin,))

        def state(hook):
            """(status, attempts) of the webhook's one delivery, None before the fan-out made it."""
            rows = delivery_rows(worker_db, hook)
            return rows[0][1:3] if rows else None

        # Its own schedule: one retry after 100 ms, then failed; the global 1h leaves the other pending.
        assert wait_until(lambda: state(own) == ("failed", 2))
        assert wait_until(lambda: state(default) == ("pending", 1))
        # Its own timeout: 300 ms against a receiver that takes 1.5 s, and no retries; the global
        # 10 s lets the same answer through.
        assert wait_until(lambda: state(impatient) == ("failed", 1))
        assert "timed out" in delivery_rows(worker_db, impatient)[0][5]
        assert wait_until(lambda: state(patient) == ("succeeded", 1))
    finally:
        cluster.configure(retry_schedule=None)


def test_a_webhooks_own_in_flight_cap_holds_at_a_slow_endpoint(worker_db, worker_admin, receiver):
    receiver.plan("/capped", *[Response(delay=0.3)] * 12)
    receiver.plan("/uncapped", *[Response(delay=0.3)] * 12)
    worker_db.execute("SELECT billhook.create_webhook(%s, '{customer.created}', %s, verify => false,"
                      " max_in_flight => 3)", (receiver.url("/capped"), worker_admin))
    create_webhook(worker_db, worker_admin, receiver.url("/uncapped"), ("customer.created",))
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                      " SELECT %s, 'C' || n FROM generate_series(1, 12) AS n", (worker_admin,))
    assert len(receiver.wait_for("/capped", 12, timeout=20)) == 12
    assert len(receiver.wait_for("/uncapped", 12, timeout=20)) == 12
    assert receiver.most_at_once("/capped") == 3
    # billhook.max_in_flight_per_webhook (8) lets the other one have more.
    assert receiver.most_at_once("/uncapped") > 3


def test_a_rate_limited_webhook_gets_no_more_than_its_rate_while_another_runs_at_full_speed(
        worker_db, worker_admin, receiver):
    worker_db.execute("SELECT billhook.create_webhook(%s, '{customer.created}', %s, verify => false,"
                      " max_requests_per_second => 5)", (receiver.url("/limited"), worker_admin))
    create_webhook(worker_db, worker_admin, receiver.url("/unlimited"), ("customer.created",))
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                      " SELECT %s, 'C' || n FROM generate_series(1, 20) AS n", (worker_admin,))
    limited = [r.started for r in receiver.wait_for("/limited", 20, timeout=30)]
    unlimited = [r.started for r in receiver.wait_for("/unlimited", 20, timeout=30)]
    assert len(limited) == len(unlimited) == 20
    # 5/s: any six pushes in a row span a second (slack for the receiver's clock and threads).
    spans = [later - first for first, later in zip(limited, limited[5:])]
    assert min(spans) >= 0.9, spans
    assert limited[-1] - limited[0] >= 19 * 0.2 * 0.9
    # Meanwhile the other webhook was served at once: all of it before a quarter of the limited one.
    assert max(unlimited) < sorted(limited)[5], (unlimited, limited)


def test_a_commit_for_many_webhooks_is_fanned_out_a_thousand_deliveries_a_round(worker_db, worker_admin, receiver):
    """Rounds are bounded by deliveries, not events: with 100 webhooks a round's fan-out takes at most
    10 events. Each round is a transaction of its own, so its deliveries share one created_at."""
    hooks = [create_webhook(worker_db, worker_admin, receiver.url("/many"), ["expense.created"])[0]
             for _ in range(100)]
    try:
        worker_db.execute("INSERT INTO billhook.expenses (administration_id, supplier_name, amount)"
                          " SELECT %s, 'many ' || n, 10 FROM generate_series(1, 40) AS n", (worker_admin,))
        count = "SELECT count(*) FROM billhook.deliveries WHERE webhook_id = ANY (%s)"
        assert wait_until(lambda: worker_db.execute(count, (hooks,)).fetchone()[0] == 4000, timeout=60)
        rounds = worker_db.execute(
            "SELECT count(*), max(made) FROM (SELECT count(*) AS made FROM billhook.deliveries"
            " WHERE webhook_id = ANY (%s) GROUP BY created_at) AS per_round", (hooks,)).fetchone()
        assert rounds[0] >= 4 and rounds[1] <= 1000, f"{rounds[0]} rounds, the largest made {rounds[1]} deliveries"
        # Deleting the webhooks while the worker records their outcomes can deadlock with it.
        assert wait_until(lambda: len(receiver.received("/many")) >= 4000, timeout=60)
        assert wait_until(lambda: worker_db.execute(count + " AND status = 'succeeded'", (hooks,)).fetchone()[0] == 4000)
    finally:
        for hook in hooks:
            worker_db.execute("SELECT billhook.delete_webhook(%s)", (hook,))
