"""billhook.fan_out: committed events become deliveries, each exactly once, in batches, without
waiting for unrelated open transactions. No worker serves this database, so the tests run the
fan-out themselves, as the worker does every round."""

import psycopg
import pytest

from helpers import customer, deliveries, fan_out, webhook


def run_fan_out(db, max_events=1000):
    return db.execute("SELECT events, deliveries FROM billhook.fan_out(%s)", (max_events,)).fetchone()


def delivered_companies(db, hook):
    return [r[0] for r in db.execute(
        "SELECT e.entity ->> 'company_name' FROM billhook.deliveries d JOIN billhook.events e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s ORDER BY d.id", (hook,)).fetchall()]


def test_batches_take_each_event_once_and_an_open_transaction_holds_up_nobody(cluster, db, admin):
    hook = webhook(db, admin, ["customer"])
    fan_out(db)
    with cluster.connect() as slow:
        slow.execute("BEGIN")
        customer(slow, admin, company_name="slow")  # has a transaction id; its event comes at commit
        for name in ("a", "b", "c"):
            customer(db, admin, company_name=name)

        assert run_fan_out(db, 2) == (2, 2)
        customer(db, admin, company_name="during the pass")
        assert run_fan_out(db, 2) == (1, 1), "the pass ends with what had committed when it began"
        assert run_fan_out(db, 2) == (1, 1), "the next pass takes the commit made during the last one"
        assert run_fan_out(db, 2) == (0, 0)
        assert delivered_companies(db, hook) == ["a", "b", "c", "during the pass"]

        slow.execute("COMMIT")
    assert run_fan_out(db, 2) == (1, 1), "the long transaction's event, older than the last pass"
    assert run_fan_out(db) == (0, 0)
    assert delivered_companies(db, hook) == ["a", "b", "c", "during the pass", "slow"]
    assert db.execute("SELECT count(*) = count(DISTINCT idempotency_key) FROM billhook.deliveries").fetchone()[0]


def test_a_pass_that_finds_nothing_writes_nothing(db, admin):
    fan_out(db)
    before = db.execute("SELECT xmin::text, done::text FROM billhook.fan_out_state").fetchone()
    assert run_fan_out(db) == (0, 0)
    assert db.execute("SELECT xmin::text, done::text FROM billhook.fan_out_state").fetchone() == before


def test_a_webhook_receives_only_events_that_occurred_after_it_was_created(db, admin):
    customer(db, admin, company_name="before")
    hook = webhook(db, admin, ["customer"])
    customer(db, admin, company_name="after")
    fan_out(db)
    assert delivered_companies(db, hook) == ["after"]


def test_restored_events_are_not_taken_for_new_ones(cluster, db, admin):
    hook = webhook(db, admin, ["customer"])
    fan_out(db)
    # pg_restore runs as a replica session; the events come with the dumping cluster's transaction
    # ids, which may be ahead of this one's.
    with cluster.connect(options="-c session_replication_role=replica") as restore:
        restored = restore.execute(
            "INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, entity, transaction_id)"
            " VALUES (%s, 'customer.created', 'Customer', 1, '{}', (pg_current_xact_id()::text::bigint + 5)::text::xid8)"
            " RETURNING id", (admin,)).fetchone()[0]
    assert db.execute("SELECT transaction_id::text FROM billhook.events WHERE id = %s", (restored,)).fetchone() == ("0",)
    for _ in range(10):
        db.execute("SELECT pg_current_xact_id()")  # this cluster's ids pass the restored one's
    assert run_fan_out(db) == (0, 0)
    assert deliveries(db, hook) == []


def test_fan_out_checks_its_argument_and_is_not_for_everyone(cluster, db):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as bad:
        db.execute("SELECT * FROM billhook.fan_out(0)")
    assert "invalid max_events 0" in str(bad.value)
    db.execute("DROP ROLE IF EXISTS billhook_outsider")
    db.execute("CREATE ROLE billhook_outsider LOGIN")
    db.execute("GRANT USAGE ON SCHEMA billhook TO billhook_outsider")
    with cluster.connect(user="billhook_outsider") as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM billhook.fan_out()")
