"""Endpoint health over HTTPS: the failing streak, auto-disable after billhook.disable_after of
failures, deliveries held while disabled and sent once enabled, replay of exhausted deliveries."""

import time

import pytest

from helpers import delivery_rows, wait_until
from receiver import Response

RETRY_EVERY_200MS = ",".join(["200ms"] * 50)


@pytest.fixture
def quick_disable(cluster):
    cluster.configure(disable_after="2s", disable_after_failures=4)
    yield
    cluster.configure(disable_after=None, disable_after_failures=None)


def health(conn, webhook_id):
    return conn.execute("SELECT health, consecutive_failures, failing_since, last_success_at, disabled_at,"
                        " disabled_reason, pending_deliveries, earliest_disable_at"
                        " FROM billhook.webhook_health WHERE id = %s", (webhook_id,)).fetchone()


def health_log(conn, webhook_id):
    return conn.execute("SELECT change, consecutive_failures, pending_deliveries, reason"
                        " FROM billhook.webhook_health_log WHERE webhook_id = %s ORDER BY id", (webhook_id,)).fetchall()


def new_customers(conn, admin, count):
    conn.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                 " SELECT %s, 'Health ' || n FROM generate_series(1, %s) AS n", (admin, count))


def disabled_by_billhook(conn, admin, receiver, path, **settings):
    """A webhook at an endpoint that answers 500, retrying every 200 ms, once billhook disabled it."""
    receiver.plan(path, *[Response(500)] * 1000)
    own = "".join(f", {name} => {value}" for name, value in settings.items())
    hook = conn.execute(f"SELECT id FROM billhook.create_webhook(%s, '{{customer.created}}', %s, verify => false,"
                        f" retry_schedule => %s{own})", (receiver.url(path), admin, RETRY_EVERY_200MS)).fetchone()[0]
    new_customers(conn, admin, 1)
    assert wait_until(lambda: health(conn, hook)[0] == "auto_disabled", timeout=20)
    return hook


def keys_received(receiver, path, since=0):
    return [r.headers["webhook-id"] for r in receiver.received(path)[since:]]


def test_a_success_resets_the_streak(worker_db, worker_admin, https_receiver, quick_disable):
    https_receiver.plan("/flaky", Response(500), Response(500), Response(500))
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false,"
                             " retry_schedule => %s)",
                             (https_receiver.url("/flaky"), worker_admin, RETRY_EVERY_200MS)).fetchone()[0]
    new_customers(worker_db, worker_admin, 1)
    assert wait_until(lambda: health(worker_db, hook)[0] == "failing")
    failing = health(worker_db, hook)
    assert failing[1] >= 1 and failing[2] is not None and failing[3] is None
    assert failing[7] is not None, "a failing webhook shows when it may be disabled"
    # Three failures in 400 ms: fewer than 2 s of them, so never disabled; the fourth attempt succeeds.
    assert wait_until(lambda: health(worker_db, hook)[0] == "healthy")
    healthy = health(worker_db, hook)
    assert healthy[1:3] == (0, None) and healthy[3] is not None and healthy[4:6] == (None, None)
    assert healthy[7] is None
    assert [r[1:3] for r in delivery_rows(worker_db, hook)] == [("succeeded", 4)]
    assert health_log(worker_db, hook) == []


def test_a_webhook_failing_long_enough_is_disabled_holds_its_deliveries_and_sends_them_when_enabled(
        cluster, worker_db, worker_admin, https_receiver, quick_disable):
    hook = disabled_by_billhook(worker_db, worker_admin, https_receiver, "/down", max_in_flight=1)
    disabled = health(worker_db, hook)
    failures, failing_since, disabled_at, reason = disabled[1], disabled[2], disabled[4], disabled[5]
    assert failures >= 4
    assert (disabled_at - failing_since).total_seconds() >= 2, "not before billhook.disable_after"
    assert reason.startswith("every push failed for 00:00:0") and reason.endswith("the last: HTTP 500"), reason
    assert f"attempts in a row since {failing_since.year}" in reason
    assert worker_db.execute("SELECT enabled FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone()[0] is False
    [(change, logged_failures, pending, logged_reason)] = health_log(worker_db, hook)
    assert (change, pending, logged_reason) == ("disabled", 1, reason) and logged_failures >= 4
    assert wait_until(lambda: f"WARNING:  billhook disabled webhook {hook} (https://127.0.0.1:" in cluster.server_log())

    # Disabled: nothing goes out, but new events still get deliveries, held.
    attempts_so_far = len(https_receiver.received("/down"))
    new_customers(worker_db, worker_admin, 3)
    assert wait_until(lambda: len(delivery_rows(worker_db, hook)) == 4, timeout=15)
    time.sleep(1)
    assert len(https_receiver.received("/down")) <= attempts_so_far + 1, "at most the push in flight at the time"
    held = delivery_rows(worker_db, hook)
    assert [(r[1], r[2]) for r in held[1:]] == [("pending", 0)] * 3
    sent_before = len(https_receiver.received("/down"))

    # Fixed and enabled, by a role that may only update webhooks: every delivery goes out once,
    # oldest first, with its own key.
    https_receiver.plan("/down")
    worker_db.execute("CREATE ROLE billhook_health_admin")
    worker_db.execute("GRANT USAGE ON SCHEMA billhook TO billhook_health_admin")
    worker_db.execute("GRANT SELECT, UPDATE ON billhook.webhooks TO billhook_health_admin")
    with worker_db.transaction():
        worker_db.execute("SET LOCAL ROLE billhook_health_admin")
        worker_db.execute("SELECT billhook.enable_webhook(%s)", (hook,))
    keys = [r[3] for r in held]
    assert wait_until(lambda: len(keys_received(https_receiver, "/down", sent_before)) >= 4)
    time.sleep(0.5)
    assert keys_received(https_receiver, "/down", sent_before) == keys
    assert wait_until(lambda: [r[1] for r in delivery_rows(worker_db, hook)] == ["succeeded"] * 4)
    assert health(worker_db, hook)[:2] == ("healthy", 0)
    assert [(row[0], row[2]) for row in health_log(worker_db, hook)] == [("disabled", 1), ("enabled", 4)]


def test_exhausted_deliveries_stay_failed_when_enabled_and_replay_sends_them(
        worker_db, worker_admin, https_receiver, quick_disable):
    https_receiver.plan("/gone", *[Response(500)] * 1000)
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false,"
                             " retry_schedule => '')", (https_receiver.url("/gone"), worker_admin)).fetchone()[0]
    started = worker_db.execute("SELECT now()").fetchone()[0]
    for _ in range(12):
        new_customers(worker_db, worker_admin, 1)
        if health(worker_db, hook)[0] == "auto_disabled":
            break
        time.sleep(0.4)
    assert wait_until(lambda: health(worker_db, hook)[0] == "auto_disabled")
    # Every customer's event has its delivery (the last one may still be waiting for its fan-out);
    # the operational events about the webhook go to none.
    assert wait_until(lambda: worker_db.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM billhook.events AS e WHERE e.administration_id = %s"
        " AND e.event_type = 'customer.created' AND NOT EXISTS (SELECT 1 FROM billhook.deliveries AS d WHERE d.event_id = e.id AND d.webhook_id = %s))",
        (worker_admin, hook)).fetchone()[0])
    # Each delivery failed at its one attempt; any made after the disabling are held.
    assert wait_until(lambda: all(r[1] == "failed" or r[1:3] == ("pending", 0) for r in delivery_rows(worker_db, hook)))
    failed = [r for r in delivery_rows(worker_db, hook) if r[1] == "failed"]
    held = [r[3] for r in delivery_rows(worker_db, hook) if r[1] == "pending"]
    assert len(failed) >= 4

    https_receiver.plan("/gone")
    sent_before = len(https_receiver.received("/gone"))
    worker_db.execute("SELECT billhook.enable_webhook(%s)", (hook,))
    time.sleep(1)
    assert keys_received(https_receiver, "/gone", sent_before) == held, "failed deliveries stay failed"
    sent_before = len(https_receiver.received("/gone"))
    assert worker_db.execute("SELECT billhook.replay(%s, %s)", (hook, started)).fetchone()[0] == len(failed)
    assert wait_until(lambda: len(keys_received(https_receiver, "/gone", sent_before)) >= len(failed))
    time.sleep(0.5)
    assert sorted(keys_received(https_receiver, "/gone", sent_before)) == sorted(r[3] for r in failed)


def test_disabling_by_hand_ends_the_hold(worker_db, worker_admin, https_receiver, quick_disable):
    hook = disabled_by_billhook(worker_db, worker_admin, https_receiver, "/stopped")
    worker_db.execute("SELECT billhook.disable_webhook(%s)", (hook,))
    assert health(worker_db, hook)[0] == "disabled"
    assert [row[0] for row in health_log(worker_db, hook)] == ["disabled", "stopped"]
    new_customers(worker_db, worker_admin, 2)
    worker_db.execute("SELECT billhook.fan_out()")
    assert len(delivery_rows(worker_db, hook)) == 1, "no deliveries are held for a webhook disabled by hand"
