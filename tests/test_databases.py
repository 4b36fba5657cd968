"""billhook.databases: one worker per database, each on its own: another database's dead endpoint,
dropped extension or removal from the list never touches it."""

import json

from helpers import create_webhook, wait_until
from receiver import Receiver, Response


def running_worker(conn):
    """This database's worker pid, once it runs there."""
    return wait_until(lambda: conn.execute("SELECT pid FROM billhook.worker_status() WHERE running").fetchone(), 30)


def add_customer(conn, name):
    conn.execute("INSERT INTO billhook.customers (company_name) VALUES (%s)", (name,))


def pushed_names(receiver, path):
    return [json.loads(r.body)["entity"]["company_name"] for r in receiver.received(path)]


def test_each_database_has_a_worker_of_its_own(own_cluster):
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.databases = 'shop_one, shop_two, shop_later'",
                              "billhook.allow_private_targets = on", "billhook.poll_interval = '200ms'",
                              "billhook.retry_schedule = '" + ",".join(["200ms"] * 50) + "'")
        cluster.create_database("shop_one")
        cluster.create_database("shop_two")
        with cluster.connect("shop_one") as one, cluster.connect("shop_two") as two:
            pid_one, pid_two = running_worker(one)[0], running_worker(two)[0]
            assert pid_one != pid_two
            assert cluster.connect("postgres").execute(
                "SELECT datname FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker' AND datname IS NOT NULL"
                " ORDER BY datname").fetchall() == [("shop_one",), ("shop_two",)]
            workers = one.execute("SELECT database, running FROM billhook.workers()").fetchall()
            assert workers == [("shop_one", True), ("shop_two", True), ("shop_later", False)]

            # shop_one's endpoint fails every push; shop_two's deliveries go out all the same.
            receiver.plan("/one", *[Response(500)] * 1000)
            create_webhook(one, 1, receiver.url("/one"), ["customer"])
            create_webhook(two, 1, receiver.url("/two"), ["customer"])
            for i in range(5):
                add_customer(one, f"one {i}")
            for i in range(20):
                add_customer(two, f"two {i}")
            receiver.wait_for("/two", 20)
            assert sorted(pushed_names(receiver, "/two")) == sorted(f"two {i}" for i in range(20))
            assert wait_until(lambda: one.execute(
                "SELECT count(*) FROM billhook.deliveries WHERE attempts >= 2 AND status = 'pending'").fetchone()[0] == 5)
            assert set(pushed_names(receiver, "/one")) == {f"one {i}" for i in range(5)}

            # shop_one drops billhook: shop_two's worker neither stops nor restarts.
            one.execute("DROP EXTENSION billhook CASCADE")
            add_customer(two, "after the drop")
            receiver.wait_for("/two", 21)
            assert pushed_names(receiver, "/two")[-1] == "after the drop"
            assert running_worker(two)[0] == pid_two

            # A database created later gets its worker.
            cluster.create_database("shop_later")
            with cluster.connect("shop_later") as later:
                running_worker(later)
                create_webhook(later, 1, receiver.url("/later"), ["customer"])
                add_customer(later, "later")
                receiver.wait_for("/later", 1)

            # Out of the list: its worker ends, the others stay; commits keep recording events,
            # delivered once the database is back in the list.
            cluster.configure(databases="shop_one, shop_two")
            assert wait_until(lambda: cluster.connect("postgres").execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop_later'"
                " AND backend_type = 'billhook delivery worker'").fetchone()[0] == 0)
            with cluster.connect("shop_later") as later:
                assert later.execute("SELECT running, database FROM billhook.worker_status()").fetchone() == \
                    (False, "shop_one,shop_two")
                add_customer(later, "while away")
                cluster.configure(databases="shop_one, shop_two, shop_later")
                running_worker(later)
                receiver.wait_for("/later", 2)
                assert pushed_names(receiver, "/later") == ["later", "while away"]
            assert running_worker(two)[0] == pid_two
            assert "billhook delivery worker 0 of database 3 in billhook.databases ends" in cluster.server_log()
    finally:
        receiver.close()


def test_a_database_without_a_free_background_worker_is_warned_about(own_cluster):
    # max_worker_processes = 3 leaves no room for the last databases' workers: said once each.
    cluster = own_cluster("billhook.databases = 'postgres, shop_a, shop_b, shop_c'", "max_worker_processes = 3",
                          "billhook.poll_interval = '200ms'")
    assert wait_until(lambda: "could not start delivery worker 0 for database \"shop_c\"" in cluster.server_log(), 15)
    assert cluster.server_log().count("could not start delivery worker 0 for database \"shop_c\"") == 1
