"""billhook.event_types.schema, checked against what the whole test session produced: every event
the tests left in the session's databases, as the push body of billhook's format, and every push of
that format the session's receiver got, validates with Python's jsonschema against its event type's
schema. A payload whose shape changes without its schema fails here."""

import json

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from conftest import new_administration
from helpers import customer, expense, invoice, quotation

ENVELOPES = """
    SELECT e.event_type, t.schema, jsonb_build_object(
        'administration_id', e.administration_id::text, 'webhook_id', '1', 'webhook_token', 'token',
        'entity_type', e.entity_type, 'entity_id', e.entity_id::text, 'state', e.state, 'action', e.event_type,
        'event_id', e.id::text, 'occurred_at', billhook.json_time(e.occurred_at), 'entity', e.entity)
    FROM billhook.events AS e JOIN billhook.event_types AS t ON t.name = e.event_type
    -- Tests of the fan-out, the reports and the faults write events by hand with an empty entity;
    -- every entity billhook writes has its id at least.
    WHERE e.entity <> '{}'"""


def every_kind_of_event(conn, admin):
    """Events of every kind and action the catalog has, whatever else the session did: documents
    with lines, state changes, deletions, a schedule's generated invoice and an erased entity (nested
    in an invoice too)."""
    c = customer(conn, admin, company_name="Schema B.V.", email="schema@example.org")
    i = invoice(conn, admin, c, lines=[("Design", 2, "512.50", 21), ("Hosting", 1, "9.99", 9)], discount=10)
    conn.execute("UPDATE billhook.invoices SET state = 'open', sent_at = now() WHERE id = %s", (i,))
    conn.execute("UPDATE billhook.invoices SET state = 'paid', paid_at = now() WHERE id = %s", (i,))
    q = quotation(conn, admin, c, valid_until="2099-01-01")
    conn.execute("UPDATE billhook.quotations SET state = 'accepted', accepted_at = now() WHERE id = %s", (q,))
    conn.execute("SELECT billhook.convert_quotation(%s)", (q,))
    e = expense(conn, admin, due_date="2099-01-01")
    conn.execute("UPDATE billhook.expenses SET state = 'approved', approved_at = now() WHERE id = %s", (e,))
    conn.execute("DELETE FROM billhook.expenses WHERE id = %s", (e,))
    schedule = conn.execute("INSERT INTO billhook.recurring_invoices (administration_id, customer_id, frequency,"
                            " start_date, max_occurrences, currency) VALUES (%s, %s, 'monthly', current_date, 1,"
                            " 'EUR') RETURNING id", (admin, c)).fetchone()[0]
    conn.execute("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description,"
                 " amount, price, tax_rate, row_order) VALUES (%s, %s, 'Hosting', 1, '9.99', 21, 0)", (admin, schedule))
    # Every schedule due in the session's database, not only the first hundred: this one is among them.
    conn.execute("SELECT count(*) FROM billhook.run_schedules(max_invoices => 1000000)")
    gone = customer(conn, admin, company_name="Erased Person")
    invoice(conn, admin, gone)
    conn.execute("SELECT billhook.erase_entity('Customer', %s)", (gone,))


def problems(schema, payload):
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(payload)]


@pytest.mark.after_everything
@pytest.mark.parametrize("database", ["billhook_test", "billhook_worker"])
def test_every_event_of_the_session_validates_against_its_schema(cluster, database):
    with cluster.connect(database) as conn:
        every_kind_of_event(conn, new_administration(conn))
        rows = conn.execute(ENVELOPES).fetchall()
        for (schema,) in conn.execute("SELECT DISTINCT schema FROM billhook.event_types"):
            Draft202012Validator.check_schema(schema)
    failures = {}
    for event_type, schema, payload in rows:
        for problem in problems(schema, payload):
            failures.setdefault(event_type, set()).add(problem)
    assert failures == {}
    actions = {row[0] for row in rows}
    assert {"invoice.created", "invoice.updated", "invoice.sent", "invoice.paid", "quotation.created",
            "quotation.accepted", "quotation.converted", "customer.created", "expense.created", "expense.approved",
            "expense.deleted", "recurring_invoice.generated", "recurring_invoice.completed"} <= actions, actions


@pytest.mark.after_everything
def test_every_push_of_billhooks_format_the_receiver_got_validates(worker_db, worker_admin, receiver):
    worker_db.execute("SELECT billhook.create_webhook(%s, '{*}', %s, verify => false)",
                      (receiver.url("/every-kind"), worker_admin))
    every_kind_of_event(worker_db, worker_admin)
    events = worker_db.execute("SELECT count(*) FROM billhook.events WHERE administration_id = %s",
                               (worker_admin,)).fetchone()[0]
    assert len(receiver.wait_for("/every-kind", events)) == events
    schemas = dict(worker_db.execute("SELECT name, schema FROM billhook.event_types").fetchall())
    checked, failures = 0, {}
    for push in receiver.requests:
        try:
            body = json.loads(push.body)
        except ValueError:
            continue
        # billhook's format with the entity: the others (Moneybird's, Standard Webhooks', thin
        # pushes, registration checks) have shapes of their own.
        if not isinstance(body, dict) or not {"event_id", "webhook_token", "entity"} <= set(body) \
                or body.get("action") not in schemas:
            continue
        checked += 1
        for problem in problems(schemas[body["action"]], body):
            failures.setdefault(body["action"], set()).add(problem)
    assert checked >= events
    assert failures == {}


def test_a_tracked_rows_negative_id_is_within_its_event_schema(cluster):
    """A tracked table's ids are its own: its events' schema allows a sign, billhook's own do not.
    In a database of its own: the event types it registers stay registered."""
    cluster.create_database("billhook_ledger")
    try:
        with cluster.connect("billhook_ledger") as db:
            db.execute("CREATE TABLE public.ledger (id bigint PRIMARY KEY, memo text)")
            db.execute("SELECT billhook.track_table('public.ledger', 'Ledger', 'ledger')")
            db.execute("INSERT INTO public.ledger VALUES (-7, 'negative')")
            [(schema, payload)] = db.execute(
                ENVELOPES.replace("SELECT e.event_type, t.schema,", "SELECT t.schema,")
                + " AND e.entity_type = 'Ledger'").fetchall()
            assert payload["entity_id"] == "-7" and problems(schema, payload) == []
            paid = db.execute("SELECT schema FROM billhook.event_types WHERE name = 'invoice.paid'").fetchone()[0]
            assert problems(paid, {**payload, "entity_id": "-7"})
    finally:
        with cluster.connect("postgres") as conn:
            conn.execute("DROP DATABASE billhook_ledger")
