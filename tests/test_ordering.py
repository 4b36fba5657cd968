"""Ordered delivery per entity (webhooks.ordering = 'entity'): pushes about one entity reach the
webhook one at a time in event order, retries included, while other entities go in parallel."""

import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from helpers import make_worker_look_up_claims_floor, wait_until
from receiver import Response


def ordered_webhook(conn, admin, url, **settings):
    own = "".join(f", {name} => %s" for name in settings)
    return conn.execute(f"SELECT id FROM billhook.create_webhook(%s, '{{customer}}', %s, verify => false,"
                        f" ordering => 'entity'{own})", (url, admin, *settings.values())).fetchone()[0]


def customer_ids(conn, count):
    """Ids for new customers, drawn from their sequence."""
    return [r[0] for r in conn.execute("SELECT nextval(pg_get_serial_sequence('billhook.customers', 'id'))"
                                       " FROM generate_series(1, %s)", (count,)).fetchall()]


def customer_history(conn, admin, ids, updates):
    """New customers with these ids, then `updates` transactions that each change all of them: every
    customer gets 1 + updates events, interleaved with the others'."""
    conn.execute("INSERT INTO billhook.customers (id, administration_id, company_name)"
                 " SELECT id, %s, 'Ordered ' || id FROM unnest(%s::bigint[]) AS id", (admin, ids))
    for n in range(updates):
        conn.execute("UPDATE billhook.customers SET city = %s WHERE id = ANY (%s)", (f"City {n}", ids))


def by_entity(requests):
    """Per entity id: its requests as (event id, started, answered), in arrival order."""
    pushes = defaultdict(list)
    for r in sorted(requests, key=lambda r: r.started):
        body = json.loads(r.body)
        pushes[body["entity_id"]].append((int(body["event_id"]), r.started, r.at))
    return pushes


def assert_one_at_a_time_in_order(pushes):
    for entity, sent in pushes.items():
        events = [event for event, _, _ in sent]
        assert events == sorted(events), f"entity {entity} out of order: {events}"
        for (_, _, answered), (_, started, _) in zip(sent, sent[1:]):
            assert started >= answered, f"entity {entity}: a push left before the one before it was answered"


def test_pushes_about_one_entity_arrive_one_at_a_time_in_order_while_entities_go_in_parallel(
        worker_db, worker_admin, receiver):
    random.seed(11)
    receiver.plan("/ordered", *[Response(delay=random.uniform(0, 0.02)) for _ in range(400)])
    hook = ordered_webhook(worker_db, worker_admin, receiver.url("/ordered"), max_in_flight=8)
    customer_history(worker_db, worker_admin, customer_ids(worker_db, 25), updates=7)
    received = receiver.wait_for("/ordered", 200, timeout=60)
    assert len(received) == 200
    assert len({r.headers["webhook-id"] for r in received}) == 200, "each push once"
    pushes = by_entity(received)
    assert len(pushes) == 25 and all(len(sent) == 8 for sent in pushes.values())
    assert_one_at_a_time_in_order(pushes)
    assert receiver.most_at_once("/ordered") >= 4, "different entities were sent in parallel"
    assert worker_db.execute("SELECT ordering FROM billhook.webhook_overview WHERE id = %s", (hook,)).fetchone() == \
        ("entity",)


def test_a_retrying_push_holds_back_only_its_own_entity(worker_db, worker_admin, receiver):
    hook = ordered_webhook(worker_db, worker_admin, receiver.url("/one-stuck"), retry_schedule="500ms,500ms,500ms")
    # The first customer's pushes are answered 500 twice: its first push succeeds at the third
    # attempt, a second or more later.
    ids = customer_ids(worker_db, 10)
    first_id = ids[0]
    receiver.plan_for_body("/one-stuck", f'"entity_id":"{first_id}"'.encode(), Response(500), Response(500))
    customer_history(worker_db, worker_admin, ids, updates=4)
    received = receiver.wait_for("/one-stuck", 52, timeout=30)
    assert len(received) == 52, "50 pushes and two failed attempts"
    pushes = by_entity(received)
    # Each push's last attempt, after the failed ones.
    assert_one_at_a_time_in_order({entity: [p for p, after in zip(sent, sent[1:] + [None]) if not after or after[0] != p[0]]
                                   for entity, sent in pushes.items()})
    stuck = pushes[str(first_id)]
    first_event = stuck[0][0]
    assert [event for event, _, _ in stuck[:3]] == [first_event] * 3, "its first push, tried three times"
    succeeded_at = stuck[2][2]
    assert all(started >= succeeded_at for _, started, _ in stuck[3:]), "its later pushes waited for the retries"
    others = [answered for entity, sent in pushes.items() if entity != str(first_id) for _, _, answered in sent]
    assert max(others) < succeeded_at, "every other entity was delivered while the stuck one retried"
    assert wait_until(lambda: [r[0] for r in worker_db.execute(
        "SELECT status FROM billhook.deliveries WHERE webhook_id = %s GROUP BY status", (hook,)).fetchall()] == \
        ["succeeded"])


def worker_cpu_seconds(conn):
    """CPU time the database's delivery workers have used so far (their processes, all threads)."""
    pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'"
                                       " AND datname = current_database()").fetchall()]
    assert pids
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def test_a_push_held_back_behind_a_retry_is_not_due_before_it(worker_db, worker_admin, receiver):
    """A push about an entity whose earlier push waits for its retry falls due with that retry:
    meanwhile the worker sleeps instead of going round for it again and again."""
    hook = ordered_webhook(worker_db, worker_admin, receiver.url("/held-back"), retry_schedule="1h")
    try:
        [entity] = customer_ids(worker_db, 1)
        receiver.plan_for_body("/held-back", f'"entity_id":"{entity}"'.encode(), Response(500))
        customer_history(worker_db, worker_admin, [entity], updates=1)
        assert len(receiver.wait_for("/held-back", 1)) == 1
        assert wait_until(lambda: worker_db.execute(
            "SELECT array_agg(attempts ORDER BY id) FROM billhook.deliveries WHERE webhook_id = %s",
            (hook,)).fetchone()[0] == [1, 0])
        time.sleep(0.5)
        before = worker_cpu_seconds(worker_db)
        time.sleep(3)
        used = worker_cpu_seconds(worker_db) - before
        assert used < 0.3, f"the worker used {used:.2f} s of CPU in 3 s with nothing due"
        assert len(receiver.received("/held-back")) == 1, "the later push waits"
    finally:
        # Its retry would come in an hour, in the middle of later tests.
        worker_db.execute("DELETE FROM billhook.webhooks WHERE id = %s", (hook,))


def test_a_push_below_where_the_claims_start_still_holds_back_its_entity(own_cluster, receiver):
    """The claims read the windows from the oldest one holding a pending delivery on, as the worker
    last looked it up. A delivery made pending below that without waking the worker (by hand here)
    still holds back the later pushes about its entity, and a redelivery goes first."""
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '60s'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook")
        hook = ordered_webhook(conn, 1, receiver.url("/floor"))
        entity = conn.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                              " VALUES (1, 'Floor B.V.') RETURNING id").fetchone()[0]
        first = json.loads(receiver.wait_for("/floor", 1)[0].body)
        assert int(first["event_id"]) >> 40 == 0
        assert wait_until(lambda: conn.execute("SELECT status FROM billhook.deliveries WHERE webhook_id = %s",
                                               (hook,)).fetchone()[0] == "succeeded")
        # Two windows on, nothing pending: the claims start at window 1 once the worker looks again.
        for _ in range(2):
            current = conn.execute("SELECT billhook.current_window()").fetchone()[0]
            while conn.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0] == current:
                pass
        make_worker_look_up_claims_floor(conn, receiver, "/floor-probe")
        conn.execute("UPDATE billhook.deliveries SET status = 'pending', next_attempt_at = now() + interval '1 hour'"
                     " WHERE webhook_id = %s", (hook,))
        conn.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (entity,))
        assert wait_until(lambda: conn.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s",
                                               (hook,)).fetchone()[0] == 2)
        later = conn.execute("SELECT id, event_id FROM billhook.deliveries WHERE webhook_id = %s ORDER BY id DESC"
                             " LIMIT 1", (hook,)).fetchone()
        assert later[1] >> 40 == 2
        time.sleep(3)
        assert len(receiver.received("/floor")) == 1, "the later push waits for the pending one below"
        # Redelivered, the first push goes now, and the later one after it.
        earlier = conn.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s AND id <> %s",
                               (hook, later[0])).fetchone()[0]
        conn.execute("SELECT billhook.redeliver(%s)", (earlier,))
        pushes = receiver.wait_for("/floor", 3, timeout=15)
        assert [int(json.loads(p.body)["event_id"]) for p in pushes[1:]] == [int(first["event_id"]), later[1]]
        assert pushes[2].started >= pushes[1].at


@pytest.mark.parametrize("ordering", ["Entity", "per-entity", ""])
def test_an_unknown_ordering_is_22023_naming_it(db, admin, ordering):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        db.execute("SELECT billhook.create_webhook('https://receiver.example/o', NULL, %s, verify => false,"
                   " ordering => %s)", (admin, ordering))
    assert f'invalid ordering "{ordering}": no such choice' in str(refused.value)
    assert refused.value.diag.message_hint == "Use one of: none, entity."
    hook = db.execute("SELECT id FROM billhook.create_webhook('https://receiver.example/o', NULL, %s,"
                      " verify => false)", (admin,)).fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT billhook.update_webhook(%s, ordering => %s)", (hook, ordering))
    db.execute("SELECT billhook.update_webhook(%s, ordering => 'entity')", (hook,))
    assert db.execute("SELECT ordering FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone() == ("entity",)
