"""Reporting on a controlled history: billhook.webhook_stats and billhook.delivery_report give
exact numbers for deliveries and attempts written with known times and outcomes."""

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from helpers import create_webhook

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)


def event(db, admin, event_type, at):
    return db.execute("INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, entity,"
                      " occurred_at) VALUES (%s, %s, 'Invoice', 1, '{}', %s) RETURNING id",
                      (admin, event_type, at)).fetchone()[0]


def delivery(db, webhook_id, event_id, status, attempts, delivered_at=None):
    return db.execute("INSERT INTO billhook.deliveries (event_id, webhook_id, status, attempts, delivered_at)"
                      " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                      (event_id, webhook_id, status, attempts, delivered_at)).fetchone()[0]


def attempt(db, delivery_id, webhook_id, number, at, succeeded, duration_ms=0):
    db.execute("INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at,"
               " duration_ms, http_status, succeeded)"
               " SELECT d.id, d.event_id, %s, %s, %s, %s, %s, %s FROM billhook.deliveries AS d WHERE d.id = %s",
               (webhook_id, number, at, duration_ms, 200 if succeeded else 500, succeeded, delivery_id))


@pytest.fixture
def history(db, admin):
    """Webhook `a`: four invoice.created delivered 1, 2, 3 and 4 s after their events, one failed after
    3 attempts, one pending (2 attempts), and one invoice.paid delivered after 10 s; webhook `b`: one
    pending invoice.created. Plus an event an hour before the window, delivered."""
    a = create_webhook(db, admin, "https://a.example/hook")[0]
    b = create_webhook(db, admin, "https://b.example/hook")[0]
    for n, seconds in enumerate([1, 2, 3, 4]):
        at = T0 + timedelta(minutes=n)
        d = delivery(db, a, event(db, admin, "invoice.created", at), "succeeded", 1, at + timedelta(seconds=seconds))
        attempt(db, d, a, 1, at + timedelta(seconds=seconds) - timedelta(milliseconds=250), True, duration_ms=250)
    failed = delivery(db, a, event(db, admin, "invoice.created", T0 + timedelta(minutes=1)), "failed", 3)
    for n in range(3):
        attempt(db, failed, a, n + 1, T0 + timedelta(minutes=1, seconds=10 * n), False)
    pending = delivery(db, a, event(db, admin, "invoice.created", T0 + timedelta(minutes=2)), "pending", 2)
    attempt(db, pending, a, 1, T0 + timedelta(minutes=2, seconds=1), False)
    attempt(db, pending, a, 2, T0 + timedelta(minutes=3, seconds=1), False)
    paid = delivery(db, a, event(db, admin, "invoice.paid", T0), "succeeded", 1, T0 + timedelta(seconds=10))
    attempt(db, paid, a, 1, T0 + timedelta(seconds=10), True)
    delivery(db, b, event(db, admin, "invoice.created", T0 + timedelta(minutes=4)), "pending", 0)
    old = delivery(db, a, event(db, admin, "invoice.created", T0 - timedelta(hours=1)), "succeeded", 1,
                   T0 - timedelta(hours=1) + timedelta(seconds=100))
    attempt(db, old, a, 1, T0 - timedelta(hours=1) + timedelta(seconds=100), True)
    return a, b


def stats(db, webhook_id, since, until):
    rows = db.execute("SELECT event_type, deliveries, attempts, succeeded, failed, pending, success_rate,"
                      " extract(epoch FROM latency_p50)::float8, extract(epoch FROM latency_p95)::float8,"
                      " extract(epoch FROM latency_p99)::float8, backlog"
                      " FROM billhook.webhook_stats(%s, %s) WHERE webhook_id = %s", (since, until, webhook_id)).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_webhook_stats_counts_outcomes_latencies_and_backlog_exactly(db, history):
    a, b = history
    got = stats(db, a, T0, T0 + timedelta(hours=1))
    # percentile_cont over 1, 2, 3, 4 s: 2.5, 3.85, 3.97.
    created = got["invoice.created"]
    assert created[:6] == (6, 1 * 4 + 3 + 2, 4, 1, 1, 0.8)
    assert [round(x, 6) for x in created[6:9]] == [2.5, 3.85, 3.97]
    assert created[9] == 1, "one pending invoice.created of webhook a"
    assert got["invoice.paid"] == (1, 1, 1, 0, 0, 1.0, 10.0, 10.0, 10.0, 0)
    assert stats(db, b, T0, T0 + timedelta(hours=1)) == {
        "invoice.created": (1, 0, 0, 0, 1, None, None, None, None, 1)}
    # The hour before holds only the old event; the backlog is reported whatever the window.
    before = stats(db, a, T0 - timedelta(hours=2), T0)
    assert before["invoice.created"] == (1, 1, 1, 0, 0, 1.0, 100.0, 100.0, 100.0, 1)
    assert "invoice.paid" not in before
    age = db.execute("SELECT oldest_pending_age FROM billhook.webhook_stats(%s, %s) WHERE webhook_id = %s",
                     (T0, T0 + timedelta(hours=1), b)).fetchone()[0]
    assert age >= datetime.now(timezone.utc) - (T0 + timedelta(minutes=4)) - timedelta(seconds=5)


def test_delivery_report_is_a_time_series_with_empty_buckets(db, history):
    a, _ = history
    rows = db.execute("SELECT bucket_start, sent, succeeded, failed, extract(epoch FROM latency_p95)::float8"
                      " FROM billhook.delivery_report(%s, %s, '1 minute', %s)",
                      (T0, T0 + timedelta(minutes=6), a)).fetchall()
    assert [r[0] for r in rows] == [T0 + timedelta(minutes=n) for n in range(6)]
    # Minute 0: invoice.created #0 at 0:01 (1 s), paid at 0:10 (10 s), the failed one's first try is
    # minute 1; minute 1: #1 (2 s) and three failed attempts; minute 2: #2 (3 s), the pending one's
    # first try; minute 3: #3 (4 s), its second try; minutes 4 and 5: nothing.
    assert [r[1:4] for r in rows] == [(2, 2, 0), (4, 1, 3), (2, 1, 1), (2, 1, 1), (0, 0, 0), (0, 0, 0)]
    assert round(rows[0][4], 6) == round(1 + 0.95 * 9, 6)
    assert [r[4] for r in rows[1:4]] == [2.0, 3.0, 4.0]
    assert rows[4][4] is None
    everyone = db.execute("SELECT sum(sent) FROM billhook.delivery_report(%s, %s, '1 hour')",
                          (T0, T0 + timedelta(hours=1))).fetchone()[0]
    assert everyone >= 10, "without a webhook: all of them"


@pytest.mark.parametrize("call", [
    "billhook.webhook_stats(now(), now() - interval '1 hour')",
    "billhook.delivery_report(now() - interval '1 hour', now(), interval '0')",
    "billhook.delivery_report(now() - interval '1 year', now(), interval '1 month')",
    "billhook.delivery_report(now() - interval '1 year', now(), interval '1 second')",
    "billhook.delivery_report(NULL)",
])
def test_bad_windows_and_buckets_are_22023(db, call):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute(f"SELECT * FROM {call}")
