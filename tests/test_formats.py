"""Payload formats end to end: Moneybird's (compared with reference 003's example payload), the
Standard Webhooks shape (checked with the standardwebhooks library), and subscriptions by Moneybird
names, at a real receiver."""

import json
import re
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from helpers import customer, insert, wait_until

EXAMPLE = json.loads((Path(__file__).parent / "fixtures" / "moneybird_late_invoice.json").read_text())
# Real Moneybird sales invoice fields that reference 003's abridged example leaves out.
SALES_INVOICE_EXTRAS = {"due_date", "total_price_excl_tax", "total_price_incl_tax"}
ID = re.compile(r"^[0-9]+$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# Keys whose values are this install's own: ids, times, and the invoice date billhook always has.
OWN_VALUES = {"id", "contact_id", "entity_id", "administration_id", "webhook_id", "webhook_token", "created_at",
              "updated_at", "invoice_date"}
# What billhook does not keep (workflows, layouts, ledger accounts, tax reports): null or empty.
NOT_KEPT = {"workflow_id": None, "document_style_id": None, "tax_rate_id": None, "ledger_account_id": None,
            "tax_report_reference": []}


def moneybird_webhook(db, admin, url, events=None):
    return db.execute("SELECT id, token, signing_secret FROM billhook.create_webhook(%s, %s, %s, verify => false,"
                      " payload_format => 'moneybird')", (url, events, admin)).fetchone()


def the_late_invoice_of_the_example(db, admin):
    """Reference 003's situation: Foobar Holding B.V.'s invoice for Project X, 1 x 300.0, now late."""
    contact = EXAMPLE["entity"]["contact"]
    c = customer(db, admin, company_name=contact["company_name"], address1=contact["address1"],
                 zipcode=contact["zipcode"], city=contact["city"], country=contact["country"],
                 email=contact["email"], customer_number=contact["customer_id"],
                 send_invoices_to_email=contact["send_invoices_to_email"])
    entity = EXAMPLE["entity"]
    with db.transaction():
        i = insert(db, "invoices", administration_id=admin, customer_id=c, reference=entity["reference"],
                   language=entity["language"], currency=entity["currency"],
                   payment_conditions=entity["payment_conditions"])
        line = entity["details"][0]
        insert(db, "invoice_lines", administration_id=admin, invoice_id=i, description=line["description"],
               amount=1, price=line["price"], row_order=line["row_order"])
    db.execute("UPDATE billhook.invoices SET state = 'late' WHERE id = %s", (i,))
    return i


def same_shape(got, expected, path, extras=None):
    """The keys of `got` are exactly those of `expected` (plus `extras` at their path), recursively; values agree
    except for this install's own ids and times, which only have Moneybird's format."""
    extras = extras or {}
    assert isinstance(got, dict), f"{path} is {got!r}"
    allowed = set(expected) | extras.get(path, set())
    assert set(got) == allowed, f"{path}: keys differ: {set(got) ^ allowed}"
    for key, value in expected.items():
        where = f"{path}.{key}"
        if isinstance(value, dict):
            same_shape(got[key], value, where, extras)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            assert len(got[key]) == len(value), where
            for n, (g, e) in enumerate(zip(got[key], value)):
                same_shape(g, e, f"{where}[{n}]", extras)
        elif key in NOT_KEPT:
            assert got[key] == NOT_KEPT[key], where
        elif key in OWN_VALUES or key.endswith("_id") and value is not None and ID.match(str(value)):
            pattern = TIME if key.endswith("_at") else ID
            if key == "invoice_date":
                assert re.match(r"^\d{4}-\d\d-\d\d$", got[key]), where
            elif key == "webhook_token":
                assert got[key], where
            else:
                assert pattern.match(got[key]), f"{where} = {got[key]!r}"
        else:
            assert got[key] == value, f"{where}: {got[key]!r} != {value!r}"


def test_a_moneybird_push_of_a_late_invoice_is_reference_003s_example(worker_db, worker_admin, receiver):
    hook, token, _ = moneybird_webhook(worker_db, worker_admin, receiver.url("/moneybird"))
    i = the_late_invoice_of_the_example(worker_db, worker_admin)
    [push] = receiver.wait_for("/moneybird", 1)
    body = json.loads(push.body)
    same_shape(body, EXAMPLE, "push", {"push.entity": SALES_INVOICE_EXTRAS})
    assert (body["webhook_id"], body["webhook_token"], body["entity_id"]) == (str(hook), token, str(i))
    assert body["entity"]["total_price_incl_tax"] == "300.0" and body["entity"]["due_date"] is None
    # The legacy default (no events chosen) took the state change only, not the invoice's creation.
    assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()[0] == 1


def test_moneybird_names_pick_their_pushes_only(worker_db, worker_admin, receiver):
    hook, _, _ = moneybird_webhook(worker_db, worker_admin, receiver.url("/mb-names"),
                                   ["sales_invoice_state_changed_to_open", "contact"])
    c = customer(worker_db, worker_admin)
    with worker_db.transaction():
        i = insert(worker_db, "invoices", administration_id=worker_admin, customer_id=c)
    worker_db.execute("UPDATE billhook.invoices SET reference = 'edited' WHERE id = %s", (i,))
    worker_db.execute("UPDATE billhook.invoices SET state = 'open' WHERE id = %s", (i,))
    worker_db.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (c,))
    pushes = receiver.wait_for("/mb-names", 3)
    deliveries = lambda: worker_db.execute(
        "SELECT e.event_type, d.status, d.attempts, d.last_http_status, d.last_error, d.next_attempt_at"
        " FROM billhook.deliveries d JOIN billhook.events e ON e.id = d.event_id WHERE d.webhook_id = %s"
        " ORDER BY d.id", (hook,)).fetchall()
    assert wait_until(lambda: [d[1] for d in deliveries()] == ["succeeded"] * 3), \
        (deliveries(), [(p.at, json.loads(p.body)["action"]) for p in receiver.received("/mb-names")])
    actions = sorted(json.loads(p.body)["action"] for p in pushes)
    assert actions == ["contact_changed", "contact_created", "sales_invoice_state_changed_to_open"]
    opened = next(json.loads(p.body) for p in pushes if json.loads(p.body)["entity_type"] == "SalesInvoice")
    assert opened["state"] == "open" and opened["entity"]["state"] == "open"
    # The created and the edited invoice had invoice.* events too; none became a delivery.
    overview = worker_db.execute("SELECT subscribed_events, exact_events FROM billhook.webhook_overview"
                                 " WHERE id = %s", (hook,)).fetchone()
    assert overview == (["invoice.updated", "customer.created", "customer.updated", "customer.deleted"],
                        ["sales_invoice_state_changed_to_open", "contact_created", "contact_changed",
                         "contact_destroyed"])


def test_a_standard_push_verifies_with_the_standardwebhooks_library(worker_db, worker_admin, receiver):
    hook, _, secret = worker_db.execute(
        "SELECT id, token, signing_secret FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false,"
        " payload_format => 'standard')", (receiver.url("/standard"), worker_admin)).fetchone()
    c = customer(worker_db, worker_admin, company_name="Standard B.V.")
    [push] = receiver.wait_for("/standard", 1)
    verified = Webhook(secret).verify(push.body, dict(push.headers))
    event = worker_db.execute("SELECT id, billhook.json_time(occurred_at), entity FROM billhook.events"
                              " WHERE entity_id = %s AND event_type = 'customer.created'", (c,)).fetchone()
    assert verified == {
        "type": "customer.created",
        "timestamp": event[1],
        "data": {"event_id": str(event[0]), "administration_id": str(worker_admin), "webhook_id": str(hook),
                 "entity_type": "Customer", "entity_id": str(c), "state": None, "entity": event[2]},
    }


@pytest.mark.parametrize("bad", ["Moneybird", "", "json"])
def test_an_unknown_payload_format_is_22023_and_nothing_is_saved(db, admin, bad):
    from psycopg import errors
    with pytest.raises(errors.InvalidParameterValue) as raised:
        db.execute("SELECT billhook.create_webhook('https://receiver.example/x', NULL, %s, verify => false,"
                   " payload_format => %s)", (admin, bad))
    assert raised.value.diag.message_primary == f'invalid payload_format "{bad}": no such choice'
    assert raised.value.diag.message_hint == "Use one of: billhook, moneybird, standard."
    assert db.execute("SELECT count(*) FROM billhook.webhooks WHERE administration_id = %s", (admin,)).fetchone()[0] == 0


def test_a_format_change_changes_the_default_subscription(db, admin):
    hook = db.execute("SELECT id FROM billhook.create_webhook('https://receiver.example/y', NULL, %s,"
                      " verify => false)", (admin,)).fetchone()[0]
    row = lambda: db.execute("SELECT subscribed_events, exact_events FROM billhook.webhooks WHERE id = %s",
                             (hook,)).fetchone()
    assert row() == (["invoice.sent", "invoice.paid", "invoice.overdue", "invoice.cancelled"], None)
    db.execute("SELECT billhook.update_webhook(%s, payload_format => 'moneybird')", (hook,))
    events, exact = row()
    assert events == ["invoice.updated", "invoice.paid", "invoice.overdue", "invoice.cancelled"]
    assert len(exact) == 9 and all(name.startswith("sales_invoice_state_changed_to_") for name in exact)
    # Written directly, the subscription columns still follow enabled_events.
    db.execute("UPDATE billhook.webhooks SET subscribed_events = '{customer.deleted}', exact_events = NULL"
               " WHERE id = %s", (hook,))
    assert row() == (events, exact)


def test_an_invoice_converted_from_a_quotation_is_created_based_on_estimate(worker_db, worker_admin, receiver):
    hook = moneybird_webhook(worker_db, worker_admin, receiver.url("/mb-estimate"),
                             ["sales_invoice", "estimate_billed"])[0]
    c = customer(worker_db, worker_admin)
    with worker_db.transaction():
        q = insert(worker_db, "quotations", administration_id=worker_admin, customer_id=c, state="accepted")
        insert(worker_db, "quotation_lines", administration_id=worker_admin, quotation_id=q, description="Design",
               amount=2, price=500)
    new_invoice = worker_db.execute("SELECT id FROM billhook.convert_quotation(%s)", (q,)).fetchone()[0]
    pushes = [json.loads(p.body) for p in receiver.wait_for("/mb-estimate", 2)]
    assert sorted((p["action"], p["entity_type"], p["entity_id"]) for p in pushes) == [
        ("estimate_billed", "Estimate", str(q)),
        ("sales_invoice_created_based_on_estimate", "SalesInvoice", str(new_invoice)),
    ]
    # quotation.updated, also in that transaction, is no estimate_billed: no delivery.
    assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()[0] == 2
    estimate = next(p for p in pushes if p["entity_type"] == "Estimate")
    assert estimate["state"] == "billed" and estimate["entity"]["details"][0]["amount"] == "2 x"
