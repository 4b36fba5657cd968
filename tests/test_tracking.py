"""Events of the application's own tables: registered event types (billhook.register_event_type)."""

import psycopg
import pytest

from helpers import webhook


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
    ("invoice.archived", "invoice"), ("estimate.x", "estimate"),
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
    assert db.execute("SELECT count(*) FROM billhook.event_types WHERE built_in").fetchone()[0] == 25
    assert registered(db, "invoice.paid")[1] == "An invoice is marked as paid"
