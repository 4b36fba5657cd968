"""A database restored from pg_dump the way docs/operations.md says (a replica session) picks the fan-out up where
the dumped one left it: events the dumping cluster had fanned out come with their deliveries and
are not fanned out again; the others get theirs after the restore, once, under the Idempotency-Keys
the dumping cluster would have given them, whichever of events and progress the restore loads first."""

import json
import os
import queue
import subprocess
import tempfile
import threading
import time

from helpers import create_webhook, customer, dump_and_restore, fan_out, wait_until
from receiver import Receiver


def stop_the_fan_out_half_way(origin, hook):
    """Events at every stage of the fan-out: one it passed, two of a pass it stopped after the first
    (as a pass of max_events does), and one committed after that pass began. Returns each
    company's Idempotency-Key at the webhook, as the origin derives them."""
    customer(origin, 1, company_name="passed")
    fan_out(origin)
    customer(origin, 1, company_name="taken by the pass")
    customer(origin, 1, company_name="left by the pass")
    assert origin.execute("SELECT events FROM billhook.fan_out(1)").fetchone()[0] == 1
    customer(origin, 1, company_name="after the pass")
    return dict(origin.execute(
        "SELECT e.entity->>'company_name', billhook.delivery_key(s.key_namespace, e.id, %s)::text"
        " FROM billhook.events AS e CROSS JOIN billhook.fan_out_state AS s WHERE e.entity_type = 'Customer'",
        (hook,)).fetchall())


def origin_stopped_half_way(own_cluster, receiver, path):
    """A cluster whose worker serves database `restored` (empty, to restore into), and database
    `origin`, whose fan-out stopped half way (stop_the_fan_out_half_way) with no worker: nothing is
    pushed before the dump. Returns the cluster and the Idempotency-Keys the pushes are to carry."""
    cluster = own_cluster("billhook.database = 'restored'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '200ms'")
    cluster.create_database("origin")
    cluster.create_database("restored", with_extension=False)
    with cluster.connect("origin") as origin:
        hook = create_webhook(origin, 1, receiver.url(path), ["customer"])[0]
        keys = stop_the_fan_out_half_way(origin, hook)
        assert origin.execute("SELECT count(*) FROM billhook.deliveries").fetchone()[0] == 2
    return cluster, keys


def assert_pushed_once_under_their_keys(cluster, receiver, path, keys):
    receiver.wait_for(path, 4)
    time.sleep(1.5)  # several rounds of the worker: nothing more comes
    pushed = sorted((json.loads(push.body)["entity"]["company_name"], push.headers["idempotency-key"])
                    for push in receiver.received(path))
    with cluster.connect("restored") as restored:
        state = {table: restored.execute(f"SELECT * FROM billhook.{table}").fetchall()
                 for table in ("deliveries", "fan_out_owed", "restored_events", "fan_out_state", "outbox_partitions")}
        assert pushed == sorted(keys.items()), repr(state)
        assert restored.execute("SELECT count(*), count(DISTINCT event_id), count(DISTINCT id) FROM billhook.deliveries"
                                " WHERE status = 'succeeded'").fetchone() == (4, 4, 4)
        assert restored.execute("SELECT count(*) FROM billhook.restored_events"
                                " WHERE transaction_id IS NOT NULL").fetchone()[0] == 0, "every event judged"


def test_events_restored_before_their_fan_out_are_pushed_after_it_once_under_their_keys(own_cluster):
    receiver = Receiver()
    try:
        cluster, keys = origin_stopped_half_way(own_cluster, receiver, "/restored")
        dump_and_restore(cluster, "origin", "restored")
        assert_pushed_once_under_their_keys(cluster, receiver, "/restored", keys)
    finally:
        receiver.close()


def restore_stopping_before_the_sequences(cluster, source, target, meanwhile):
    """Restores pg_dump of database source into target in one replica session, as pg_restore does,
    with meanwhile() run once every row is in and before the session sets the id sequences."""
    pg_bin = os.environ["PG_BIN"]
    with tempfile.TemporaryDirectory() as directory:
        dump = os.path.join(directory, "dump")
        subprocess.run([f"{pg_bin}/pg_dump", "-Fc", "-f", dump, cluster.dsn(source)], check=True)
        script = subprocess.run([f"{pg_bin}/pg_restore", "-f", "-", dump], check=True, capture_output=True,
                                text=True).stdout
        rows_in = script.index("SELECT pg_catalog.setval(")
        psql = subprocess.Popen([f"{pg_bin}/psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                                 "-d", cluster.dsn(target)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PGOPTIONS": "-c session_replication_role=replica"})
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in psql.stdout], daemon=True).start()
        try:
            # The script allows SQL only (pg_dump's \restrict): a query tells where it has got to.
            psql.stdin.write(script[:rows_in] + "SELECT 'rows in';\n")
            psql.stdin.flush()
            while lines.get(timeout=30) != "rows in\n":
                pass
            meanwhile()
            psql.stdin.write(script[rows_in:])
            psql.stdin.close()
            assert psql.wait(30) == 0
        finally:
            psql.kill()
            psql.wait()


def test_a_worker_serving_the_database_holds_back_until_the_restoring_session_ends(own_cluster):
    """pg_restore sets the id sequences after every row is in: a delivery the worker made in between
    would take a restored delivery's id (and its ON CONFLICT DO NOTHING drop it), an attempt one the
    sequence hands out again. From the session's first row in billhook's tables to its end the
    worker does nothing in the database, says so, and then pushes all, once, under their keys."""
    receiver = Receiver()
    try:
        cluster, keys = origin_stopped_half_way(own_cluster, receiver, "/held-back")

        def meanwhile():
            with cluster.connect("restored") as restored:
                restored.execute("SELECT billhook.wake_worker_at_commit()")
                # Rounds enough for the worker to push the restored deliveries and make the owed ones.
                time.sleep(2)
                assert receiver.received("/held-back") == []
                assert restored.execute("SELECT count(*) FROM billhook.deliveries").fetchone()[0] == 2
                assert restored.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'userlock' AND mode = 'ShareLock'"
                    " AND (classid, objid, objsubid) = (1651076204, 1752133483, 0)").fetchone()[0] == 1
            assert "billhook delivery worker holds back while a restore into this database is loading" \
                in cluster.server_log()

        restore_stopping_before_the_sequences(cluster, "origin", "restored", meanwhile)

        # No SQL function takes the lock: advisory locks on its keys hold nothing back.
        with cluster.connect("restored") as anyone:
            anyone.execute("SELECT pg_advisory_lock_shared(1651076204, 1752133483),"
                           " pg_advisory_lock(1651076204, 1752133483), pg_advisory_lock_shared(7091318301135957867)")
            assert_pushed_once_under_their_keys(cluster, receiver, "/held-back", keys)
        assert "billhook delivery worker goes on: no restore into this database is loading" in cluster.server_log()
    finally:
        receiver.close()


def test_a_restore_that_loads_the_fan_out_progress_before_the_events_judges_them_alike(cluster):
    cluster.create_database("billhook_restore_origin")
    cluster.create_database("billhook_restore_target", with_extension=False)
    with cluster.connect("billhook_restore_origin") as origin:
        hook = create_webhook(origin, 1, "https://receiver.example/hook", ["customer"])[0]
        keys = stop_the_fan_out_half_way(origin, hook)

    dump_and_restore(cluster, "billhook_restore_origin", "billhook_restore_target", before=("fan_out_state", "events_0"))

    with cluster.connect("billhook_restore_target") as target:
        restored = "SELECT e.entity->>'company_name', d.idempotency_key::text FROM billhook.deliveries AS d" \
                   " JOIN billhook.events AS e ON e.id = d.event_id ORDER BY 1"
        assert dict(target.execute(restored).fetchall()) == {name: keys[name] for name in ("passed", "taken by the pass")}
        fan_out(target)
        assert dict(target.execute(restored).fetchall()) == keys
        fan_out(target)
        assert target.execute("SELECT count(*) FROM billhook.deliveries").fetchone()[0] == 4
    with cluster.connect("postgres") as conn:
        conn.execute("DROP DATABASE billhook_restore_target")
        conn.execute("DROP DATABASE billhook_restore_origin")


def test_webhooks_restored_after_the_worker_fanned_out_their_events_are_owed_them(own_cluster):
    """A worker already serving the database being restored may run its fan-out after the events and
    the progress are loaded and before the webhooks are: the events it could not give deliveries
    then are owed them, and pushed, under their keys, once the webhooks arrive."""
    receiver = Receiver()
    try:
        cluster, keys = origin_stopped_half_way(own_cluster, receiver, "/late-webhooks")

        def worker_passes():
            with cluster.connect("restored") as restored:
                restored.execute("SELECT billhook.wake_worker_at_commit()")
                # The worker's fan-out passed every restored event, with no webhook there yet.
                assert wait_until(lambda: restored.execute(
                    "SELECT bool_and(pg_visible_in_snapshot(e.transaction_id, s.done))"
                    " FROM billhook.events AS e CROSS JOIN billhook.fan_out_state AS s").fetchone()[0], timeout=10)
                time.sleep(0.5)
                assert restored.execute("SELECT count(*) FROM billhook.webhooks").fetchone()[0] == 0

        dump_and_restore(cluster, "origin", "restored", held_back="webhooks", meanwhile=worker_passes)

        assert_pushed_once_under_their_keys(cluster, receiver, "/late-webhooks", keys)
        with cluster.connect("restored") as restored:
            assert restored.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 0
    finally:
        receiver.close()


def test_a_parallel_restore_loading_webhooks_and_events_at_once_owes_every_delivery(cluster):
    """pg_restore -j loads webhooks and events in sessions of their own: the event's judgment and
    the webhook's arrival must see each other, whichever commits first."""
    import threading

    cluster.create_database("billhook_parallel_restore")
    try:
        with cluster.connect("billhook_parallel_restore") as setup:
            setup.execute("SET session_replication_role = replica")
            # The dump's progress: events of transactions from 100 on had not been fanned out.
            setup.execute("INSERT INTO billhook.fan_out_state (singleton, done, after_transaction_id, after_event_id,"
                          " key_namespace) VALUES (true, '100:100:', '0', 0, gen_random_uuid())")
        with cluster.connect("billhook_parallel_restore") as webhooks, \
                cluster.connect("billhook_parallel_restore") as events:
            for conn in (webhooks, events):
                conn.execute("SET session_replication_role = replica")
            webhooks.execute("BEGIN")
            webhooks.execute("INSERT INTO billhook.webhooks (id, administration_id, url, enabled_events,"
                             " subscribed_events) VALUES (7, 1, 'https://receiver.example/hook', '{customer}',"
                             " '{customer.created}')")

            def load_events():
                events.execute("INSERT INTO billhook.events (id, administration_id, event_type, entity_type,"
                               " entity_id, entity, transaction_id) VALUES (5, 1, 'customer.created', 'Customer', 9,"
                               " '{\"id\": \"9\"}', '150')")

            loading = threading.Thread(target=load_events)
            loading.start()
            time.sleep(0.5)
            webhooks.execute("COMMIT")
            loading.join(10)
            assert not loading.is_alive()
        with cluster.connect("billhook_parallel_restore") as conn:
            assert conn.execute("SELECT event_id, webhook_id FROM billhook.fan_out_owed").fetchall() == [(5, 7)]
    finally:
        with cluster.connect("postgres") as conn:
            conn.execute("DROP DATABASE billhook_parallel_restore")


def test_a_dumped_debt_survives_a_worker_pass_before_its_webhook_is_restored(own_cluster):
    """A delivery the dumping cluster owed (its webhook was locked when the event was fanned out)
    is made after the restore, even though a worker pass ran before the webhooks were loaded."""
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.database = 'restored'", "billhook.allow_private_targets = on",
                              "billhook.poll_interval = '200ms'")
        cluster.create_database("origin")
        cluster.create_database("restored", with_extension=False)
        with cluster.connect("origin") as origin, cluster.connect("origin") as locker:
            hook = create_webhook(origin, 1, receiver.url("/dumped-debt"), ["customer"])[0]
            locker.execute("BEGIN")
            locker.execute("SELECT 1 FROM billhook.webhooks WHERE id = %s FOR UPDATE", (hook,))
            customer(origin, 1, company_name="owed at the dump")
            assert origin.execute("SELECT owed FROM billhook.fan_out()").fetchone()[0] == 1
            locker.execute("COMMIT")

        def worker_passes():
            with cluster.connect("restored") as restored:
                restored.execute("SELECT billhook.wake_worker_at_commit()")
                time.sleep(1.5)
                assert restored.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 1

        dump_and_restore(cluster, "origin", "restored", held_back="webhooks", meanwhile=worker_passes)
        [push] = receiver.wait_for("/dumped-debt", 1)
        assert json.loads(push.body)["entity"]["company_name"] == "owed at the dump"
    finally:
        receiver.close()


def test_every_table_a_dump_carries_holds_the_workers_back_from_a_replica_sessions_first_row(cluster):
    """Every table registered with pg_extension_config_dump, and the partitions of a window made
    after the install, fire the trigger in replica sessions only; the session holds the lock from
    its first row, through a rollback, to its end."""
    cluster.create_database("billhook_hold_back")
    try:
        with cluster.connect("billhook_hold_back") as conn:
            conn.execute("SELECT billhook.add_outbox_window(1)")
            # Each table's trigger: whether it is enabled in replica sessions only, fires for each row
            # (tgtype bit 1), and which replica or always BEFORE INSERT row triggers fire before it.
            dumped = conn.execute("""
                WITH tables AS (
                    SELECT c.oid, c.relname, c.relkind
                    FROM pg_extension AS e CROSS JOIN LATERAL unnest(e.extconfig) AS x(oid)
                    JOIN pg_class AS c ON c.oid = x.oid
                    WHERE e.extname = 'billhook' AND c.relkind IN ('r', 'p')
                    UNION
                    SELECT c.oid, c.relname, c.relkind FROM pg_class AS c
                    WHERE c.relname IN ('events_1', 'deliveries_1', 'delivery_attempts_1')
                      AND c.relnamespace = 'billhook'::regnamespace)
                SELECT t.relname, h.tgenabled, (h.tgtype & 1) = 1,
                       t.relkind = 'p' OR pg_class_is_partition,
                       (SELECT array_agg(o.tgname ORDER BY o.tgname) FROM pg_trigger AS o
                        WHERE o.tgrelid = t.oid AND o.tgname < 'hold_back_workers' AND o.tgenabled IN ('R', 'A')
                          AND (o.tgtype & 1) = 1 AND (o.tgtype & 2) = 2 AND (o.tgtype & 4) = 4)
                FROM tables AS t
                CROSS JOIN LATERAL (SELECT c.relispartition AS pg_class_is_partition FROM pg_class AS c
                                    WHERE c.oid = t.oid) AS p
                LEFT JOIN pg_trigger AS h ON h.tgrelid = t.oid AND h.tgname = 'hold_back_workers'""").fetchall()
            assert len(dumped) >= 20 and {row[0] for row in dumped} >= {
                "webhooks", "events", "deliveries", "delivery_attempts", "events_0", "deliveries_1", "fan_out_state",
                "webhook_health_log", "outbox_partitions", "tracked_tables", "customers", "invoices"}
            assert [row for row in dumped if row[1] != "R" or row[2] != row[3] or row[4] is not None] == []

        def holders(conn):
            return conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'userlock' AND mode = 'ShareLock'"
                " AND (classid, objid, objsubid) = (1651076204, 1752133483, 0)"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()[0]

        with cluster.connect("billhook_hold_back") as conn, cluster.connect("billhook_hold_back") as restoring:
            conn.execute("INSERT INTO billhook.administrations (name) VALUES ('not a restore')")
            assert holders(conn) == 0
            restoring.execute("SET session_replication_role = replica")
            restoring.execute("SELECT * FROM billhook.webhooks")
            assert holders(conn) == 0
            restoring.execute("BEGIN")
            restoring.execute("INSERT INTO billhook.administrations (name) VALUES ('restored'), ('restored too')")
            restoring.execute("ROLLBACK")
            assert holders(conn) == 1
        with cluster.connect("billhook_hold_back") as conn:
            assert wait_until(lambda: holders(conn) == 0, timeout=5), "released as the session ends"
    finally:
        with cluster.connect("postgres") as conn:
            conn.execute("DROP DATABASE billhook_hold_back WITH (FORCE)")


def test_restore_triggers_enabled_for_every_session_neither_hold_back_the_worker_nor_lose_events(own_cluster):
    """`ALTER TABLE … DISABLE TRIGGER USER` and `ENABLE TRIGGER USER` around a bulk load (make bench
    did so) enable billhook's replica triggers for every session. An application's session writing
    invoices must then neither hold the worker back while it stays open nor have its events taken
    for restored ones (which the fan-out never takes): the triggers act in replica sessions alone."""
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                              "billhook.poll_interval = '200ms'")
        with cluster.connect("postgres") as conn:
            conn.execute("CREATE EXTENSION billhook")
            create_webhook(conn, 1, receiver.url("/enabled"), ["customer"])
            for table in ("customers", "events"):
                conn.execute(f"ALTER TABLE billhook.{table} DISABLE TRIGGER USER")
                conn.execute(f"ALTER TABLE billhook.{table} ENABLE TRIGGER USER")
            assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname IN ('hold_back_workers',"
                                " 'mark_event_restored') AND tgenabled = 'O'").fetchone()[0] >= 2
            with cluster.connect("postgres") as application:
                first = customer(application, 1)
                # The session stays open, as an application's pooled connection does.
                assert len(receiver.wait_for("/enabled", 1, timeout=10)) == 1, "the worker was held back"
                customer(application, 1)
                pushes = receiver.wait_for("/enabled", 2, timeout=10)
                assert [json.loads(push.body)["entity"]["id"] for push in pushes][:1] == [str(first)]
                assert application.execute("SELECT count(*) FROM billhook.events WHERE transaction_id = '0'"
                                           ).fetchone()[0] == 0
        assert "holds back" not in cluster.server_log()
    finally:
        receiver.close()
