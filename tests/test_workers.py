"""billhook.workers: several workers for one database, each claiming and sending the pushes of its
share of the webhooks (webhook id modulo billhook.workers). Every push goes out once, through the
worker whose share its webhook is, without waiting for a poll; fewer or more workers on a reload."""

import json

from helpers import create_webhook, wait_until
from receiver import Receiver, Response

WORKERS = "SELECT member, pid FROM billhook.workers() WHERE database = current_database() AND running ORDER BY member"


def running_members(conn, count):
    """The pid of each member, once exactly `count` run."""
    rows = []

    def exactly_count():
        rows[:] = conn.execute(WORKERS).fetchall()
        return len(rows) == count

    assert wait_until(exactly_count, 30), f"{count} workers running: {rows}"
    return dict(rows)


def test_two_workers_share_the_webhooks_and_send_every_push_once(own_cluster):
    receiver = Receiver()
    try:
        # A 60 s poll: a push that waits for the poll rather than a wake-up fails the test.
        cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                              "billhook.workers = 2", "billhook.poll_interval = '60s'")
        with cluster.connect("postgres") as conn:
            conn.execute("CREATE EXTENSION billhook")
            pids = running_members(conn, 2)
            assert pids[0] != pids[1]
            assert len(cluster.connect("postgres").execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'").fetchall()) == 2

            hooks = [create_webhook(conn, 1, receiver.url(f"/share{n}"), ["customer.created"])[0] for n in range(4)]
            assert {hook % 2 for hook in hooks} == {0, 1}
            # The first pushes hang a while, so that the leases show who holds what.
            for n in range(4):
                receiver.plan(f"/share{n}", *[Response(200, delay=1.0)] * 2)
            conn.execute("INSERT INTO billhook.customers (company_name) SELECT 'share ' || n"
                          " FROM generate_series(1, 30) AS n")
            holders = set()

            def every_webhook_seen():
                holders.update(conn.execute("SELECT DISTINCT webhook_id, locked_by FROM billhook.deliveries"
                                            " WHERE locked_by IS NOT NULL AND status = 'pending'").fetchall())
                return {hook for hook, _ in holders} == set(hooks)

            assert wait_until(every_webhook_seen, 10), f"every webhook had leased pushes: {holders}"
            assert holders == {(hook, pids[hook % 2]) for hook in hooks}

            for n in range(4):
                pushes = receiver.wait_for(f"/share{n}", 30, timeout=20)
                names = sorted(json.loads(p.body)["entity"]["company_name"] for p in pushes)
                assert names == sorted(f"share {i}" for i in range(1, 31)), (f"/share{n}", conn.execute(
                    "SELECT status, attempts, last_error FROM billhook.deliveries"
                    " WHERE webhook_id = %s AND status <> 'succeeded'", (hooks[n],)).fetchall())
                keys = [p.headers["idempotency-key"] for p in pushes]
                assert len(set(keys)) == 30
            assert wait_until(lambda: conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'")
                              .fetchone()[0] == 120)
            assert conn.execute("SELECT count(*) FROM billhook.delivery_attempts").fetchone()[0] == 120

            # A redelivery queued by the application wakes the worker whose webhook it is.
            second = next(hook for hook in hooks if hook % 2 == 1)
            delivery = conn.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s LIMIT 1",
                                    (second,)).fetchone()[0]
            path = f"/share{hooks.index(second)}"
            conn.execute("SELECT billhook.redeliver(%s)", (delivery,))
            assert len(receiver.wait_for(path, 31, timeout=5)) == 31
    finally:
        receiver.close()


def test_fewer_or_more_workers_take_effect_on_a_reload(own_cluster):
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                              "billhook.workers = 2", "billhook.poll_interval = '60s'")
        with cluster.connect("postgres") as conn:
            conn.execute("CREATE EXTENSION billhook")
            first = running_members(conn, 2)
            for n in range(2):  # ids of both parities: one webhook per worker while there are two
                create_webhook(conn, 1, receiver.url(f"/reload{n}"), ["customer.created"])

            cluster.configure(workers=1)
            # workers() lists the configured places only: the second worker's end shows in the
            # server's processes and log.
            backends = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'"
            ended = "billhook delivery worker 1 of database 1 in billhook.databases ends"
            assert wait_until(lambda: ended in cluster.server_log(), 10), "the second worker ends"
            assert wait_until(lambda: conn.execute(backends).fetchall() == [(first[0],)], 10), \
                "the first worker stays"
            assert running_members(conn, 1) == {0: first[0]}
            assert conn.execute("SELECT count(*) FROM billhook.workers() WHERE database = 'postgres'").fetchone()[0] == 1
            conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('one worker')")
            for n in range(2):
                assert len(receiver.wait_for(f"/reload{n}", 1, timeout=5)) == 1, "the one worker sends for both"

            cluster.configure(workers=3)
            again = running_members(conn, 3)
            assert again[0] == first[0]
            conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('three workers')")
            for n in range(2):
                assert len(receiver.wait_for(f"/reload{n}", 2, timeout=5)) == 2
    finally:
        receiver.close()
