"""A database restored from pg_dump the way docs/operations.md says (a replica session) picks the fan-out up where
the dumped one left it: events the dumping cluster had fanned out come with their deliveries and
are not fanned out again; the others get theirs after the restore, once, under the Idempotency-Keys
the dumping cluster would have given them, whichever of events and progress the restore loads first."""

import json
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


def test_events_restored_before_their_fan_out_are_pushed_after_it_once_under_their_keys(own_cluster):
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.database = 'restored'", "billhook.allow_private_targets = on",
                              "billhook.poll_interval = '200ms'")
        cluster.create_database("origin")  # no worker: nothing is pushed before the dump
        cluster.create_database("restored", with_extension=False)
        with cluster.connect("origin") as origin:
            hook = create_webhook(origin, 1, receiver.url("/restored"), ["customer"])[0]
            keys = stop_the_fan_out_half_way(origin, hook)
            assert origin.execute("SELECT count(*) FROM billhook.deliveries").fetchone()[0] == 2

        dump_and_restore(cluster, "origin", "restored")

        receiver.wait_for("/restored", 4)
        time.sleep(1.5)  # several rounds of the worker: nothing more comes
        pushed = sorted((json.loads(push.body)["entity"]["company_name"], push.headers["idempotency-key"])
                        for push in receiver.received("/restored"))
        with cluster.connect("restored") as restored:
            state = {table: restored.execute(f"SELECT * FROM billhook.{table}").fetchall()
                     for table in ("deliveries", "fan_out_owed", "restored_events", "fan_out_state", "outbox_partitions")}
        assert pushed == sorted(keys.items()), state
        with cluster.connect("restored") as restored:
            assert restored.execute("SELECT count(*), count(DISTINCT event_id) FROM billhook.deliveries"
                                    " WHERE status = 'succeeded'").fetchone() == (4, 4)
            assert restored.execute("SELECT count(*) FROM billhook.restored_events"
                                    " WHERE transaction_id IS NOT NULL").fetchone()[0] == 0, "every event judged"
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
        cluster = own_cluster("billhook.database = 'restored'", "billhook.allow_private_targets = on",
                              "billhook.poll_interval = '200ms'")
        cluster.create_database("origin")
        cluster.create_database("restored", with_extension=False)
        with cluster.connect("origin") as origin:
            hook = create_webhook(origin, 1, receiver.url("/late-webhooks"), ["customer"])[0]
            keys = stop_the_fan_out_half_way(origin, hook)

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

        receiver.wait_for("/late-webhooks", 4)
        time.sleep(1.0)
        pushed = sorted((json.loads(push.body)["entity"]["company_name"], push.headers["idempotency-key"])
                        for push in receiver.received("/late-webhooks"))
        assert pushed == sorted(keys.items())
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
