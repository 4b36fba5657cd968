"""Row changes become events at commit: every row-change event of the catalog, the exact entity
JSON, the per-transaction coalescing rules and rollbacks."""

import psycopg
import pytest

from helpers import (ISO_UTC, customer, event_names, events, expense, fan_out, invoice, last_event_id,
                     quotation)


# --- invoices -------------------------------------------------------------------------------

def test_invoice_created_holds_customer_lines_and_totals(db, admin):
    c = customer(db, admin, email="info@example.com", city="Amsterdam", country="NL")
    i = invoice(db, admin, c, lines=[("Project X", 2, "150.00", 21), ("Hosting", 1, "9.99", 9)],
                invoice_number="2026-0001", due_date="2026-12-31", invoice_date="2026-12-01",
                reference="Project X", discount="10")
    created = events(db, admin)[-1]
    assert (created["event_type"], created["entity_type"], created["entity_id"], created["state"]) == (
        "invoice.created", "Invoice", i, "draft")
    entity = created["entity"]
    assert set(entity) == {
        "id", "administration_id", "customer_id", "customer", "invoice_number", "state",
        "invoice_date", "due_date", "currency", "discount", "reference", "language",
        "payment_conditions", "sent_at", "paid_at", "recurring_invoice_id", "quotation_id", "created_at", "updated_at", "lines",
        "total_price_excl_tax", "total_tax", "total_price_incl_tax"}
    assert entity["id"] == str(i) and entity["administration_id"] == str(admin)
    assert entity["customer_id"] == str(c)
    assert entity["customer"]["id"] == str(c)
    assert entity["customer"]["company_name"] == "Foobar Holding B.V."
    assert entity["customer"]["city"] == "Amsterdam"
    assert entity["invoice_number"] == "2026-0001"
    assert (entity["invoice_date"], entity["due_date"]) == ("2026-12-01", "2026-12-31")
    assert (entity["currency"], entity["discount"], entity["language"]) == ("EUR", "10", "en")
    assert entity["sent_at"] is None and entity["paid_at"] is None and entity["recurring_invoice_id"] is None
    assert ISO_UTC.match(entity["created_at"]) and ISO_UTC.match(entity["updated_at"])
    assert [(l["description"], l["amount"], l["price"], l["tax_rate"], l["total_price_excl_tax"])
            for l in entity["lines"]] == [("Project X", "2", "150.00", "21", "300.00"),
                                          ("Hosting", "1", "9.99", "9", "9.99")]
    # 309.99 less 10 % = 278.991 -> 278.99; tax 300*0.9*0.21 + 9.99*0.9*0.09 = 56.70 + 0.81
    assert (entity["total_price_excl_tax"], entity["total_tax"], entity["total_price_incl_tax"]) == (
        "278.99", "57.51", "336.50")


def test_invoice_with_ten_lines_in_one_transaction_is_one_created_event(db, admin):
    c = customer(db, admin)
    after = last_event_id(db)
    invoice(db, admin, c, lines=[(f"line {n}", 1, n, 21) for n in range(10)])
    [created] = events(db, admin, after)
    assert created["event_type"] == "invoice.created"
    assert [l["description"] for l in created["entity"]["lines"]] == [f"line {n}" for n in range(10)]


@pytest.mark.parametrize("change, expected", [
    ("SET reference = 'changed'", ["invoice.updated"]),
    ("SET sent_at = now(), state = 'open', invoice_number = '2026-7'", ["invoice.updated", "invoice.sent"]),
    ("SET state = 'paid', paid_at = now()", ["invoice.updated", "invoice.paid"]),
    ("SET state = 'late'", ["invoice.updated", "invoice.overdue"]),
    ("SET state = 'cancelled'", ["invoice.updated", "invoice.cancelled"]),
    ("SET state = 'reminded'", ["invoice.updated"]),
])
def test_invoice_updates_and_lifecycle_events(db, admin, change, expected):
    i = invoice(db, admin, customer(db, admin))
    after = last_event_id(db)
    db.execute(f"UPDATE billhook.invoices {change} WHERE id = %s", (i,))
    emitted = events(db, admin, after)
    assert [e["event_type"] for e in emitted] == expected
    state = db.execute("SELECT state FROM billhook.invoices WHERE id = %s", (i,)).fetchone()[0]
    for e in emitted:
        assert e["state"] == state == e["entity"]["state"]
        assert e["entity_id"] == i


def test_invoice_deleted_carries_its_last_state_and_lines(db, admin):
    i = invoice(db, admin, customer(db, admin), lines=[("a", 1, 10, 0), ("b", 2, 20, 0)])
    db.execute("UPDATE billhook.invoices SET state = 'open' WHERE id = %s", (i,))
    after = last_event_id(db)
    db.execute("DELETE FROM billhook.invoices WHERE id = %s", (i,))
    [deleted] = events(db, admin, after)
    assert (deleted["event_type"], deleted["entity_id"], deleted["state"]) == ("invoice.deleted", i, "open")
    assert [l["description"] for l in deleted["entity"]["lines"]] == ["a", "b"]
    assert deleted["entity"]["total_price_excl_tax"] == "50.00"


def test_line_changes_emit_the_parent_updated_once(db, admin):
    i = invoice(db, admin, customer(db, admin), lines=[("a", 1, 10, 0), ("b", 1, 10, 0)])
    after = last_event_id(db)
    with db.transaction():
        db.execute("UPDATE billhook.invoice_lines SET price = 11 WHERE invoice_id = %s", (i,))
        db.execute("INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, price)"
                   " VALUES (%s, %s, 'c', 5)", (admin, i))
        db.execute("DELETE FROM billhook.invoice_lines WHERE invoice_id = %s AND description = 'a'", (i,))
    [updated] = events(db, admin, after)
    assert updated["event_type"] == "invoice.updated"
    assert sorted((l["description"], l["price"]) for l in updated["entity"]["lines"]) == [("b", "11"), ("c", "5")]


# --- quotations -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ("SET pre_text = 'Dear customer'", ["quotation.updated"]),
    ("SET state = 'open', sent_at = now()", ["quotation.updated", "quotation.sent"]),
    ("SET state = 'accepted', accepted_at = now()", ["quotation.updated", "quotation.accepted"]),
    ("SET state = 'rejected'", ["quotation.updated", "quotation.rejected"]),
    ("SET state = 'expired'", ["quotation.updated", "quotation.expired"]),
])
def test_quotation_updates_and_lifecycle_events(db, admin, change, expected):
    q = quotation(db, admin, customer(db, admin))
    after = last_event_id(db)
    db.execute(f"UPDATE billhook.quotations {change} WHERE id = %s", (q,))
    assert event_names(db, admin, after) == expected


def test_quotation_created_and_never_deleted_event(db, admin):
    c = customer(db, admin)
    after = last_event_id(db)
    q = quotation(db, admin, c, lines=[("Design", 2, "500", 21)], valid_until="2099-01-01")
    [created] = events(db, admin, after)
    assert (created["event_type"], created["entity_type"], created["state"]) == ("quotation.created", "Quotation", "draft")
    assert created["entity"]["valid_until"] == "2099-01-01"
    assert created["entity"]["total_price_incl_tax"] == "1210.00"
    assert created["entity"]["customer"]["id"] == str(c)
    after = last_event_id(db)
    db.execute("DELETE FROM billhook.quotations WHERE id = %s", (q,))
    assert event_names(db, admin, after) == [], "the catalog has no quotation.deleted"


def test_convert_quotation_creates_the_invoice_and_emits_converted(db, admin):
    c = customer(db, admin)
    q = quotation(db, admin, c, lines=[("Design", 2, "500", 21), ("Build", 1, "1000", 21)],
                  reference="Website", state="accepted")
    after = last_event_id(db)
    new_invoice = db.execute("SELECT id, customer_id, reference, state FROM billhook.convert_quotation(%s)",
                             (q,)).fetchone()
    assert new_invoice[1:] == (c, "Website", "draft")
    emitted = events(db, admin, after)
    assert [(e["event_type"], e["entity_id"]) for e in emitted] == [
        ("invoice.created", new_invoice[0]),
        ("quotation.updated", q),
        ("quotation.converted", q),
    ]
    assert [l["description"] for l in emitted[0]["entity"]["lines"]] == ["Design", "Build"]
    assert emitted[2]["state"] == "billed" and emitted[2]["entity"]["invoice_id"] == str(new_invoice[0])

    with pytest.raises(psycopg.Error) as again:
        db.execute("SELECT billhook.convert_quotation(%s)", (q,))
    assert again.value.sqlstate == "55000"
    assert f"quotation {q} is already converted to invoice {new_invoice[0]}" in str(again.value)
    with pytest.raises(psycopg.Error) as missing:
        db.execute("SELECT billhook.convert_quotation(-1)")
    assert missing.value.sqlstate == "P0002"
    assert db.execute("SELECT count(*) FROM billhook.invoices WHERE administration_id = %s",
                      (admin,)).fetchone()[0] == 1, "failed conversions create nothing"


# --- customers and expenses -----------------------------------------------------------------

def test_customer_created_updated_deleted(db, admin):
    after = last_event_id(db)
    c = customer(db, admin, firstname="Ada", lastname="Lovelace", company_name=None, email="ada@example.com")
    db.execute("UPDATE billhook.customers SET phone = '+31 20 123 4567' WHERE id = %s", (c,))
    db.execute("DELETE FROM billhook.customers WHERE id = %s", (c,))
    emitted = events(db, admin, after)
    assert [e["event_type"] for e in emitted] == ["customer.created", "customer.updated", "customer.deleted"]
    assert all(e["entity_type"] == "Customer" and e["state"] is None for e in emitted)
    assert emitted[0]["entity"]["phone"] is None
    assert emitted[1]["entity"]["phone"] == "+31 20 123 4567"
    assert emitted[2]["entity"]["firstname"] == "Ada" and emitted[2]["entity"]["phone"] == "+31 20 123 4567"


def test_expense_created_updated_approved_paid_deleted(db, admin):
    after = last_event_id(db)
    e = expense(db, admin, amount="250.00", tax_rate=21, description="Chairs")
    db.execute("UPDATE billhook.expenses SET description = 'Desks' WHERE id = %s", (e,))
    db.execute("UPDATE billhook.expenses SET state = 'approved', approved_at = now() WHERE id = %s", (e,))
    db.execute("UPDATE billhook.expenses SET state = 'paid', paid_at = now() WHERE id = %s", (e,))
    db.execute("DELETE FROM billhook.expenses WHERE id = %s", (e,))
    emitted = events(db, admin, after)
    assert [(x["event_type"], x["state"]) for x in emitted] == [
        ("expense.created", "new"),
        ("expense.updated", "new"),
        ("expense.updated", "approved"), ("expense.approved", "approved"),
        ("expense.updated", "paid"), ("expense.paid", "paid"),
        ("expense.deleted", "paid"),
    ]
    assert emitted[0]["entity"]["total_price_incl_tax"] == "302.50"
    assert emitted[-1]["entity"]["description"] == "Desks"


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "1e15", "-0.01"])
def test_an_expense_amount_is_a_finite_decimal(db, admin, amount):
    """Its push says a decimal (the push schema's pattern): NaN and infinity passed `amount >= 0`."""
    after = last_event_id(db)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        expense(db, admin, amount=amount)
    assert refused.value.diag.constraint_name == "expenses_amount_check"
    assert events(db, admin, after) == []
    expense(db, admin, amount="999999999999999.99")
    assert events(db, admin, after)[0]["entity"]["amount"] == "999999999999999.99"


# --- coalescing and transactions ------------------------------------------------------------

def test_insert_then_update_in_one_transaction_is_only_created(db, admin):
    c = customer(db, admin)
    after = last_event_id(db)
    with db.transaction():
        i = db.execute("INSERT INTO billhook.invoices (administration_id, customer_id) VALUES (%s, %s)"
                       " RETURNING id", (admin, c)).fetchone()[0]
        db.execute("UPDATE billhook.invoices SET state = 'paid', sent_at = now() WHERE id = %s", (i,))
    [created] = events(db, admin, after)
    assert created["event_type"] == "invoice.created"
    assert created["state"] == "paid", "the entity is the state at commit"


def test_insert_then_delete_in_one_transaction_emits_nothing(db, admin):
    after = last_event_id(db)
    with db.transaction():
        c = customer(db, admin)
        db.execute("DELETE FROM billhook.customers WHERE id = %s", (c,))
    assert events(db, admin, after) == []


def test_several_updates_are_one_event_of_each_name(db, admin):
    i = invoice(db, admin, customer(db, admin))
    after = last_event_id(db)
    with db.transaction():
        db.execute("UPDATE billhook.invoices SET reference = 'one' WHERE id = %s", (i,))
        db.execute("UPDATE billhook.invoices SET state = 'open', sent_at = now() WHERE id = %s", (i,))
        db.execute("UPDATE billhook.invoices SET state = 'paid' WHERE id = %s", (i,))
        db.execute("UPDATE billhook.invoices SET reference = 'two' WHERE id = %s", (i,))
    emitted = events(db, admin, after)
    assert [e["event_type"] for e in emitted] == ["invoice.updated", "invoice.sent", "invoice.paid"]
    assert {e["entity"]["reference"] for e in emitted} == {"two"}


def test_a_state_changed_and_changed_back_is_only_updated(db, admin):
    e = expense(db, admin)
    after = last_event_id(db)
    with db.transaction():
        db.execute("UPDATE billhook.expenses SET state = 'approved' WHERE id = %s", (e,))
        db.execute("UPDATE billhook.expenses SET state = 'new' WHERE id = %s", (e,))
    assert event_names(db, admin, after) == ["expense.updated"]


def test_no_op_update_emits_nothing(db, admin):
    i = invoice(db, admin, customer(db, admin))
    after = last_event_id(db)
    db.execute("UPDATE billhook.invoices SET state = state WHERE id = %s", (i,))
    assert event_names(db, admin, after) == []


def test_rolled_back_transaction_emits_nothing(db, admin):
    after = last_event_id(db)
    with pytest.raises(psycopg.errors.DivisionByZero):
        with db.transaction():
            c = customer(db, admin)
            invoice(db, admin, c)
            db.execute("SELECT 1/0")
    db.execute("BEGIN")
    customer(db, admin)
    db.execute("ROLLBACK")
    assert events(db, admin, after) == []
    fan_out(db)
    assert db.execute("SELECT count(*) FROM billhook.deliveries d JOIN billhook.events e ON e.id = d.event_id"
                      " WHERE e.id > %s", (after,)).fetchone()[0] == 0


def test_savepoint_rollback_forgets_only_its_changes(db, admin):
    after = last_event_id(db)
    with db.transaction():
        kept = customer(db, admin, company_name="kept")
        db.execute("SAVEPOINT a")
        customer(db, admin, company_name="rolled back")
        db.execute("UPDATE billhook.customers SET email = 'x@example.com' WHERE id = %s", (kept,))
        db.execute("SAVEPOINT b")
        customer(db, admin, company_name="inner")
        db.execute("RELEASE SAVEPOINT b")
        db.execute("ROLLBACK TO SAVEPOINT a")
        also_kept = customer(db, admin, company_name="after")
    emitted = events(db, admin, after)
    assert [(e["event_type"], e["entity"]["company_name"]) for e in emitted] == [
        ("customer.created", "kept"), ("customer.created", "after")]
    assert emitted[0]["entity"]["email"] is None
    assert emitted[1]["entity_id"] == also_kept


def test_failed_statement_inside_plpgsql_exception_block_is_forgotten(db, admin):
    after = last_event_id(db)
    db.execute("""
        DO $$
        BEGIN
            INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'outer');
            BEGIN
                INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'inner');
                PERFORM 1 / 0;
            EXCEPTION WHEN division_by_zero THEN NULL;
            END;
        END $$""".replace("%s", str(int(admin))))
    assert [e["entity"]["company_name"] for e in events(db, admin, after)] == ["outer"]


def test_two_phase_commit_emits_at_commit_prepared_only(cluster, db, admin):
    after = last_event_id(db)
    with cluster.connect() as other:
        other.execute("BEGIN")
        customer(other, admin, company_name="prepared")
        other.execute("PREPARE TRANSACTION 'billhook_2pc_commit'")
        other.execute("BEGIN")
        customer(other, admin, company_name="abandoned")
        other.execute("PREPARE TRANSACTION 'billhook_2pc_rollback'")
    assert events(db, admin, after) == [], "prepared, not committed"
    db.execute("COMMIT PREPARED 'billhook_2pc_commit'")
    db.execute("ROLLBACK PREPARED 'billhook_2pc_rollback'")
    assert [e["entity"]["company_name"] for e in events(db, admin, after)] == ["prepared"]


def test_entities_are_ordered_as_first_touched(db, admin):
    c = customer(db, admin)
    after = last_event_id(db)
    with db.transaction():
        e = expense(db, admin)
        db.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (c,))
        i = invoice(db, admin, c)
    assert [(x["event_type"], x["entity_id"]) for x in events(db, admin, after)] == [
        ("expense.created", e), ("customer.updated", c), ("invoice.created", i)]


def test_a_commit_of_many_entities_records_each_as_of_commit_in_order(db, admin):
    """One commit records the neighbours of a kind with one statement: each entity still gets its own
    JSON (built now or its last state), its events in order, and the run keeps its place among the
    other kinds."""
    c = customer(db, admin)
    sent, *doomed = [invoice(db, admin, c, reference=f"earlier {n}") for n in range(3)]
    after = last_event_id(db)
    with db.transaction():
        db.execute("UPDATE billhook.invoices SET sent_at = now(), state = 'open' WHERE id = %s", (sent,))
        bulk = [row[0] for row in db.execute(
            "INSERT INTO billhook.invoices (administration_id, customer_id, reference, discount)"
            " SELECT %s, %s, 'bulk ' || n, n FROM generate_series(1, 50) AS n RETURNING id", (admin, c)).fetchall()]
        db.execute("INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, amount, price,"
                   " tax_rate) SELECT %s, i, 'line ' || k, k, 10.05, 21 FROM unnest(%s::bigint[]) AS i,"
                   " generate_series(1, i %% 3) AS k", (admin, bulk))
        db.execute("UPDATE billhook.invoices SET state = 'late' WHERE id = %s", (bulk[7],))
        # One by one: a single DELETE takes its rows in the table's physical order.
        for d in doomed:
            db.execute("DELETE FROM billhook.invoices WHERE id = %s", (d,))
        e = expense(db, admin)
    recorded = events(db, admin, after)
    assert [(x["event_type"], x["entity_id"]) for x in recorded] == (
        [("invoice.updated", sent), ("invoice.sent", sent)]
        + [("invoice.created", i) for i in bulk]
        + [("invoice.deleted", d) for d in doomed] + [("expense.created", e)])
    now = {i: db.execute("SELECT billhook.invoice_json(%s)", (i,)).fetchone()[0] for i in [sent, *bulk]}
    for event in recorded[:2 + len(bulk)]:
        assert event["entity"] == now[event["entity_id"]], "each invoice's own entity, as of commit"
        assert event["state"] == event["entity"]["state"]
    assert [len(x["entity"]["lines"]) for x in recorded[2:2 + len(bulk)]] == [i % 3 for i in bulk]
    assert recorded[2 + 7]["state"] == "late", "created and made late in one transaction: only created"
    assert [x["entity"]["reference"] for x in recorded[-3:-1]] == ["earlier 1", "earlier 2"]
    assert recorded[-1]["entity"]["id"] == str(e)
