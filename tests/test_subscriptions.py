"""What a webhook subscribes to beyond event names, and what billhook keeps of what it sent: filters
(SQL/JSON path predicates applied at fan-out), thin payloads, and erasure of an entity's stored JSON
and response bodies. End to end, at a real receiver."""

import json

import psycopg
import pytest
from psycopg import errors
from standardwebhooks.webhooks import Webhook

from helpers import customer, invoice, quotation, wait_until
from receiver import Response

BIG_EURO_INVOICES = '$.entity.total_price_incl_tax.double() > 1000 && $.entity.currency == "EUR"'


def filtered_webhook(db, admin, url, events, filter_, **options):
    extra = "".join(f", {name} => %s" for name in options)
    return db.execute(f"SELECT id FROM billhook.create_webhook(%s, %s, %s, verify => false, filter => %s{extra})",
                      (url, events, admin, filter_, *options.values())).fetchone()[0]


def delivered_invoices(db, hook):
    """The entity ids of a webhook's deliveries, in event order."""
    return [row[0] for row in db.execute(
        "SELECT e.entity_id FROM billhook.deliveries AS d JOIN billhook.events AS e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s ORDER BY e.id", (hook,)).fetchall()]


def test_a_filter_lets_only_matching_events_through_and_a_changed_filter_applies_to_new_events(
        worker_db, worker_admin, receiver):
    c = customer(worker_db, worker_admin)
    filtered = filtered_webhook(worker_db, worker_admin, receiver.url("/filtered"), ["invoice.created"],
                                BIG_EURO_INVOICES)
    everything = filtered_webhook(worker_db, worker_admin, receiver.url("/unfiltered"), ["invoice.created"], None)
    big_euro = invoice(worker_db, worker_admin, c, lines=[("Project X", 10, 300, 21)])
    small_euro = invoice(worker_db, worker_admin, c, lines=[("Project X", 1, 300, 21)])
    big_dollar = invoice(worker_db, worker_admin, c, lines=[("Project X", 10, 300, 21)], currency="USD")
    assert len(receiver.wait_for("/unfiltered", 3)) == 3
    [push] = receiver.wait_for("/filtered", 1)
    assert json.loads(push.body)["entity_id"] == str(big_euro)
    assert json.loads(push.body)["entity"]["total_price_incl_tax"] == "3630.00"
    assert delivered_invoices(worker_db, everything) == [big_euro, small_euro, big_dollar]
    assert delivered_invoices(worker_db, filtered) == [big_euro], "no delivery at all for the others"

    # Changed later: the new filter decides for events from then on; deliveries made stay.
    worker_db.execute("SELECT billhook.update_webhook(%s, filter => '$.entity.currency == \"USD\"')", (filtered,))
    small_dollar = invoice(worker_db, worker_admin, c, currency="USD")
    another_big_euro = invoice(worker_db, worker_admin, c, lines=[("Project Y", 10, 300, 21)])
    assert len(receiver.wait_for("/unfiltered", 5)) == 5
    assert wait_until(lambda: delivered_invoices(worker_db, filtered) == [big_euro, small_dollar])
    # '' removes it.
    worker_db.execute("SELECT billhook.update_webhook(%s, filter => '')", (filtered,))
    assert worker_db.execute("SELECT filter FROM billhook.webhooks WHERE id = %s", (filtered,)).fetchone()[0] is None
    last = invoice(worker_db, worker_admin, c, lines=[("Small", 1, 1, 0)])
    assert wait_until(lambda: delivered_invoices(worker_db, filtered) == [big_euro, small_dollar, last])
    assert another_big_euro not in delivered_invoices(worker_db, filtered)


def test_a_filter_that_fails_on_an_event_is_no_match_and_holds_up_nothing(worker_db, worker_admin, receiver):
    """.double() of a reference that is no number is an error for that event only."""
    c = customer(worker_db, worker_admin)
    hook = filtered_webhook(worker_db, worker_admin, receiver.url("/numeric-reference"), ["invoice.created"],
                            "$.entity.reference.double() > 100")
    words = invoice(worker_db, worker_admin, c, reference="Project X")
    number = invoice(worker_db, worker_admin, c, reference="2026")
    [push] = receiver.wait_for("/numeric-reference", 1)
    assert json.loads(push.body)["entity_id"] == str(number)
    assert delivered_invoices(worker_db, hook) == [number]
    assert words not in delivered_invoices(worker_db, hook)


@pytest.mark.parametrize("bad, reason", [
    ("$.entity.total ==", 'invalid filter "$.entity.total ==": syntax error at end of jsonpath input'),
    ("entity.currency == 'EUR'", "invalid filter \"entity.currency == 'EUR'\": syntax error"),
    ("$.entity.total", 'invalid filter "$."entity"."total"": not a predicate'),
])
def test_an_invalid_filter_is_22023_naming_it_and_nothing_is_saved(db, admin, bad, reason):
    with pytest.raises(errors.InvalidParameterValue) as raised:
        db.execute("SELECT billhook.create_webhook('https://receiver.example/f', NULL, %s, verify => false,"
                   " filter => %s)", (admin, bad))
    assert raised.value.diag.message_primary.startswith(reason), raised.value.diag.message_primary
    assert "$.entity.currency" in raised.value.diag.message_hint
    assert db.execute("SELECT count(*) FROM billhook.webhooks WHERE administration_id = %s", (admin,)).fetchone()[0] == 0
    hook = db.execute("SELECT id FROM billhook.create_webhook('https://receiver.example/f', NULL, %s,"
                      " verify => false, filter => '$.state == \"open\"')", (admin,)).fetchone()[0]
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT billhook.update_webhook(%s, filter => %s)", (hook, bad))
    assert db.execute("SELECT filter::text FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone()[0] == \
        '($."state" == "open")', "the old filter stays"


def test_a_thin_push_is_the_envelope_without_the_entity(worker_db, worker_admin, receiver):
    hook = filtered_webhook(worker_db, worker_admin, receiver.url("/thin"), ["customer.created"], None,
                            payload="thin")
    standard, _, secret = worker_db.execute(
        "SELECT id, token, signing_secret FROM billhook.create_webhook(%s, '{customer.created}', %s,"
        " verify => false, payload_format => 'standard', payload => 'thin')",
        (receiver.url("/thin-standard"), worker_admin)).fetchone()
    c = customer(worker_db, worker_admin, company_name="Private Person", email="person@example.org")
    [push] = receiver.wait_for("/thin", 1)
    event_id, occurred_at = worker_db.execute(
        "SELECT id, billhook.json_time(occurred_at) FROM billhook.events"
        " WHERE entity_id = %s AND event_type = 'customer.created'", (c,)).fetchone()
    token = worker_db.execute("SELECT token FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone()[0]
    assert json.loads(push.body) == {
        "administration_id": str(worker_admin), "webhook_id": str(hook), "webhook_token": token,
        "entity_type": "Customer", "entity_id": str(c), "state": None, "action": "customer.created",
        "event_id": str(event_id), "occurred_at": occurred_at}
    assert b"Private Person" not in push.body and b"person@example.org" not in push.body
    [standard_push] = receiver.wait_for("/thin-standard", 1)
    assert Webhook(secret).verify(standard_push.body, dict(standard_push.headers)) == {
        "type": "customer.created", "timestamp": occurred_at,
        "data": {"event_id": str(event_id), "administration_id": str(worker_admin), "webhook_id": str(standard),
                 "entity_type": "Customer", "entity_id": str(c), "state": None}}
    with pytest.raises(errors.InvalidParameterValue) as raised:
        worker_db.execute("SELECT billhook.update_webhook(%s, payload => 'slim')", (hook,))
    assert raised.value.diag.message_primary == 'invalid payload "slim": no such choice'
    assert raised.value.diag.message_hint == "Use one of: full, thin."


@pytest.fixture
def usage_only(cluster):
    with cluster.connect("billhook_worker") as admin_conn:
        admin_conn.execute("DROP ROLE IF EXISTS billhook_usage_only")
        admin_conn.execute("CREATE ROLE billhook_usage_only LOGIN")
        admin_conn.execute("GRANT USAGE ON SCHEMA billhook TO billhook_usage_only")
        with cluster.connect("billhook_worker", user="billhook_usage_only") as conn:
            yield conn
        admin_conn.execute("DROP OWNED BY billhook_usage_only")
        admin_conn.execute("DROP ROLE billhook_usage_only")


def test_erasure_blanks_the_entity_and_response_bodies_and_keeps_the_audit_trail(
        worker_db, worker_admin, receiver, usage_only):
    # One of Jane's two pushes (whichever arrives first) fails once; every other push succeeds.
    receiver.plan_for_body("/erasure", b"Jane Doe", Response(500, b"refused: Jane Doe <jane@example.org>"))
    receiver.plan("/erasure", *[Response(200, b"stored Jane Doe")] * 10)
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer}', %s, verify => false,"
                             " retry_schedule => '100ms')", (receiver.url("/erasure"), worker_admin)).fetchone()[0]
    jane = customer(worker_db, worker_admin, company_name="Jane Doe", email="jane@example.org")
    other = customer(worker_db, worker_admin, company_name="Other B.V.")
    worker_db.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (jane,))
    assert len(receiver.wait_for("/erasure", 4)) == 4, "three pushes, one of Jane's twice"
    assert wait_until(lambda: worker_db.execute(
        "SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s AND status = 'succeeded'",
        (hook,)).fetchone()[0] == 3)
    audit = """SELECT e.id, e.event_type, e.occurred_at, d.id, d.status, d.attempts, d.delivered_at,
                      d.idempotency_key, a.attempt, a.attempted_at, a.http_status, a.succeeded
               FROM billhook.events AS e JOIN billhook.deliveries AS d ON d.event_id = e.id
               JOIN billhook.delivery_attempts AS a ON a.delivery_id = d.id
               WHERE d.webhook_id = %s ORDER BY a.id"""
    trail = worker_db.execute(audit, (hook,)).fetchall()
    other_entity = "SELECT entity FROM billhook.events WHERE entity_type = 'Customer' AND entity_id = %s"
    other_before = worker_db.execute(other_entity, (other,)).fetchall()

    with pytest.raises(errors.InsufficientPrivilege):
        usage_only.execute("SELECT billhook.erase_entity('Customer', %s)", (jane,))
    with pytest.raises(errors.InvalidParameterValue) as raised:
        worker_db.execute("SELECT billhook.erase_entity('Contact', %s)", (jane,))
    assert raised.value.diag.message_primary == f"invalid entity Contact/{jane}"
    assert worker_db.execute("SELECT billhook.erase_entity('Customer', %s)", (jane,)).fetchone()[0] == 2

    stored = worker_db.execute("SELECT DISTINCT entity::text FROM billhook.events WHERE entity_type = 'Customer'"
                               " AND entity_id = %s", (jane,)).fetchall()
    assert len(stored) == 1 and "Jane" not in stored[0][0] and "jane@" not in stored[0][0]
    assert set(json.loads(stored[0][0])) == {"id", "erased_at"} and json.loads(stored[0][0])["id"] == str(jane)
    bodies = worker_db.execute(
        "SELECT a.response_body, d.last_http_body FROM billhook.delivery_attempts AS a"
        " JOIN billhook.deliveries AS d ON d.id = a.delivery_id JOIN billhook.events AS e ON e.id = d.event_id"
        " WHERE e.entity_id = %s AND e.entity_type = 'Customer'", (jane,)).fetchall()
    assert len(bodies) == 3 and all(body == (None, None) for body in bodies)
    assert worker_db.execute(audit, (hook,)).fetchall() == trail, "ids, times, statuses and keys kept"
    assert worker_db.execute("SELECT entity FROM billhook.events WHERE entity_type = 'Customer' AND entity_id = %s",
                                     (other,)).fetchall() == \
        other_before
    assert worker_db.execute("SELECT response_body FROM billhook.delivery_attempts AS a"
                             " JOIN billhook.deliveries AS d ON d.id = a.delivery_id"
                             " JOIN billhook.events AS e ON e.id = d.event_id"
                             " WHERE e.entity_type = 'Customer' AND e.entity_id = %s AND d.webhook_id = %s",
                             (other, hook)).fetchone()[0] == "stored Jane Doe", "another entity's bodies stay"


def test_erasure_blanks_a_webhooks_last_response_only_when_it_answered_a_push_about_the_entity(
        worker_db, worker_admin, receiver):
    """webhooks.last_http_body shows the last answer of each endpoint: an echo of the erased
    entity's data goes, another entity's answer stays."""
    hooks = {}
    for path in ("/last-echo", "/last-other"):
        receiver.plan(path, Response(200, f"stored {path}".encode()))
        hooks[path] = worker_db.execute(
            "SELECT id FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false)",
            (receiver.url(path), worker_admin)).fetchone()[0]
    receiver.plan("/last-echo", Response(200, b"stored Erin Erased <erin@example.org>"))
    erin = customer(worker_db, worker_admin, company_name="Erin Erased", email="erin@example.org")
    last_body = "SELECT last_http_body FROM billhook.webhooks WHERE id = %s"
    assert wait_until(lambda: worker_db.execute(last_body, (hooks["/last-echo"],)).fetchone()[0]
                      == "stored Erin Erased <erin@example.org>")
    # Both endpoints answered Erin's push; then /last-other answers one about someone else.
    assert wait_until(lambda: worker_db.execute(last_body, (hooks["/last-other"],)).fetchone()[0]
                      == "stored /last-other")
    worker_db.execute("SELECT billhook.update_webhook(%s, enabled_events => '{customer.updated}')",
                      (hooks["/last-echo"],))
    receiver.plan("/last-other", Response(200, b"stored Someone Else"))
    customer(worker_db, worker_admin, company_name="Someone Else")
    assert wait_until(lambda: worker_db.execute(last_body, (hooks["/last-other"],)).fetchone()[0]
                      == "stored Someone Else")
    updated_at = worker_db.execute("SELECT updated_at FROM billhook.webhooks WHERE id = %s",
                                   (hooks["/last-echo"],)).fetchone()[0]

    assert worker_db.execute("SELECT billhook.erase_entity('Customer', %s)", (erin,)).fetchone()[0] == 1
    assert worker_db.execute(last_body, (hooks["/last-echo"],)).fetchone()[0] is None
    assert worker_db.execute(last_body, (hooks["/last-other"],)).fetchone()[0] == "stored Someone Else"
    assert worker_db.execute("SELECT updated_at FROM billhook.webhooks WHERE id = %s",
                             (hooks["/last-echo"],)).fetchone()[0] == updated_at, "erasure is no configuration change"


def test_a_push_still_to_go_carries_the_erased_entity(worker_db, worker_admin, receiver):
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false)",
                             (receiver.url("/erased-later"), worker_admin)).fetchone()[0]
    # Disabled by billhook (held) rather than by hand, so the event gets its delivery.
    worker_db.execute("UPDATE billhook.webhooks SET enabled = false, disabled_at = now(), disabled_reason = 'test'"
                      " WHERE id = %s", (hook,))
    jane = customer(worker_db, worker_admin, company_name="Jane Doe")
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s",
                                                (hook,)).fetchone()[0] == 1)
    assert worker_db.execute("SELECT billhook.erase_entity('Customer', %s)", (jane,)).fetchone()[0] == 1
    worker_db.execute("SELECT billhook.enable_webhook(%s)", (hook,))
    [push] = receiver.wait_for("/erased-later", 1)
    assert b"Jane" not in push.body
    assert set(json.loads(push.body)["entity"]) == {"id", "erased_at"}


def test_erasure_reaches_the_customer_nested_in_invoices_quotations_and_schedules_and_their_answers(
        worker_db, worker_admin, receiver):
    """An invoice, a quotation and a recurring invoice embed their customer: erasing the customer
    erases each copy (the same {"id", "erased_at"} as its own events) and the answers to the pushes
    of those events, and leaves the documents' own fields and another customer's copies alone."""
    receiver.plan_for_body("/nested-erasure", b"jane@example.org",
                           *[Response(200, b"stored Jane Doe <jane@example.org>")] * 50)
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{invoice, quotation, recurring_invoice}', %s,"
                             " verify => false)", (receiver.url("/nested-erasure"), worker_admin)).fetchone()[0]
    jane = customer(worker_db, worker_admin, company_name="Jane Doe", email="jane@example.org")
    other = customer(worker_db, worker_admin, company_name="Other B.V.", email="other@example.org")
    jane_invoice = invoice(worker_db, worker_admin, jane)
    worker_db.execute("UPDATE billhook.invoices SET state = 'open', sent_at = now() WHERE id = %s", (jane_invoice,))
    quotation(worker_db, worker_admin, jane, valid_until="2099-01-01")
    worker_db.execute("INSERT INTO billhook.recurring_invoices (administration_id, customer_id, frequency, start_date,"
                      " max_occurrences, currency) VALUES (%s, %s, 'monthly', current_date, 1, 'EUR')",
                      (worker_admin, jane))
    worker_db.execute("SELECT count(*) FROM billhook.run_schedules()")
    invoice(worker_db, worker_admin, other)
    holding = """SELECT e.id, e.entity_type, e.entity FROM billhook.events AS e
                 WHERE e.administration_id = %s AND e.entity->'customer'->>'id' = %s ORDER BY e.id"""
    nesting = worker_db.execute(holding, (worker_admin, str(jane))).fetchall()
    assert {kind for _, kind, _ in nesting} == {"Invoice", "Quotation", "RecurringInvoice"}
    pushes = worker_db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s"
                               " AND entity_type <> 'Customer'", (worker_admin,)).fetchone()[0]
    receiver.wait_for("/nested-erasure", pushes)
    assert wait_until(lambda: worker_db.execute(
        "SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s AND status = 'succeeded'",
        (hook,)).fetchone()[0] == pushes)
    last_body = "SELECT last_http_body FROM billhook.webhooks WHERE id = %s"
    other_events = worker_db.execute(holding, (worker_admin, str(other))).fetchall()
    audit = """SELECT d.id, d.event_id, d.status, d.attempts, d.idempotency_key, a.id, a.http_status
               FROM billhook.deliveries AS d JOIN billhook.delivery_attempts AS a ON a.delivery_id = d.id
               WHERE d.webhook_id = %s ORDER BY a.id"""
    trail = worker_db.execute(audit, (hook,)).fetchall()

    assert worker_db.execute("SELECT billhook.erase_entity('Customer', %s)", (jane,)).fetchone()[0] == 1, \
        "the count is of the customer's own events"

    assert worker_db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s"
                             " AND entity::text LIKE '%%jane@example.org%%'", (worker_admin,)).fetchone()[0] == 0
    [own] = worker_db.execute("SELECT entity FROM billhook.events WHERE entity_type = 'Customer' AND entity_id = %s",
                              (jane,)).fetchone()
    for event_id, kind, before in nesting:
        [after] = worker_db.execute("SELECT entity FROM billhook.events WHERE id = %s", (event_id,)).fetchone()
        assert after["customer"] == own == {"id": str(jane), "erased_at": own["erased_at"]}, kind
        assert {k: v for k, v in after.items() if k != "customer"} == \
            {k: v for k, v in before.items() if k != "customer"}, "the document's own fields stay"
    assert worker_db.execute(holding, (worker_admin, str(other))).fetchall() == other_events
    bodies = worker_db.execute(
        "SELECT e.entity->'customer'->>'id', a.response_body, d.last_http_body FROM billhook.deliveries AS d"
        " JOIN billhook.delivery_attempts AS a ON a.delivery_id = d.id JOIN billhook.events AS e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s", (hook,)).fetchall()
    assert {(customer_id, body, last) for customer_id, body, last in bodies if customer_id == str(jane)} == \
        {(str(jane), None, None)}
    assert {body for customer_id, body, _ in bodies if customer_id == str(other)} == {"ok"}
    assert worker_db.execute(last_body, (hook,)).fetchone()[0] in (None, "ok")
    assert worker_db.execute(audit, (hook,)).fetchall() == trail, "ids, statuses and keys kept"

    # Erasing again changes nothing: the copies keep the time of the first erasure.
    assert worker_db.execute("SELECT billhook.erase_entity('Customer', %s)", (jane,)).fetchone()[0] == 1
    assert worker_db.execute("SELECT entity->'customer' FROM billhook.events WHERE id = %s",
                             (nesting[0][0],)).fetchone()[0] == own


def test_every_entity_an_entity_nests_is_where_erasure_looks_for_it(db, admin):
    """billhook.nested_entities names every object in a kind's JSON that is an entity (it has an id
    and an administration_id, which lines have not): a builder that nests one more is erased too."""
    c = customer(db, admin)
    i = invoice(db, admin, c)
    q = quotation(db, admin, c)
    r = db.execute("INSERT INTO billhook.recurring_invoices (administration_id, customer_id, frequency)"
                   " VALUES (%s, %s, 'monthly') RETURNING id", (admin, c)).fetchone()[0]

    def nested(value, path=()):
        if isinstance(value, dict):
            if path and {"id", "administration_id"} <= set(value):
                yield path
            for key, inner in value.items():
                yield from nested(inner, path + (key,))
        elif isinstance(value, list):
            for inner in value:
                yield from nested(inner, path + ("[]",))

    found = set()
    for kind, entity_id in [("Customer", c), ("Invoice", i), ("Quotation", q), ("RecurringInvoice", r)]:
        entity = db.execute("SELECT billhook.entity_json(%s, %s)", (kind, entity_id)).fetchone()[0]
        found |= {(kind, path) for path in nested(entity)}
    declared = {(kind, tuple(path)) for kind, path in
                db.execute("SELECT entity_type, path FROM billhook.nested_entities()").fetchall()}
    assert found == declared
