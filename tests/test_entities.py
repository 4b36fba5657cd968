"""A commit builds the entities of billhook's own tables from their rows (src/committing/entities/),
not with the SQL of sql/entities.sql, which stays their definition: Hypothesis generates customers,
invoices, quotations and expenses with their lines (numbers at their limits, the
first and last dates and times the tables allow, NULLs, quotes, control characters, unicode), commits
them, and every event's entity must be exactly what billhook.entity_json says of the same rows.

And the builder is what commits use; where a table is not what it reads, commits build with SQL."""

import datetime
import threading
import time
from contextlib import contextmanager
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import new_administration
from helpers import customer, events, expense, invoice, quotation


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
    """The events after `after_id` whose entity is not what billhook.entity_json says now, compared as
    jsonb's text (so 1.0 and 1 differ, as they would for a receiver)."""
    return db.execute(
        "SELECT e.event_type, e.entity_id, e.entity::text, billhook.entity_json(e.entity_type, e.entity_id)::text"
        " FROM billhook.events AS e WHERE e.id > %s"
        "   AND e.entity::text IS DISTINCT FROM billhook.entity_json(e.entity_type, e.entity_id)::text",
        (after_id,)).fetchall()


def latest_differences(db, after_id):
    """differences() of each entity's last event after `after_id` (earlier ones hold older states)."""
    return db.execute(
        "SELECT e.event_type, e.entity_id, e.entity::text, billhook.entity_json(e.entity_type, e.entity_id)::text"
        " FROM billhook.events AS e WHERE e.id IN (SELECT max(id) FROM billhook.events WHERE id > %s"
        "                                          GROUP BY entity_type, entity_id)"
        "   AND e.entity::text IS DISTINCT FROM billhook.entity_json(e.entity_type, e.entity_id)::text",
        (after_id,)).fetchall()


def own_database(cluster, name, version=None):
    cluster.create_database(name, with_extension=version is None)
    db = cluster.connect(name)
    db.autocommit = True
    if version:
        db.execute(f"CREATE EXTENSION billhook VERSION '{version}'")
    return db


KINDS = ("customer", "invoice", "quotation", "expense")


@contextmanager
def builders_away(db):
    """The SQL builders renamed: a commit that would build an entity with SQL fails with 42883 (the
    <kind>_json functions it falls back to are PL/pgSQL, which finds them by name when it runs)."""
    for kind in KINDS:
        db.execute(f"ALTER FUNCTION billhook.{kind}_entities(bigint[]) RENAME TO {kind}_entities_away")
    try:
        yield
    finally:
        for kind in KINDS:
            db.execute(f"ALTER FUNCTION billhook.{kind}_entities_away(bigint[]) RENAME TO {kind}_entities")


def last_event(db):
    return db.execute("SELECT coalesce(max(id), 0) FROM billhook.events").fetchone()[0]


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(customer_fields=CUSTOMERS, document=DOCUMENTS)
def test_entities_built_at_commit_are_what_the_sql_builds(db, customer_fields, document):
    kind, fields, lines, converted = document
    admin = new_administration(db)
    before = last_event(db)
    # Built from the rows, not by the SQL it is compared with: a commit that fell back to it fails.
    with builders_away(db), db.transaction():
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
    """With the SQL builders gone, commits still write the entities of every kind: they are built from
    the rows. Put back, the SQL says the same of each entity's last event."""
    with own_database(cluster, "billhook_entities_rows") as db:
        admin = 1
        with builders_away(db):
            c = customer(db, admin, city="Delft")
            q = quotation(db, admin, c)
            i = invoice(db, admin, c, lines=[("Work", 2, "10.005", 21)])
            db.execute("UPDATE billhook.quotations SET invoice_id = %s WHERE id = %s", (i, q))
            db.execute("UPDATE billhook.invoices SET reference = 'changed' WHERE id = %s", (i,))
            e = expense(db, admin, amount="100.00", tax_rate="21")
        written = events(db, admin)
        assert {(x["entity_type"], x["entity_id"]) for x in written} == {
            ("Customer", c), ("Quotation", q), ("Invoice", i), ("Expense", e)}
        last_invoice = [x for x in written if x["entity_type"] == "Invoice"][-1]["entity"]
        assert (last_invoice["reference"], last_invoice["quotation_id"]) == ("changed", str(q))
        assert last_invoice["total_price_excl_tax"] == "20.01"
        assert written[-1]["entity"]["total_price_incl_tax"] == "121.00"
        assert latest_differences(db, 0) == []


def test_documents_of_one_commit_share_their_customers(cluster):
    """One commit of several invoices and quotations of two customers, one of them changed after
    some of its documents: each document carries its customer as of commit (a customer is read once
    per commit and nested in each of its documents)."""
    with own_database(cluster, "billhook_entities_shared") as db:
        admin = 1
        first, second = customer(db, admin, city="Delft"), customer(db, admin, city="Leiden")
        before = last_event(db)
        with builders_away(db), db.transaction():
            documents = [invoice(db, admin, first), quotation(db, admin, second), invoice(db, admin, second)]
            db.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (first,))
            documents += [invoice(db, admin, first, lines=[]), quotation(db, admin, first)]
        written = [x for x in events(db, admin, before) if x["entity_type"] in ("Invoice", "Quotation")]
        assert sorted(x["entity_id"] for x in written) == sorted(documents)
        assert [x["entity"]["customer"]["city"] for x in written] == ["Utrecht", "Leiden", "Leiden", "Utrecht",
                                                                       "Utrecht"]
        assert [len(x["entity"]["lines"]) for x in written] == [1, 1, 1, 0, 1]
        assert differences(db, before) == []


def test_an_error_while_building_fails_that_commit_only(cluster):
    """Numeric arithmetic that overflows while an entity is built (line amounts beyond the checks a
    DBA dropped) fails the commit with Postgres's error, as the SQL would; the session's next commit
    builds its entity as ever."""
    with own_database(cluster, "billhook_entities_error") as db:
        admin = 1
        c = customer(db, admin)
        db.execute("ALTER TABLE billhook.invoice_lines DROP CONSTRAINT invoice_lines_amount_check,"
                   " DROP CONSTRAINT invoice_lines_price_check")
        before = last_event(db)
        huge = "9" * 100_000
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            invoice(db, admin, c, lines=[("Too much", huge, huge, 21)])
        assert db.execute("SELECT count(*) FROM billhook.invoices").fetchone()[0] == 0
        i = invoice(db, admin, c, lines=[("Fine", 2, "10.50", 21)])
        [created] = [x for x in events(db, admin, before) if x["entity_type"] == "Invoice"]
        assert (created["entity_id"], created["entity"]["total_price_incl_tax"]) == (i, "25.41")
        assert differences(db, before) == []


def test_a_table_not_as_expected_is_built_with_sql(cluster):
    """A column whose type the builder does not read (a DBA's varchar): commits build that kind with
    the SQL, and the entity is the same."""
    with own_database(cluster, "billhook_entities_sql") as db:
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
    """An invoice with 20 lines is more than 2 kB of entity: compressed as it is written, with lz4 where
    this Postgres has it, and read back the same."""
    lz4 = db.execute("SELECT attcompression = 'l' FROM pg_attribute"
                     " WHERE attrelid = 'billhook.events'::regclass AND attname = 'entity'").fetchone()[0]
    assert lz4 == (db.execute("SELECT 'lz4' = ANY (enumvals) FROM pg_settings"
                              " WHERE name = 'default_toast_compression'").fetchone()[0])
    c = customer(db, admin)
    before = last_event(db)
    i = invoice(db, admin, c, lines=[(f"Line {n} " + "x" * 40, n, "12.50", 21) for n in range(20)])
    compression, compressed = db.execute(
        "SELECT pg_column_compression(entity), pg_column_size(entity) < pg_column_size(entity::text::jsonb)"
        " FROM billhook.events WHERE id > %s AND entity_id = %s", (before, i)).fetchone()
    assert compressed and compression == ("lz4" if lz4 else "pglz")
    assert differences(db, before) == []


def test_times_outside_the_checked_years_are_written_by_to_char(cluster):
    """With the range checks dropped (as before 0.12.0), an infinite time and one of year 10000 come out
    of the rows as billhook.json_time writes them: null, and five digits."""
    with own_database(cluster, "billhook_entities_times") as db:
        for column in ("sent_at", "paid_at"):
            db.execute(f"ALTER TABLE billhook.invoices DROP CONSTRAINT invoices_{column}_in_range")
        c = customer(db, 1)
        before = last_event(db)
        with builders_away(db):
            i = invoice(db, 1, c, sent_at="infinity", paid_at="10000-01-01 00:00:00+00")
        entity = events(db, 1)[-1]["entity"]
        assert (entity["id"], entity["sent_at"], entity["paid_at"]) == (str(i), None, "10000-01-01T00:00:00.000000Z")
        assert differences(db, before) == []


def test_a_session_follows_its_tables_as_they_change(cluster):
    """In one session, as the tables change under it: the key index of lines dropped (the SQL builds
    the entity), made again under another name (the rows again), a column dropped and added back at
    another place (the rows), a line table with an inheritance child (the SQL, which reads the child
    too), a NULL where the builder expects none (the SQL). Each commit's entity is what the SQL says."""
    with own_database(cluster, "billhook_entities_changes") as db:
        c = customer(db, 1)
        steps = [
            ([], "rows"),
            (["DROP INDEX billhook.invoice_lines_invoice_id_idx"], "sql"),
            (["CREATE INDEX lines_by_invoice ON billhook.invoice_lines (invoice_id)"], "rows"),
            (["ALTER TABLE billhook.invoices DROP COLUMN payment_conditions",
              "ALTER TABLE billhook.invoices ADD COLUMN payment_conditions text"], "rows"),
            (["CREATE TABLE public.archived_lines () INHERITS (billhook.invoice_lines)"], "sql"),
            (["DROP TABLE public.archived_lines",
              "ALTER TABLE billhook.invoice_lines ALTER COLUMN row_order DROP NOT NULL"], "sql"),
        ]

        def commit_an_invoice():
            with db.transaction():
                i = invoice(db, 1, c, lines=[("Work", 3, "9.99", 21), ("More", 1, "0.01", 9)],
                            payment_conditions="30 days")
                db.execute("INSERT INTO billhook.invoice_lines (invoice_id, description, price, row_order)"
                           " VALUES (%s, 'x', 1, 5)", (i,))
                if any("row_order" in statement for statement in step):
                    # The first line last: NULLs sort after every row_order.
                    db.execute("UPDATE billhook.invoice_lines SET row_order = NULL WHERE id ="
                               " (SELECT min(id) FROM billhook.invoice_lines WHERE invoice_id = %s)", (i,))
                if any("archived_lines" in statement and "CREATE" in statement for statement in step):
                    db.execute("INSERT INTO public.archived_lines (id, invoice_id, description, price)"
                               " VALUES (1000000 + %s, %s, 'old', 2)", (i, i))
            return i

        for step, builder in steps:
            for statement in step:
                db.execute(statement)
            before = last_event(db)
            with builders_away(db):
                if builder == "rows":
                    commit_an_invoice()
                else:
                    with pytest.raises(psycopg.errors.UndefinedFunction):
                        commit_an_invoice()
            if builder == "sql":
                commit_an_invoice()
            assert latest_differences(db, before) == [], step
            assert events(db, 1)[-1]["entity"]["payment_conditions"] == "30 days"


def test_what_deferred_triggers_change_is_in_the_entity(cluster):
    """A deferred trigger changes the customer just before the commit's hook runs: the invoice's entity
    has the change."""
    with own_database(cluster, "billhook_entities_deferred") as db:
        db.execute("CREATE FUNCTION public.move() RETURNS trigger LANGUAGE plpgsql AS $$"
                   " BEGIN UPDATE billhook.customers SET city = 'Utrecht' WHERE id = NEW.customer_id; RETURN NULL; END $$")
        db.execute("CREATE CONSTRAINT TRIGGER move AFTER INSERT ON billhook.invoices"
                   " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.move()")
        c = customer(db, 1, city="Delft")
        before = last_event(db)
        with builders_away(db):
            invoice(db, 1, c)
        created = [x for x in events(db, 1) if x["event_type"] == "invoice.created"][-1]
        assert created["entity"]["customer"]["city"] == "Utrecht"
        assert latest_differences(db, before) == []


def test_an_install_not_updated_builds_with_its_own_sql(cluster):
    """The rows are read for an install at the library's version only: before its update an install's
    commits build with its SQL; after it, with the rows, in the same session; a new install of the old
    version, and an update rolled back after the commit's hook, go back to the SQL."""
    with own_database(cluster, "billhook_entities_versions", version="0.12.0") as db:
        c = customer(db, 1)

        def invoice_built_from_rows():
            with builders_away(db):
                try:
                    invoice(db, 1, c)
                    return True
                except psycopg.errors.UndefinedFunction:
                    return False

        assert not invoice_built_from_rows()
        # Updated in a transaction that commits its own invoice, then rolled back after the hook ran.
        db.execute("BEGIN")
        db.execute("ALTER EXTENSION billhook UPDATE")
        db.execute("INSERT INTO billhook.invoices (customer_id) VALUES (%s)", (c,))
        db.execute("PREPARE TRANSACTION 'billhook_update'")
        db.execute("ROLLBACK PREPARED 'billhook_update'")
        assert not invoice_built_from_rows()
        db.execute("ALTER EXTENSION billhook UPDATE")
        assert invoice_built_from_rows()
        db.execute("DROP EXTENSION billhook CASCADE")
        db.execute("CREATE EXTENSION billhook VERSION '0.12.0'")
        c = customer(db, 1)
        assert not invoice_built_from_rows()


def test_an_entity_changed_later_in_its_transaction_is_written_as_of_commit(db, admin):
    """Changes after the row's own, to its customer and lines, are in the entity."""
    c = customer(db, admin, city="Delft")
    before = last_event(db)
    with db.transaction():
        i = invoice(db, admin, c)
        db.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (c,))
        db.execute("INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, price)"
                   " VALUES (%s, %s, 'late line', 5)", (admin, i))
    created = [x for x in events(db, admin, before) if x["entity_type"] == "Invoice"]
    assert [x["event_type"] for x in created] == ["invoice.created"]
    assert created[0]["entity"]["customer"]["city"] == "Utrecht"
    assert [line["description"] for line in created[0]["entity"]["lines"]] == ["Project X", "late line"]
    assert differences(db, before) == []


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_the_entity_is_what_the_committing_transaction_sees(cluster, db, admin, isolation):
    """A customer changed and committed by another session while a transaction is open: the invoice
    that transaction changes carries the customer as that transaction sees it at commit (the new one
    in READ COMMITTED, its snapshot's in the others), exactly as billhook.invoice_json says there.
    (That each run of one commit takes a snapshot of its own in READ COMMITTED is not shown here.)"""
    c = customer(db, admin, city="Delft")
    i = invoice(db, admin, c)
    with cluster.connect() as writer, cluster.connect() as other:
        writer.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        writer.execute("SELECT count(*) FROM billhook.customers")
        other.execute("UPDATE billhook.customers SET city = 'Utrecht' WHERE id = %s", (c,))
        other.commit()
        writer.execute("UPDATE billhook.invoices SET reference = 'seen' WHERE id = %s", (i,))
        seen = writer.execute("SELECT billhook.invoice_json(%s)::text", (i,)).fetchone()[0]
        before = last_event(db)
        writer.commit()
    [updated] = events(db, admin, before)
    assert db.execute("SELECT entity::text FROM billhook.events WHERE id = %s", (updated["id"],)).fetchone()[0] == seen
    assert updated["entity"]["customer"]["city"] == ("Utrecht" if isolation == "READ COMMITTED" else "Delft")


def test_a_commit_that_waits_behind_a_rewrite_sees_the_rewritten_table(cluster):
    """A commit that reads invoice lines only for its invoice's entity waits while another session
    rewrites their table (a column added with a volatile default), and reads it after: its snapshot is
    taken once it holds the lock, as a statement's is, so the rewritten lines are in the entity."""
    with own_database(cluster, "billhook_entities_rewrite") as db:
        c = customer(db, 1, city="Delft")
        i = invoice(db, 1, c)
        before = last_event(db)
        with cluster.connect("billhook_entities_rewrite") as rewriter, \
                cluster.connect("billhook_entities_rewrite") as committer:
            rewriter.execute("BEGIN")
            rewriter.execute("ALTER TABLE billhook.invoice_lines ADD COLUMN probe float8 DEFAULT random()")
            pid = committer.execute("SELECT pg_backend_pid()").fetchone()[0]
            failures = []

            def update_the_invoice():
                try:
                    committer.execute("UPDATE billhook.invoices SET reference = 'waited' WHERE id = %s", (i,))
                except psycopg.Error as e:
                    failures.append(e)

            update = threading.Thread(target=update_the_invoice)
            update.start()
            waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"
            deadline = time.monotonic() + 10
            while not db.execute(waiting, (pid,)).fetchone()[0]:
                assert time.monotonic() < deadline and not failures, f"the commit never waited: {failures}"
                time.sleep(0.05)
            rewriter.execute("COMMIT")
            update.join(10)
        [updated] = events(db, 1, before)
        assert (updated["event_type"], updated["entity"]["reference"]) == ("invoice.updated", "waited")
        assert [line["description"] for line in updated["entity"]["lines"]] == ["Project X"]
        assert differences(db, before) == []
