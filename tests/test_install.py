"""Installation concerns: privileges of application roles, pg_dump/restore, DROP/CREATE EXTENSION,
and administrations kept apart by the schema."""

import psycopg
import pytest

from helpers import customer, dump_and_restore, event_names, fan_out, invoice, quotation, webhook


def test_application_role_emits_events_without_outbox_rights(cluster, db, admin):
    db.execute("DROP ROLE IF EXISTS billhook_writer")
    db.execute("CREATE ROLE billhook_writer LOGIN")
    db.execute("GRANT USAGE ON SCHEMA billhook TO billhook_writer")
    db.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON billhook.customers, billhook.invoices,"
               " billhook.invoice_lines TO billhook_writer")
    hook = webhook(db, admin, ["*"])
    with cluster.connect(user="billhook_writer") as app:
        c = customer(app, admin)
        invoice(app, admin, c)
        app.execute("DELETE FROM billhook.invoices WHERE customer_id = %s", (c,))
        denied = []
        for sql in ("SELECT * FROM billhook.events", "SELECT token FROM billhook.webhooks",
                    "INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, entity)"
                    " VALUES (1, 'customer.deleted', 'Customer', 1, '{}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(sql)
            denied.append(sql)
    assert event_names(db, admin) == ["customer.created", "invoice.created", "invoice.deleted"]
    fan_out(db)
    assert db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s", (hook,)).fetchone()[0] == 3


def test_application_search_path_cannot_redirect_the_outbox_writes(cluster, db, admin):
    """billhook writes the outbox as its owner: an operator the application puts ahead of
    pg_catalog must not run with those rights."""
    db.execute("CREATE ROLE billhook_intruder LOGIN")
    db.execute("GRANT USAGE ON SCHEMA billhook TO billhook_intruder")
    db.execute("GRANT SELECT, INSERT ON billhook.customers TO billhook_intruder")
    db.execute("CREATE SCHEMA app AUTHORIZATION billhook_intruder")
    with cluster.connect(user="billhook_intruder") as app:
        app.execute("CREATE TABLE app.stolen (who text)")
        app.execute("CREATE FUNCTION app.steal(jsonb, text) RETURNS text LANGUAGE sql"
                    " AS $$ INSERT INTO app.stolen VALUES (current_user) RETURNING '1' $$")
        app.execute("CREATE OPERATOR app.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = app.steal)")
        app.execute("SET search_path = app, pg_catalog")
        assert app.execute("SELECT '{}'::jsonb ->> 'x'").fetchone()[0] == "1", "the operator is in effect"
        app.execute("DELETE FROM app.stolen")
        customer(app, admin)
        assert app.execute("SELECT count(*) FROM app.stolen").fetchone()[0] == 0
    assert event_names(db, admin) == ["customer.created"]
    db.execute("DROP OWNED BY billhook_intruder CASCADE")
    db.execute("DROP ROLE billhook_intruder")


def test_documents_cannot_mix_administrations(db, admin):
    other = db.execute("INSERT INTO billhook.administrations (name) VALUES ('other') RETURNING id").fetchone()[0]
    foreign_customer = customer(db, other)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        invoice(db, admin, foreign_customer)
    own = invoice(db, other, foreign_customer)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, price)"
                   " VALUES (%s, %s, 'x', 1)", (admin, own))


def test_states_are_constrained(db, admin):
    c = customer(db, admin)
    with pytest.raises(psycopg.errors.CheckViolation):
        invoice(db, admin, c, state="payed")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO billhook.expenses (administration_id, supplier_name, amount, state)"
                   " VALUES (%s, 's', 1, 'rejected')", (admin,))


def dump_counts(conn):
    tables = ["administrations", "customers", "invoices", "invoice_lines", "quotations", "quotation_lines",
              "expenses", "recurring_invoices", "recurring_invoice_lines", "webhooks", "events", "deliveries"]
    return {t: conn.execute(f"SELECT count(*), coalesce(max(id), 0) FROM billhook.{t}").fetchone() for t in tables}


def test_pg_dump_and_restore_keep_every_row_and_sequence(cluster):
    cluster.create_database("billhook_dump_source")
    cluster.create_database("billhook_dump_target", with_extension=False)
    with cluster.connect("billhook_dump_source") as src:
        admin = src.execute("INSERT INTO billhook.administrations (name) VALUES ('dumped') RETURNING id").fetchone()[0]
        hook = src.execute("SELECT id, token, signing_secret FROM billhook.create_webhook('https://example.com', '{*}', %s, verify => false)",
                           (admin,)).fetchone()
        c = customer(src, admin)
        invoice(src, admin, c, lines=[("a", 1, 1, 0), ("b", 2, 2, 0)])
        quotation(src, admin, c)
        src.execute("INSERT INTO billhook.expenses (administration_id, supplier_name, amount) VALUES (%s, 's', 1)", (admin,))
        src.execute("INSERT INTO billhook.recurring_invoices (administration_id, customer_id, frequency) VALUES (%s, %s, 'monthly')",
                    (admin, c))
        src.execute("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description, price)"
                    " VALUES (%s, currval('billhook.recurring_invoices_id_seq'), 'fee', 10)", (admin,))
        src.execute("CREATE SCHEMA app")
        src.execute("CREATE TABLE app.orders (id bigserial PRIMARY KEY, tenant bigint)")
        src.execute("SELECT billhook.track_table('app.orders', 'Order', 'order', administration_column => 'tenant')")
        src.execute("SELECT billhook.register_event_type('parcel.sent', 'parcel')")
        src.execute("INSERT INTO app.orders (tenant) VALUES (%s)", (admin,))
        fan_out(src)
        before = dump_counts(src)
        keys = src.execute("SELECT idempotency_key FROM billhook.deliveries ORDER BY id").fetchall()

    dump_and_restore(cluster, "billhook_dump_source", "billhook_dump_target")

    with cluster.connect("billhook_dump_target") as dst:
        assert dump_counts(dst) == before
        assert [t for t, (count, _) in before.items() if count == 0] == []
        assert dst.execute("SELECT id, token, signing_secret FROM billhook.webhooks WHERE id = %s", (hook[0],)).fetchone() == hook
        assert dst.execute("SELECT idempotency_key FROM billhook.deliveries ORDER BY id").fetchall() == keys
        # Sequences continue after the restored rows, and the emitter works in the restored database.
        new_customer = customer(dst, admin)
        assert new_customer > before["customers"][1]
        assert event_names(dst, admin)[-1] == "customer.created"
        assert dst.execute("SELECT max(id) FROM billhook.events").fetchone()[0] > before["events"][1]
        # Tracked tables and registered event types come back, and so does the tracking.
        assert dst.execute("SELECT relation::text, entity_type FROM billhook.tracked_tables").fetchall() == [
            ("app.orders", "Order")]
        assert dst.execute("SELECT name FROM billhook.event_types WHERE NOT built_in ORDER BY name").fetchall() == [
            ("order.created",), ("order.deleted",), ("order.updated",), ("parcel.sent",)]
        dst.execute("INSERT INTO app.orders (tenant) VALUES (%s)", (admin,))
        assert event_names(dst, admin)[-1] == "order.created"


def test_drop_and_create_extension_in_a_live_session(cluster):
    cluster.create_database("billhook_recreate")
    with cluster.connect("billhook_recreate") as conn:
        customer(conn, 1)
        conn.execute("DROP EXTENSION billhook")
        conn.execute("CREATE EXTENSION billhook")
        customer(conn, 1)
        assert event_names(conn, 1) == ["customer.created"]


def test_changes_before_drop_extension_in_the_same_transaction_commit(cluster):
    cluster.create_database("billhook_dropped")
    with cluster.connect("billhook_dropped") as conn:
        with conn.transaction():
            customer(conn, 1)
            conn.execute("DROP EXTENSION billhook CASCADE")
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == 0
        conn.execute("CREATE EXTENSION billhook")
        customer(conn, 1)
        assert event_names(conn, 1) == ["customer.created"]


def test_event_triggers_and_entity_json_follow_the_catalog(db, admin):
    """billhook.event_tables() (the catalog's) names exactly the tables the event triggers are on,
    and entity_json builds every kind the catalog has events of with that kind's own function."""
    expected = set()
    for table, entity_type, parent_column, deletion_is_event in db.execute(
            "SELECT table_name, entity_type, parent_column, deletion_is_event FROM billhook.event_tables()"):
        arguments = (entity_type, parent_column) if parent_column else (entity_type,)
        expected |= {(table, "record_change", arguments), (table, "record_change_update", arguments)}
        if deletion_is_event:
            expected.add((table, "capture_deleted_entity", (entity_type,)))
    triggers = {
        (table, name, tuple(a.decode() for a in bytes(arguments).split(b"\0")[:-1]))
        for table, name, arguments in db.execute(
            "SELECT c.relname, t.tgname, t.tgargs FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'billhook'::regnamespace"
            "   AND t.tgfoid IN ('billhook.record_change'::regproc, 'billhook.capture_deleted_entity'::regproc)")
    }
    assert triggers == expected
    assert {t[0] for t in expected} == {"customers", "invoices", "invoice_lines", "quotations", "quotation_lines",
                                        "expenses"}

    c = customer(db, admin)
    rows = {
        "customer": c,
        "invoice": invoice(db, admin, c),
        "quotation": quotation(db, admin, c),
        "expense": db.execute("INSERT INTO billhook.expenses (administration_id, supplier_name, amount)"
                              " VALUES (%s, 'S', 10) RETURNING id", (admin,)).fetchone()[0],
        "recurring_invoice": db.execute("INSERT INTO billhook.recurring_invoices (administration_id, customer_id,"
                                        " frequency) VALUES (%s, %s, 'monthly') RETURNING id", (admin, c)).fetchone()[0],
    }
    # Every category of the invoicing schema has an entity; the operational events are about
    # webhooks and deliveries, built by the worker.
    categories = {r[0] for r in db.execute("SELECT category FROM billhook.event_types")}
    assert categories == set(rows) | {"operations"}
    for category, entity_id in rows.items():
        entity_type = category.title().replace("_", "")
        via_dispatch, direct = db.execute(
            f"SELECT billhook.entity_json(%s, %s), billhook.{category}_json(%s)", (entity_type, entity_id, entity_id)
        ).fetchone()
        assert via_dispatch is not None and via_dispatch == direct, category
        assert via_dispatch["id"] == str(entity_id)


def test_every_table_view_column_and_function_of_the_extension_says_what_it_is(db):
    """What \\d+, \\df+, pgAdmin and DBeaver show a DBA: a COMMENT on every table, view, column
    and function."""
    missing = db.execute(
        "SELECT c.oid::regclass::text FROM pg_class AS c WHERE c.relnamespace = 'billhook'::regnamespace"
        " AND c.relkind IN ('r', 'p', 'v') AND obj_description(c.oid, 'pg_class') IS NULL"
        " UNION ALL SELECT c.oid::regclass::text || '.' || a.attname FROM pg_class AS c"
        " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = 'billhook'::regnamespace AND c.relkind IN ('r', 'p', 'v')"
        " AND col_description(c.oid, a.attnum) IS NULL"
        " UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc AS p WHERE p.pronamespace = 'billhook'::regnamespace"
        " AND obj_description(p.oid, 'pg_proc') IS NULL ORDER BY 1").fetchall()
    assert missing == []


def test_the_catalog_page_is_what_the_comments_say(cluster):
    """docs/catalog.md is made from the comments (scripts/catalog.py): it must not drift from them."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    cluster.create_database("billhook_catalog")
    try:
        made = subprocess.run([sys.executable, str(root / "scripts" / "catalog.py"), cluster.dsn("billhook_catalog")],
                              check=True, capture_output=True, text=True).stdout
    finally:
        with cluster.connect("postgres") as conn:
            conn.execute("DROP DATABASE billhook_catalog")
    assert made == (root / "docs" / "catalog.md").read_text(), \
        "docs/catalog.md is out of date: .venv/bin/python scripts/catalog.py DSN > docs/catalog.md"
