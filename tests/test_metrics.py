"""billhook.metrics(): Prometheus text that the official parser reads, with numbers that match the
tables."""

import math

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import create_webhook, wait_until
from receiver import Response


def scrape(conn):
    text = conn.execute("SELECT billhook.metrics()").fetchone()[0]
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(families, family, sample_name=None, **labels):
    """The samples of a family (of one sample name) whose labels include `labels`."""
    return [s for s in families[family].samples
            if (sample_name is None or s.name == sample_name)
            and all(s.labels.get(k) == str(v) for k, v in labels.items())]


def test_metrics_parse_and_match_the_tables(worker_db, worker_admin, receiver):
    receiver.plan("/metrics-down", *[Response(500)] * 50)
    healthy = create_webhook(worker_db, worker_admin, receiver.url("/metrics-up"), ("customer.created",))[0]
    failing = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false,"
                                " retry_schedule => '')", (receiver.url("/metrics-down"), worker_admin)).fetchone()[0]
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                      " SELECT %s, 'Metric ' || n FROM generate_series(1, 7) AS n", (worker_admin,))
    assert len(receiver.wait_for("/metrics-up", 7)) == 7 and len(receiver.wait_for("/metrics-down", 7)) == 7
    assert wait_until(lambda: worker_db.execute(
        "SELECT count(*) FROM billhook.deliveries WHERE webhook_id IN (%s, %s) AND status <> 'pending'",
        (healthy, failing)).fetchone()[0] == 14)

    families = scrape(worker_db)
    # Attempts by status class, as the attempt log has them.
    logged = dict(worker_db.execute(
        "SELECT webhook_id || ' ' || coalesce((http_status / 100) || 'xx', 'none'), count(*)"
        " FROM billhook.delivery_attempts WHERE webhook_id IN (%s, %s) GROUP BY 1", (healthy, failing)).fetchall())
    assert logged == {f"{healthy} 2xx": 7, f"{failing} 5xx": 7}
    for key, count in logged.items():
        hook, status_class = key.split()
        [sample] = samples(families, "billhook_delivery_attempts", "billhook_delivery_attempts_total",
                           webhook_id=hook, status_class=status_class, administration_id=worker_admin)
        assert sample.value == count
        assert sample.labels["result"] == ("succeeded" if status_class == "2xx" else "failed")

    # The latency histogram: cumulative buckets, +Inf and count = deliveries acknowledged, sum = their
    # latencies as the deliveries table has them (to the millisecond it stores durations in).
    buckets = samples(families, "billhook_delivery_latency_seconds", "billhook_delivery_latency_seconds_bucket",
                      webhook_id=healthy)
    values = [s.value for s in sorted(buckets, key=lambda s: float(s.labels["le"]))]
    assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf" and values[-1] == 7
    [count] = samples(families, "billhook_delivery_latency_seconds", "billhook_delivery_latency_seconds_count",
                      webhook_id=healthy)
    [total] = samples(families, "billhook_delivery_latency_seconds", "billhook_delivery_latency_seconds_sum",
                      webhook_id=healthy)
    stored = worker_db.execute("SELECT sum(extract(epoch FROM d.delivered_at - e.occurred_at))::float8"
                               " FROM billhook.deliveries d JOIN billhook.events e ON e.id = d.event_id"
                               " WHERE d.webhook_id = %s", (healthy,)).fetchone()[0]
    assert count.value == 7 and math.isclose(total.value, stored, abs_tol=0.002 * 7)
    assert samples(families, "billhook_delivery_latency_seconds", "billhook_delivery_latency_seconds_count",
                   webhook_id=failing)[0].value == 0

    # Gauges read at the scrape.
    assert samples(families, "billhook_webhook_backlog", webhook_id=healthy)[0].value == 0
    assert samples(families, "billhook_webhook_consecutive_failures", webhook_id=failing)[0].value == 7
    assert families["billhook_worker_up"].samples[0].value == 1
    assert families["billhook_worker_starts"].samples[0].value >= 1
    started = worker_db.execute("SELECT extract(epoch FROM started_at)::float8 FROM billhook.worker_status()").fetchone()[0]
    assert math.isclose(families["billhook_worker_start_time_seconds"].samples[0].value, started, abs_tol=1e-3)


def test_a_backlog_shows_in_the_gauges(db, admin):
    """No worker serves this database: the fan-out's deliveries stay pending."""
    hook = create_webhook(db, admin, "https://backlog.example/hook", ("customer.created",))[0]
    db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
               " SELECT %s, 'Waiting ' || n FROM generate_series(1, 3) AS n", (admin,))
    db.execute("SELECT billhook.fan_out()")
    families = scrape(db)
    assert samples(families, "billhook_webhook_backlog", webhook_id=hook)[0].value == 3
    assert samples(families, "billhook_webhook_oldest_pending_seconds", webhook_id=hook)[0].value >= 0
    assert samples(families, "billhook_delivery_attempts", "billhook_delivery_attempts_total", webhook_id=hook) == []


def test_a_monitoring_role_scrapes_with_column_grants_and_cannot_read_secrets(db, admin):
    create_webhook(db, admin, "https://monitored.example/hook", ("customer.created",))
    db.execute("CREATE ROLE billhook_monitor")
    for grant in ["GRANT USAGE ON SCHEMA billhook TO billhook_monitor",
                  "GRANT SELECT (id, administration_id, enabled, consecutive_failures) ON billhook.webhooks"
                  " TO billhook_monitor",
                  "GRANT SELECT (webhook_id, status, created_at) ON billhook.deliveries TO billhook_monitor",
                  "GRANT SELECT ON billhook.delivery_counters TO billhook_monitor"]:
        db.execute(grant)
    with db.transaction():
        db.execute("SET LOCAL ROLE billhook_monitor")
        assert "billhook_webhook_backlog{" in db.execute("SELECT billhook.metrics()").fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with db.transaction():
                db.execute("SELECT signing_secret FROM billhook.webhooks")
