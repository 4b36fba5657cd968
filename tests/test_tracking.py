"""Events of the application's own tables: registered event types (billhook.register_event_type)."""

import json

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from helpers import create_webhook, wait_until, webhook


def registered(db, name):
    return db.execute("SELECT category, description, built_in FROM billhook.event_types WHERE name = %s",
                      (name,)).fetchone()


@pytest.fixture
def order_types(db):
    """order.created and order.shipped, registered for one test (the catalog is the database's)."""
    db.execute("SELECT billhook.register_event_type('order.created', 'order', 'An order is placed')")
    db.execute("SELECT billhook.register_event_type('order.shipped', 'order')")
    yield
    db.execute("DELETE FROM billhook.webhooks WHERE 'order' = ANY (enabled_events)"
               " OR 'order.shipped' = ANY (enabled_events)")
    db.execute("DELETE FROM billhook.event_types WHERE category = 'order'")


def test_registered_types_join_subscriptions_by_name_category_and_wildcard(db, admin, order_types):
    assert registered(db, "order.created") == ("order", "An order is placed", False)
    assert registered(db, "order.shipped") == ("order", "", False)
    by_category = webhook(db, admin, ["order"])
    by_name = webhook(db, admin, ["invoice.paid", "order.shipped"])
    subscribed = lambda hook: db.execute("SELECT subscribed_events FROM billhook.webhooks WHERE id = %s",
                                         (hook,)).fetchone()[0]
    assert subscribed(by_category) == ["order.created", "order.shipped"]
    assert subscribed(by_name) == ["invoice.paid", "order.shipped"]


def test_a_wildcard_webhook_takes_in_a_type_registered_after_it(db, admin):
    everything = webhook(db, admin, ["*"])
    try:
        db.execute("SELECT billhook.register_event_type('parcel.sent', 'parcel')")
        events = db.execute("SELECT subscribed_events FROM billhook.webhooks WHERE id = %s", (everything,)).fetchone()[0]
        assert len(events) == 26 and events[-1] == "parcel.sent"
    finally:
        db.execute("DELETE FROM billhook.webhooks WHERE id = %s", (everything,))
        db.execute("DELETE FROM billhook.event_types WHERE name = 'parcel.sent'")


@pytest.mark.parametrize("name, category", [
    ("order", "order"), ("Order.created", "Order"), ("order.created", "orders"), ("order.a.b", "order"),
    ("invoice.archived", "invoice"), ("estimate.x", "estimate"), ("delivery.retried", "delivery"),
    ("webhook.pinged", "webhook"),
])
def test_a_bad_name_or_a_taken_category_is_22023_and_nothing_is_registered(db, name, category):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        db.execute("SELECT billhook.register_event_type(%s, %s)", (name, category))
    assert raised.value.diag.message_primary.startswith(f'event type "{name}" in category "{category}" cannot be')
    assert "order.shipped" in raised.value.diag.message_hint
    assert registered(db, name) is None


def test_a_name_registered_twice_is_42710(db, order_types):
    with pytest.raises(psycopg.errors.DuplicateObject) as raised:
        db.execute("SELECT billhook.register_event_type('order.created', 'order', 'again')")
    assert raised.value.diag.message_primary == 'event type "order.created" exists'
    assert registered(db, "order.created") == ("order", "An order is placed", False)


def test_a_direct_insert_is_checked_like_a_registration(db):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("INSERT INTO billhook.event_types (name, category, description) VALUES ('invoice.x', 'invoice', '')")


@pytest.mark.parametrize("change", [
    "DELETE FROM billhook.event_types WHERE name = 'invoice.paid'",
    "UPDATE billhook.event_types SET description = 'mine' WHERE name = 'invoice.paid'",
    "UPDATE billhook.event_types SET built_in = false WHERE name = 'invoice.paid'",
    "TRUNCATE billhook.event_types CASCADE",
])
def test_the_built_in_types_cannot_be_changed_or_removed(db, change):
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        db.execute(change)
    assert db.execute("SELECT count(*) FROM billhook.event_types WHERE built_in").fetchone()[0] == 28, "25 of the invoicing schema, 3 operational"
    assert registered(db, "invoice.paid")[1] == "An invoice is marked as paid"


@pytest.fixture
def orders(worker_db):
    """app.orders, tracked as Order in category "order"; dropped (and so untracked) afterwards."""
    worker_db.execute("CREATE SCHEMA IF NOT EXISTS app")
    worker_db.execute("CREATE TABLE app.orders (id bigserial PRIMARY KEY, tenant bigint NOT NULL, status text NOT NULL"
                      " DEFAULT 'new', total numeric NOT NULL DEFAULT 0, card_token text)")
    worker_db.execute("SELECT billhook.track_table('app.orders', 'Order', 'order', administration_column => 'tenant',"
                      " state_column => 'status', state_events => '{\"shipped\": \"order.shipped\"}',"
                      " excluded_columns => '{card_token}')")
    yield
    worker_db.execute("DROP TABLE app.orders")
    worker_db.execute("DELETE FROM billhook.webhooks WHERE 'order' = ANY (enabled_events)")


def test_a_tracked_table_emits_its_net_events_to_subscribers_of_its_category(worker_db, worker_admin, receiver, orders):
    hook, _, secret = create_webhook(worker_db, worker_admin, receiver.url("/orders"), ["order"])
    with worker_db.transaction():
        placed = worker_db.execute("INSERT INTO app.orders (tenant, total, card_token) VALUES (%s, 10, 'tok_secret')"
                                   " RETURNING id", (worker_admin,)).fetchone()[0]
        worker_db.execute("UPDATE app.orders SET total = 12 WHERE id = %s", (placed,))
    with worker_db.transaction():
        worker_db.execute("UPDATE app.orders SET status = 'packed' WHERE id = %s", (placed,))
        worker_db.execute("UPDATE app.orders SET status = 'shipped' WHERE id = %s", (placed,))
    with pytest.raises(psycopg.errors.RaiseException):
        with worker_db.transaction():
            worker_db.execute("DELETE FROM app.orders WHERE id = %s", (placed,))
            worker_db.execute("DO $$ BEGIN RAISE EXCEPTION 'rolled back'; END $$")
    worker_db.execute("DELETE FROM app.orders WHERE id = %s", (placed,))
    received = receiver.wait_for("/orders", 4)
    # Signed like every push: the standardwebhooks library verifies each.
    assert all(Webhook(secret).verify(p.body, dict(p.headers)) for p in received)
    pushes = sorted((json.loads(p.body) for p in received), key=lambda p: int(p["event_id"]))
    assert [(p["action"], p["state"], p["entity_type"], p["entity_id"]) for p in pushes] == [
        ("order.created", "new", "Order", str(placed)),
        ("order.updated", "shipped", "Order", str(placed)),
        ("order.shipped", "shipped", "Order", str(placed)),
        ("order.deleted", "shipped", "Order", str(placed)),
    ]
    assert pushes[0]["entity"] == {"id": placed, "tenant": worker_admin, "status": "new", "total": 12}
    assert all("card_token" not in p["entity"] for p in pushes)
    assert all(p["administration_id"] == str(worker_admin) for p in pushes)
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                                " AND status = 'succeeded'", (hook,)).fetchone()[0] == 4)
    assert worker_db.execute("SELECT previous_state FROM billhook.events WHERE event_type = 'order.shipped'"
                             " AND entity_id = %s", (placed,)).fetchone()[0] == "new"


def test_a_renamed_tracked_table_stays_tracked(worker_db, worker_admin, orders):
    before = worker_db.execute("SELECT coalesce(max(id), 0) FROM billhook.events").fetchone()[0]
    worker_db.execute("ALTER TABLE app.orders RENAME TO purchase_orders")
    try:
        placed = worker_db.execute("INSERT INTO app.purchase_orders (tenant) VALUES (%s) RETURNING id",
                                   (worker_admin,)).fetchone()[0]
        assert worker_db.execute("SELECT relation::text FROM billhook.tracked_tables").fetchone()[0] == "app.purchase_orders"
    finally:
        worker_db.execute("ALTER TABLE app.purchase_orders RENAME TO orders")
    assert worker_db.execute("SELECT event_type FROM billhook.events WHERE id > %s AND entity_type = 'Order'"
                             " AND entity_id = %s", (before, placed)).fetchall() == [("order.created",)]


def test_track_table_registers_the_events_of_its_category(worker_db, orders):
    names = worker_db.execute("SELECT name, description FROM billhook.event_types WHERE category = 'order'"
                              " ORDER BY name").fetchall()
    assert names == [("order.created", "Order created"), ("order.deleted", "Order deleted"),
                     ("order.shipped", "Order moves to shipped"), ("order.updated", "Order updated")]


def test_untracking_and_dropping_stop_the_events(worker_db, worker_admin, orders):
    worker_db.execute("SELECT billhook.untrack_table('app.orders')")
    before = worker_db.execute("SELECT count(*) FROM billhook.events").fetchone()[0]
    worker_db.execute("INSERT INTO app.orders (tenant) VALUES (%s)", (worker_admin,))
    assert worker_db.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == before
    with pytest.raises(psycopg.errors.UndefinedObject):
        worker_db.execute("SELECT billhook.untrack_table('app.orders')")
    worker_db.execute("SELECT billhook.track_table('app.orders', 'Order', 'order')")
    worker_db.execute("DROP TABLE app.orders")
    assert worker_db.execute("SELECT count(*) FROM billhook.tracked_tables").fetchone()[0] == 0
    worker_db.execute("CREATE TABLE app.orders (id bigint PRIMARY KEY, tenant bigint)")  # for the fixture's DROP


@pytest.mark.parametrize("call, sqlstate", [
    ("SELECT billhook.track_table('app.plain', 'Plain', 'plain', id_column => 'nope')", "42703"),
    ("SELECT billhook.track_table('app.plain', 'Plain', 'plain', id_column => 'code')", "42P10"),
    ("SELECT billhook.track_table('app.plain', 'Plain', 'plain', id_column => 'label')", "42804"),
    ("SELECT billhook.track_table('app.plain', 'Invoice', 'plain')", "42710"),
    ("SELECT billhook.track_table('app.plain', 'Plain', 'invoice')", "22023"),
    ("SELECT billhook.track_table('app.plain', 'Plain', 'plain', state_column => 'label',"
     " state_events => '{\"x\": \"other.x\"}')", "22023"),
    ("SELECT billhook.track_table('app.plain', 'Plain', 'plain', excluded_columns => '{id}')", "22023"),
    ("SELECT billhook.track_table('billhook.customers', 'Plain', 'plain')", "42809"),
])
def test_bad_tracking_is_a_clear_error_with_nothing_half_registered(db, call, sqlstate):
    db.execute("CREATE SCHEMA IF NOT EXISTS app")
    db.execute("CREATE TABLE app.plain (id bigint PRIMARY KEY, code int, label text)")
    try:
        with pytest.raises(psycopg.Error) as raised:
            db.execute(call)
        assert raised.value.sqlstate == sqlstate, raised.value.diag.message_primary
        assert db.execute("SELECT count(*) FROM billhook.event_types WHERE category = 'plain'").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM billhook.tracked_tables").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.plain'::regclass").fetchone()[0] == 0
    finally:
        db.execute("DROP TABLE app.plain")


def test_tracking_twice_is_42710(worker_db, orders):
    with pytest.raises(psycopg.errors.DuplicateObject):
        worker_db.execute("SELECT billhook.track_table('app.orders', 'Order2', 'order2')")
