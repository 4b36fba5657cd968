"""A commit builds the entities of billhook's own tables from their rows (src/committing/entities/),
not with the SQL of sql/entities.sql, which stays their definition: Hypothesis generates customers,
invoices, quotations and expenses with their lines (numbers at their limits, the
first and last dates and times the tables allow, NULLs, quotes, control characters, unicode), commits
them, and every event's entity must be exactly what billhook.entity_json says of the same rows.

And the builder is what commits use; where a table is not what it reads, commits build with SQL."""

import datetime
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import new_administration
from helpers import customer, events, invoice


def texts(max_size=40):
    # Postgres text holds any character but NUL; surrogates are not characters.
    return st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=max_size)


def optional(strategy):
    return st.none() | strategy


def decimals(bound_digits=15, max_scale=30, non_negative=False):
    """numeric values below 10^bound_digits, from 1e-30 to 15 significant digits and 30 decimals."""
    unscaled = st.integers(0 if non_negative else -(10 ** bound_digits) + 1, 10 ** bound_digits - 1)
    return st.builds(lambda n, scale: Decimal(n).scaleb(-scale), unscaled, st.integers(0, max_scale)).filter(
        lambda d: abs(d) < 10 ** bound_digits)


def percentages():
    return st.one_of(st.sampled_from([Decimal(0), Decimal(100), Decimal("1e-30"), Decimal("99.999999999")]),
                     decimals(2, 12, non_negative=True).filter(lambda d: d <= 100))


DATES = st.one_of(st.sampled_from([datetime.date(1, 1, 1), datetime.date(9999, 12, 31)]),
                  st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31)))
TIMES = st.one_of(
    st.sampled_from(["0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00", "2000-01-01 00:00:00+00"]),
    st.datetimes(datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59, 999999))
    .map(lambda t: t.isoformat() + "+00"))
INT4 = st.one_of(st.sampled_from([-2 ** 31, 2 ** 31 - 1, 0]), st.integers(-2 ** 31, 2 ** 31 - 1))

CUSTOMERS = st.fixed_dictionaries({
    "company_name": texts(60).filter(lambda t: t != ""),
    **{name: optional(texts()) for name in (
        "customer_number", "firstname", "lastname", "attention", "address1", "address2", "zipcode", "city",
        "email", "phone", "tax_number", "chamber_of_commerce", "bank_account", "send_invoices_to_email")},
    "country": optional(st.sampled_from(["NL", "DE", "US"])),
    "created_at": TIMES,
})

LINES = st.lists(st.fixed_dictionaries({
    "description": texts(),
    "amount": decimals(),
    "price": decimals(),
    "tax_rate": percentages(),
    "row_order": INT4,
    "created_at": TIMES,
}), max_size=5)

DOCUMENT_FIELDS = {
    "discount": percentages(),
    "reference": optional(texts()),
    "currency": st.sampled_from(["EUR", "USD"]),
    "language": st.sampled_from(["en", "nl"]),
    "created_at": TIMES,
}

DOCUMENTS = st.one_of(
    st.tuples(st.just("invoice"), st.fixed_dictionaries({
        **DOCUMENT_FIELDS, "invoice_number": optional(texts()), "payment_conditions": optional(texts()),
        "sent_at": optional(TIMES), "paid_at": optional(TIMES), "state": st.sampled_from(["draft", "open", "paid"]),
        "invoice_date": DATES}), LINES, st.booleans()),
    st.tuples(st.just("quotation"), st.fixed_dictionaries({
        **DOCUMENT_FIELDS, "quotation_number": optional(texts()), "pre_text": optional(texts(200)),
        "sent_at": optional(TIMES), "accepted_at": optional(TIMES), "quotation_date": DATES}), LINES, st.just(False)),
    st.tuples(st.just("expense"), st.fixed_dictionaries({
        "supplier_name": texts(), "reference": optional(texts()), "description": optional(texts()),
        "expense_date": DATES, "currency": st.sampled_from(["EUR", "USD"]),
        "amount": decimals(non_negative=True),
        "tax_rate": percentages(), "state": st.sampled_from(["new", "approved", "paid"]),
        "approved_at": optional(TIMES), "paid_at": optional(TIMES), "created_at": TIMES}), st.just([]), st.just(False)),
)


def insert(conn, table, fields):
    columns = ", ".join(fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return conn.execute(f"INSERT INTO billhook.{table} ({columns}) VALUES ({placeholders}) RETURNING id",
                        list(fields.values())).fetchone()[0]


def differences(db, after_id):
    """The events after `after_id` whose entity is not what billhook.entity_json says now."""
    return db.execute(
        "SELECT e.event_type, e.entity_id, e.entity::text, billhook.entity_json(e.entity_type, e.entity_id)::text"
        " FROM billhook.events AS e WHERE e.id > %s"
        "   AND e.entity IS DISTINCT FROM billhook.entity_json(e.entity_type, e.entity_id)", (after_id,)).fetchall()


def last_event(db):
    return db.execute("SELECT coalesce(max(id), 0) FROM billhook.events").fetchone()[0]


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(customer_fields=CUSTOMERS, document=DOCUMENTS)
def test_entities_built_at_commit_are_what_the_sql_builds(db, customer_fields, document):
    kind, fields, lines, converted = document
    admin = new_administration(db)
    before = last_event(db)
    with db.transaction():
        customer_id = insert(db, "customers", {**customer_fields, "administration_id": admin})
        if kind == "expense":
            document_id = insert(db, "expenses", {**fields, "administration_id": admin})
        else:
            document_id = insert(db, f"{kind}s", {**fields, "customer_id": customer_id, "administration_id": admin})
            for line in lines:
                insert(db, f"{kind}_lines", {**line, f"{kind}_id": document_id, "administration_id": admin})
        if kind == "invoice" and converted:
            # The invoice's quotation_id: the first quotation converted to it.
            for _ in range(2):
                insert(db, "quotations", {"customer_id": customer_id, "administration_id": admin,
                                          "invoice_id": document_id})
    written = db.execute("SELECT count(*) FROM billhook.events WHERE id > %s", (before,)).fetchone()[0]
    assert written >= 2
    assert differences(db, before) == []


def test_commits_use_the_rows_not_the_sql(cluster):
    """With the SQL builders gone, commits still write their entities: they are built from the rows."""
    cluster.create_database("billhook_entities_rows")
    with cluster.connect("billhook_entities_rows") as db:
        db.autocommit = True
        admin = 1
        for kind in ("customer", "invoice", "quotation", "expense"):
            db.execute(f"ALTER FUNCTION billhook.{kind}_entities(bigint[]) RENAME TO {kind}_entities_away")
        c = customer(db, admin, city="Delft")
        i = invoice(db, admin, c, lines=[("Work", 2, "10.005", 21)])
        db.execute("UPDATE billhook.invoices SET reference = 'changed' WHERE id = %s", (i,))
        written = [(e["event_type"], e["entity"]["id"], e["entity"].get("reference")) for e in events(db, admin)]
        assert written == [("customer.created", str(c), None), ("invoice.created", str(i), None),
                           ("invoice.updated", str(i), "changed")]
        assert events(db, admin)[1]["entity"]["total_price_excl_tax"] == "20.01"


def test_a_table_not_as_expected_is_built_with_sql(cluster):
    """A column whose type the builder does not read (a DBA's varchar): commits build that kind with
    the SQL, and the entity is the same."""
    cluster.create_database("billhook_entities_sql")
    with cluster.connect("billhook_entities_sql") as db:
        db.autocommit = True
        admin = 1
        db.execute("ALTER TABLE billhook.invoices ALTER COLUMN reference TYPE varchar(200)")
        c = customer(db, admin)
        before = last_event(db)
        i = invoice(db, admin, c, reference="ref 1")
        assert events(db, admin)[-1]["entity"]["reference"] == "ref 1"
        assert differences(db, before) == []
        # The SQL builder is what wrote it: with it away, the invoice's commit fails.
        db.execute("ALTER FUNCTION billhook.invoice_entities(bigint[]) RENAME TO invoice_entities_away")
        with pytest.raises(psycopg.errors.UndefinedFunction):
            invoice(db, admin, c)
        assert events(db, admin)[-1]["entity_id"] == i


def test_large_entities_are_stored_compressed_with_lz4(db, admin):
    """An invoice with 20 lines is more than 2 kB of entity: compressed as it is written, with lz4 (this
    Postgres has it), and read back the same."""
    c = customer(db, admin)
    before = last_event(db)
    i = invoice(db, admin, c, lines=[(f"Line {n} " + "x" * 40, n, "12.50", 21) for n in range(20)])
    compression, stored, size = db.execute(
        "SELECT pg_column_compression(entity), pg_column_size(entity), octet_length(entity::text)"
        " FROM billhook.events WHERE id > %s AND entity_id = %s", (before, i)).fetchone()
    assert compression == "lz4" and stored < size
    assert differences(db, before) == []
