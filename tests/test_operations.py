"""Operational events (category operations: webhook.failing, webhook.disabled, delivery.exhausted):
written by the worker when a webhook starts failing, is disabled or exhausts a delivery's retries,
delivered to the webhooks that subscribe to them (never to the webhook they are about), and
announced with NOTIFY billhook_operations. End to end, at a real receiver."""

import json

from helpers import customer, wait_until
from receiver import Response


def create(db, admin, url, events, **options):
    extra = "".join(f", {name} => %s" for name in options)
    return db.execute(f"SELECT id FROM billhook.create_webhook(%s, %s, %s, verify => false{extra})",
                      (url, events, admin, *options.values())).fetchone()[0]


def test_operational_events_go_to_their_subscribers_never_to_the_webhook_they_are_about(
        cluster, worker_db, worker_admin, receiver):
    cluster.configure(failing_after_failures=2)
    listener = cluster.connect("billhook_worker")
    listener.execute("LISTEN billhook_operations")
    try:
        receiver.plan("/ops-failing", *[Response(500, b"down")] * 10)
        receiver.plan("/ops-gone", Response(410))
        receiver.plan("/ops-broken", *[Response(503)] * 20)
        ops = create(worker_db, worker_admin, receiver.url("/ops"), ["operations"])
        # It takes webhook.failing events itself, but none about itself.
        failing = create(worker_db, worker_admin, receiver.url("/ops-failing"), ["customer.created", "webhook.failing"],
                         retry_schedule="100ms")
        gone = create(worker_db, worker_admin, receiver.url("/ops-gone"), ["customer.created"])
        everything = create(worker_db, worker_admin, receiver.url("/ops-everything"), ["*"])
        # Its own pushes of operational events fail for good: no delivery.exhausted about those.
        broken = create(worker_db, worker_admin, receiver.url("/ops-broken"), ["webhook.disabled"],
                        retry_schedule="")
        c = customer(worker_db, worker_admin, company_name="Operations B.V.")

        pushes = {json.loads(p.body)["action"]: json.loads(p.body) for p in receiver.wait_for("/ops", 3)}
        assert set(pushes) == {"webhook.failing", "delivery.exhausted", "webhook.disabled"}
        failing_event = pushes["webhook.failing"]
        assert (failing_event["entity_type"], failing_event["entity_id"], failing_event["state"]) == \
            ("Webhook", str(failing), "failing")
        assert failing_event["entity"]["consecutive_failures"] == 2
        assert "token" not in failing_event["entity"] and "signing_secret" not in failing_event["entity"]
        exhausted = pushes["delivery.exhausted"]
        delivery = worker_db.execute("SELECT d.id, d.idempotency_key::text FROM billhook.deliveries AS d"
                                     " JOIN billhook.events AS e ON e.id = d.event_id"
                                     " WHERE d.webhook_id = %s AND e.event_type = 'customer.created'",
                                     (failing,)).fetchone()
        assert (exhausted["entity_type"], exhausted["entity_id"], exhausted["state"]) == \
            ("Delivery", str(delivery[0]), "failed")
        assert {k: exhausted["entity"][k] for k in ("webhook_id", "event_type", "entity_type", "entity_id",
                                                     "attempts", "last_http_status", "idempotency_key")} == \
            {"webhook_id": str(failing), "event_type": "customer.created", "entity_type": "Customer",
             "entity_id": str(c), "attempts": 2, "last_http_status": 500, "idempotency_key": delivery[1]}
        disabled = pushes["webhook.disabled"]
        assert (disabled["entity_id"], disabled["state"], disabled["entity"]["enabled"]) == \
            (str(gone), "auto_disabled", False)
        assert disabled["entity"]["disabled_reason"].startswith("the endpoint answered 410 Gone")

        # /ops-broken got webhook.disabled and failed it for good; no event about that delivery, but
        # its own failing streak is news for /ops.
        assert len(receiver.wait_for("/ops-broken", 1)) == 1
        assert wait_until(lambda: worker_db.execute(
            "SELECT status FROM billhook.deliveries WHERE webhook_id = %s", (broken,)).fetchone() == ("failed",))
        assert len(receiver.wait_for("/ops", 3)) == 3
        ops_events = worker_db.execute(
            "SELECT event_type, entity_id FROM billhook.events WHERE administration_id = %s"
            " AND event_type IN ('webhook.failing', 'webhook.disabled', 'delivery.exhausted') ORDER BY id",
            (worker_admin,)).fetchall()
        assert sorted(ops_events) == sorted([("webhook.failing", failing), ("delivery.exhausted", delivery[0]),
                                             ("webhook.disabled", gone)])

        # Never to the webhook it is about, nor to one that takes "*".
        assert [json.loads(p.body)["action"] for p in receiver.received("/ops-failing")] == ["customer.created"] * 2
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries AS d JOIN billhook.events AS e"
                                 " ON e.id = d.event_id WHERE d.webhook_id = %s AND e.event_type <> 'customer.created'",
                                 (failing,)).fetchone()[0] == 0
        assert [json.loads(p.body)["action"] for p in receiver.wait_for("/ops-everything", 1)] == ["customer.created"]
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s",
                                 (everything,)).fetchone()[0] == 1

        # A LISTENing tool heard each of them at its commit.
        heard = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=3)]
        assert sorted((n["event_type"], n["entity_id"]) for n in heard) == \
            sorted((event_type, str(entity_id)) for event_type, entity_id in ops_events)
        assert all(n["administration_id"] == str(worker_admin) for n in heard)
        assert ops in [row[0] for row in worker_db.execute(
            "SELECT webhook_id FROM billhook.deliveries WHERE status = 'succeeded'").fetchall()]
    finally:
        listener.close()
        cluster.configure(failing_after_failures=None)


def test_operations_are_a_category_of_the_catalog(db):
    rows = db.execute("SELECT name, built_in FROM billhook.event_types WHERE category = 'operations'"
                      " ORDER BY name").fetchall()
    assert rows == [("delivery.exhausted", True), ("webhook.disabled", True), ("webhook.failing", True)]
    # Each once, in the catalog's order, however often the entries name them.
    for entries in (["operations"], ["operations", "webhook.failing"], ["*", "operations"]):
        subscribed = db.execute("SELECT billhook.expand_subscription(%s::text[], 'billhook')",
                                (entries,)).fetchone()[0]
        assert len(subscribed) == len(set(subscribed)), (entries, subscribed)
    assert db.execute("SELECT billhook.expand_subscription('{operations}', 'billhook')").fetchone()[0] == [
        "webhook.failing", "webhook.disabled", "delivery.exhausted"]
    assert db.execute("SELECT billhook.expand_subscription('{*}') && "
                      "'{webhook.failing, webhook.disabled, delivery.exhausted}'").fetchone()[0] is False
