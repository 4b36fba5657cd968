"""Tenant isolation (billhook.enable_tenant_isolation) and the roles of billhook.create_roles, with
real login roles: alice and bob write for administrations A and B as billhook_app, analyst reads for
A as billhook_reader. Every session names its administration in billhook.administration_id."""

import json
import time
from dataclasses import dataclass
from typing import Callable

import psycopg
import pytest

from conftest import new_administration
from helpers import VERSION, create_webhook, customer, dump_and_restore, invoice, wait_until

LOGINS = {"alice": "billhook_app", "bob": "billhook_app", "analyst": "billhook_reader"}


@dataclass
class Tenants:
    a: int
    b: int
    connect: Callable[..., psycopg.Connection]


def isolate(cluster, conn, dbname):
    """Roles, isolation and two administrations in dbname; returns what the tests need and a way
    to undo all but the administrations."""
    conn.execute("SELECT billhook.create_roles()")
    conn.execute("SELECT billhook.enable_tenant_isolation()")
    for name, role in LOGINS.items():
        conn.execute(f"DROP ROLE IF EXISTS tenant_{name}")
        conn.execute(f"CREATE ROLE tenant_{name} LOGIN IN ROLE {role}")

    def connect(name, administration=None):
        options = {} if administration is None else {"options": f"-c billhook.administration_id={administration}"}
        return cluster.connect(dbname, user=f"tenant_{name}", **options)

    def undo():
        conn.execute("SELECT billhook.disable_tenant_isolation()")
        for name in LOGINS:
            conn.execute(f"DROP ROLE tenant_{name}")

    return Tenants(new_administration(conn), new_administration(conn), connect), undo


@pytest.fixture
def tenants(cluster, worker_db):
    t, undo = isolate(cluster, worker_db, "billhook_worker")
    yield t
    undo()


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    return raised.value


def test_isolation_covers_every_table_with_tenant_rows_and_is_undone_by_disable(worker_db):
    worker_db.execute("SELECT billhook.enable_tenant_isolation()")
    try:
        assert worker_db.execute("SELECT billhook.enable_tenant_isolation()").fetchall()  # again: no error
        isolated = dict(worker_db.execute("SELECT table_name::text, enabled FROM billhook.tenant_isolation()").fetchall())
        # Every table of billhook with an administration_id or a webhook_id is covered, and only
        # the catalogs and the worker's own state are not. The outbox's partitions are read through
        # their tables: no role is granted them (test_partitions.py).
        with_tenant_rows = {r[0] for r in worker_db.execute(
            "SELECT DISTINCT 'billhook.' || c.relname FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid"
            " WHERE c.relnamespace = 'billhook'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND a.attname IN ('administration_id', 'webhook_id')").fetchall()}
        # fan_out_owed is the fan-out's own state: no role is granted it.
        assert set(isolated) == (with_tenant_rows - {"billhook.fan_out_owed"}) | {"billhook.administrations"}
        assert not worker_db.execute("SELECT coalesce(bool_or(has_table_privilege(r.oid, 'billhook.fan_out_owed',"
                                     " 'SELECT')), false) FROM pg_roles AS r"
                                     " WHERE r.rolname IN ('billhook_reader', 'billhook_app')").fetchone()[0]
        assert all(isolated.values())
        policies = worker_db.execute("SELECT count(*) FROM pg_policy WHERE polname = 'tenant_isolation'").fetchone()[0]
        assert policies == len(isolated)
    finally:
        worker_db.execute("SELECT billhook.disable_tenant_isolation()")
    assert not any(r[0] for r in worker_db.execute("SELECT enabled FROM billhook.tenant_isolation()").fetchall())
    assert worker_db.execute("SELECT count(*) FROM pg_policy WHERE polname = 'tenant_isolation'").fetchone()[0] == 0


def test_a_writer_reads_and_writes_only_its_administration(worker_db, tenants):
    bobs_customer = worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name)"
                                      " VALUES (%s, 'Bob B.V.') RETURNING id", (tenants.b,)).fetchone()[0]
    bobs_invoice = worker_db.execute("INSERT INTO billhook.invoices (administration_id, customer_id)"
                                     " VALUES (%s, %s) RETURNING id", (tenants.b, bobs_customer)).fetchone()[0]
    with tenants.connect("alice", tenants.a) as alice:
        # New rows land in the session's administration without naming it.
        mine = alice.execute("INSERT INTO billhook.customers (company_name) VALUES ('Alice B.V.') RETURNING id").fetchone()[0]
        invoice = alice.execute("INSERT INTO billhook.invoices (customer_id) VALUES (%s) RETURNING id", (mine,)).fetchone()[0]
        alice.execute("INSERT INTO billhook.invoice_lines (invoice_id, description, price) VALUES (%s, 'Work', 10)", (invoice,))
        for table in ("customers", "invoices", "invoice_lines", "events", "administrations"):
            column = "id" if table == "administrations" else "administration_id"
            assert alice.execute(f"SELECT DISTINCT {column} FROM billhook.{table}").fetchall() == [(tenants.a,)], table
        assert alice.execute("SELECT billhook.invoice_json(%s)", (bobs_invoice,)).fetchone()[0] is None
        # Bob's rows are out of reach: changes find nothing, and rows for B are refused.
        assert alice.execute("UPDATE billhook.customers SET company_name = 'x' WHERE id = %s", (bobs_customer,)).rowcount == 0
        assert alice.execute("DELETE FROM billhook.invoices WHERE id = %s", (bobs_invoice,)).rowcount == 0
        for sql, params in (
            ("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'x')", (tenants.b,)),
            ("UPDATE billhook.customers SET administration_id = %s WHERE id = %s", (tenants.b, mine)),
            ("INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, price)"
             " VALUES (%s, %s, 'x', 1)", (tenants.b, bobs_invoice)),
        ):
            assert isinstance(error_of(alice, sql, params), psycopg.errors.InsufficientPrivilege), sql
    assert worker_db.execute("SELECT administration_id FROM billhook.customers WHERE id = %s", (mine,)).fetchone() == (tenants.a,)
    assert worker_db.execute("SELECT company_name FROM billhook.customers WHERE administration_id = %s",
                             (tenants.b,)).fetchall() == [("Bob B.V.",)]
    assert worker_db.execute("SELECT count(*) FROM billhook.invoices WHERE id = %s", (bobs_invoice,)).fetchone() == (1,)
    assert worker_db.execute("SELECT count(*) FROM billhook.invoice_lines WHERE administration_id = %s",
                             (tenants.b,)).fetchone() == (0,)


def test_a_session_without_a_valid_administration_fails_instead_of_seeing_nothing(worker_db, tenants):
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'x')", (tenants.a,))
    with tenants.connect("alice") as unset:
        error = error_of(unset, "SELECT * FROM billhook.customers")
        assert isinstance(error, psycopg.errors.InsufficientPrivilege)
        assert "billhook.administration_id is not set" in str(error)
        assert isinstance(error_of(unset, "INSERT INTO billhook.customers (company_name) VALUES ('x')"),
                          psycopg.errors.InsufficientPrivilege)
    with tenants.connect("alice") as bad:
        bad.execute("SET billhook.administration_id = '1 OR true'")
        error = error_of(bad, "SELECT * FROM billhook.customers")
        assert isinstance(error, psycopg.errors.InvalidParameterValue)
        assert 'invalid billhook.administration_id "1 OR true"' in str(error)
    # SET LOCAL: one transaction's administration.
    with tenants.connect("alice") as alice:
        with alice.transaction():
            alice.execute("SELECT set_config('billhook.administration_id', %s, true)", (str(tenants.a),))
            assert alice.execute("SELECT count(*) FROM billhook.customers").fetchone() == (1,)
        assert isinstance(error_of(alice, "SELECT * FROM billhook.customers"), psycopg.errors.InsufficientPrivilege)


def test_the_api_answers_another_administrations_webhook_as_missing(worker_db, tenants, receiver):
    bobs_hook = create_webhook(worker_db, tenants.b, receiver.url("/tenants-api-b"), ["customer"])
    worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'Bob')", (tenants.b,))
    receiver.wait_for("/tenants-api-b", 1)
    bobs_delivery = wait_until(lambda: worker_db.execute(
        "SELECT id FROM billhook.deliveries WHERE webhook_id = %s AND status = 'succeeded'", (bobs_hook[0],)).fetchone())[0]
    before = worker_db.execute("SELECT w.*, d.* FROM billhook.webhooks AS w, billhook.deliveries AS d"
                               " WHERE w.id = %s AND d.id = %s", (bobs_hook[0], bobs_delivery)).fetchone()
    missing = worker_db.execute("SELECT coalesce(max(id), 0) + 1000 FROM billhook.webhooks").fetchone()[0]
    calls = ["update_webhook(%s, url => 'http://127.0.0.1:9/stolen')", "delete_webhook(%s)", "rotate_token(%s)",
             "rotate_secret(%s)", "enable_webhook(%s)", "disable_webhook(%s)", "reset_webhook_settings(%s)",
             "replay(%s, now() - interval '1 day', only_failed => false)"]
    with tenants.connect("alice", tenants.a) as alice:
        for call in calls:
            for hook_id in (bobs_hook[0], missing):
                error = error_of(alice, f"SELECT billhook.{call}", (hook_id,))
                assert isinstance(error, psycopg.errors.NoDataFound), call
                # Bob's webhook reads exactly like one that does not exist.
                assert str(error).splitlines()[0] == f"webhook {hook_id} does not exist", call
        error = error_of(alice, "SELECT billhook.redeliver(%s)", (bobs_delivery,))
        assert isinstance(error, psycopg.errors.NoDataFound)
        assert str(error).splitlines()[0] == f"delivery {bobs_delivery} does not exist"
        error = error_of(alice, "SELECT billhook.create_webhook(%s, administration_id => %s, verify => false)",
                         (receiver.url("/tenants-api-stolen"), tenants.b))
        assert isinstance(error, psycopg.errors.InsufficientPrivilege)
        # Her own webhook: registered in her administration, with the registration check.
        mine = alice.execute("SELECT id, administration_id, signing_secret FROM billhook.create_webhook(%s, '{customer}')",
                             (receiver.url("/tenants-api-a"),)).fetchone()
        assert mine[1] == tenants.a and mine[2].startswith("whsec_")
        assert json.loads(receiver.wait_for("/tenants-api-a", 1)[0].body)["action"] == "webhook.verification"
        assert alice.execute("SELECT id FROM billhook.rotate_token(%s)", (mine[0],)).fetchone() == (mine[0],)
    after = worker_db.execute("SELECT w.*, d.* FROM billhook.webhooks AS w, billhook.deliveries AS d"
                              " WHERE w.id = %s AND d.id = %s", (bobs_hook[0], bobs_delivery)).fetchone()
    assert after == before
    assert worker_db.execute("SELECT count(*) FROM billhook.webhooks WHERE administration_id = %s",
                             (tenants.b,)).fetchone() == (1,)


def test_events_of_isolated_writers_reach_their_own_administrations_webhooks_only(worker_db, tenants, receiver):
    hook_a = create_webhook(worker_db, tenants.a, receiver.url("/tenants-a"), ["customer"])[0]
    hook_b = create_webhook(worker_db, tenants.b, receiver.url("/tenants-b"), ["customer"])[0]
    with tenants.connect("alice", tenants.a) as alice, tenants.connect("bob", tenants.b) as bob:
        alices = alice.execute("INSERT INTO billhook.customers (company_name) VALUES ('Alice') RETURNING id").fetchone()[0]
        bobs = bob.execute("INSERT INTO billhook.customers (company_name) VALUES ('Bob') RETURNING id").fetchone()[0]
        pushed_a = [json.loads(r.body) for r in receiver.wait_for("/tenants-a", 1)]
        pushed_b = [json.loads(r.body) for r in receiver.wait_for("/tenants-b", 1)]
        assert wait_until(lambda: worker_db.execute(
            "SELECT count(*) = 2 FROM billhook.deliveries WHERE webhook_id IN (%s, %s) AND status = 'succeeded'",
            (hook_a, hook_b)).fetchone()[0])
        # Each sees its own webhook's delivery, in the table and in the views.
        assert alice.execute("SELECT DISTINCT webhook_id FROM billhook.deliveries").fetchall() == [(hook_a,)]
        assert bob.execute("SELECT DISTINCT webhook_id FROM billhook.delivery_status").fetchall() == [(hook_b,)]
    assert [(p["entity_id"], p["entity"]["administration_id"]) for p in pushed_a] == [(str(alices), str(tenants.a))]
    assert [(p["entity_id"], p["entity"]["administration_id"]) for p in pushed_b] == [(str(bobs), str(tenants.b))]
    assert len(receiver.received("/tenants-a")) == 1 and len(receiver.received("/tenants-b")) == 1


def test_the_reader_reports_on_its_administration_without_any_secret(worker_db, tenants, receiver):
    hook_a = create_webhook(worker_db, tenants.a, receiver.url("/tenants-reader-a"), ["customer"])[0]
    hook_b = create_webhook(worker_db, tenants.b, receiver.url("/tenants-reader-b"), ["customer"])[0]
    worker_db.execute("UPDATE billhook.webhooks SET headers = '{\"Authorization\": \"Bearer hidden\"}' WHERE id IN (%s, %s)",
                      (hook_a, hook_b))
    for admin in (tenants.a, tenants.b):
        worker_db.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'x')", (admin,))
    receiver.wait_for("/tenants-reader-a", 1)
    receiver.wait_for("/tenants-reader-b", 1)
    with tenants.connect("analyst", tenants.a) as analyst:
        for column in ("token", "signing_secret", "previous_signing_secret", "headers", "url", "*"):
            assert isinstance(error_of(analyst, f"SELECT {column} FROM billhook.webhooks"),
                              psycopg.errors.InsufficientPrivilege), column
        assert analyst.execute("SELECT id, enabled FROM billhook.webhooks").fetchall() == [(hook_a, True)]
        overview = analyst.execute("SELECT * FROM billhook.webhook_overview")
        columns = [c.name for c in overview.description]
        rows = overview.fetchall()
        assert [r[0] for r in rows] == [hook_a]
        assert not {"token", "signing_secret", "headers"} & set(columns)
        assert rows[0][columns.index("header_names")] == ["Authorization"]
        assert "hidden" not in repr(rows)
        assert analyst.execute("SELECT id FROM billhook.webhook_health").fetchall() == [(hook_a,)]
        assert wait_until(lambda: analyst.execute("SELECT webhook_id, succeeded FROM billhook.webhook_stats()"
                                                  " WHERE event_type = 'customer.created'").fetchall() == [(hook_a, 1)])
        assert analyst.execute("SELECT DISTINCT administration_id FROM billhook.events").fetchall() == [(tenants.a,)]
        assert "administration_id=\"%d\"" % tenants.b not in analyst.execute("SELECT billhook.metrics()").fetchone()[0]
        # A function of the reader's own sees only the rows the view lets through (security_barrier).
        seen = []
        analyst.add_notice_handler(lambda notice: seen.append(notice.message_primary))
        analyst.execute("CREATE FUNCTION pg_temp.peek(id bigint) RETURNS boolean LANGUAGE plpgsql IMMUTABLE COST 0.0001 AS"
                        " $$ BEGIN RAISE NOTICE 'saw %', id; RETURN true; END $$")
        analyst.execute("SELECT * FROM billhook.webhook_overview WHERE pg_temp.peek(id)").fetchall()
        analyst.execute("SELECT * FROM billhook.delivery_status WHERE pg_temp.peek(webhook_id)").fetchall()
        assert seen and set(seen) == {f"saw {hook_a}"}
        # Reading is all it may do.
        for sql in ("INSERT INTO billhook.customers (company_name) VALUES ('x')",
                    f"SELECT billhook.create_webhook('{receiver.url('/x')}', verify => false)",
                    f"SELECT billhook.disable_webhook({hook_a})",
                    "SELECT billhook.enable_tenant_isolation()", "SELECT billhook.create_roles()"):
            assert isinstance(error_of(analyst, sql), psycopg.errors.InsufficientPrivilege), sql


def test_isolation_and_the_roles_rights_survive_dump_and_restore(cluster):
    cluster.create_database("billhook_tenants_source")
    cluster.create_database("billhook_tenants_target", with_extension=False)
    with cluster.connect("billhook_tenants_source") as src:
        tenants, _ = isolate(cluster, src, "billhook_tenants_source")
        for admin in (tenants.a, tenants.b):
            src.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'x')", (admin,))
    dump_and_restore(cluster, "billhook_tenants_source", "billhook_tenants_target")
    with cluster.connect("billhook_tenants_target") as dst:
        assert all(r[0] for r in dst.execute("SELECT enabled FROM billhook.tenant_isolation()").fetchall())
        with cluster.connect("billhook_tenants_target", user="tenant_bob",
                             options=f"-c billhook.administration_id={tenants.b}") as bob:
            assert bob.execute("SELECT DISTINCT administration_id FROM billhook.customers").fetchall() == [(tenants.b,)]
    with cluster.connect("postgres") as conn:
        conn.execute("DROP DATABASE billhook_tenants_target")
        conn.execute("DROP DATABASE billhook_tenants_source")
    with cluster.connect("billhook_worker") as conn:
        for name in LOGINS:
            conn.execute(f"DROP ROLE tenant_{name}")


def test_erasure_granted_to_a_tenant_erases_in_its_own_administration_only(worker_db, tenants):
    worker_db.execute("GRANT EXECUTE ON FUNCTION billhook.erase_entity(text, bigint) TO billhook_app")
    try:
        # Customer ids are one sequence for all tenants: the same entity type and id cannot be in
        # two administrations, so each tenant's customer is looked up by its own id.
        with tenants.connect("alice", tenants.a) as alice, tenants.connect("bob", tenants.b) as bob:
            a_customer = alice.execute("INSERT INTO billhook.customers (company_name) VALUES ('Alice Person')"
                                       " RETURNING id").fetchone()[0]
            b_customer = bob.execute("INSERT INTO billhook.customers (company_name) VALUES ('Bob Person')"
                                     " RETURNING id").fetchone()[0]
            assert alice.execute("SELECT billhook.erase_entity('Customer', %s)", (b_customer,)).fetchone()[0] == 0
            assert bob.execute("SELECT billhook.erase_entity('Customer', %s)", (b_customer,)).fetchone()[0] == 1
        with tenants.connect("alice") as unset:
            assert error_of(unset, "SELECT billhook.erase_entity('Customer', %s)", (a_customer,)).sqlstate == "42501"
        entities = dict(worker_db.execute(
            "SELECT entity_id, entity->>'company_name' FROM billhook.events WHERE entity_type = 'Customer'"
            " AND entity_id IN (%s, %s)", (a_customer, b_customer)).fetchall())
        assert entities == {a_customer: "Alice Person", b_customer: None}
    finally:
        worker_db.execute("REVOKE EXECUTE ON FUNCTION billhook.erase_entity(text, bigint) FROM billhook_app")


# Every reference between rows of two administrations' tables names the administration on both
# sides: foreign keys are checked without row-level security, so a plain key lets one tenant's row
# point at another's. The tables without an administration_id belong to their webhook's
# administration (billhook.tenant_isolation's row filter); their keys to the webhook, or to the row
# that has one, are what puts them in it. deliveries.event_id is the one key beside it: billhook's
# fan-out alone writes it, pairing each event with its own administration's webhooks.
WEBHOOK_SCOPED_KEYS = {("deliveries", "webhook_id"), ("deliveries", "event_id"), ("delivery_attempts", "delivery_id"),
                       ("delivery_counters", "webhook_id")}


def test_every_reference_between_tenant_rows_names_the_administration_on_both_sides(worker_db, tenants):
    # A window's keys are its partitions' (sql/partitions.sql): they count as their tables'.
    keys = worker_db.execute(
        "WITH c AS (SELECT c.conname, c.contype, c.conkey, c.confkey, c.conrelid, c.confrelid,"
        "                  coalesce((SELECT i.inhparent FROM pg_inherits AS i WHERE i.inhrelid = c.conrelid), c.conrelid)"
        "                      AS table_of,"
        "                  coalesce((SELECT i.inhparent FROM pg_inherits AS i WHERE i.inhrelid = c.confrelid), c.confrelid)"
        "                      AS referenced_table_of"
        "           FROM pg_constraint AS c)"
        " SELECT DISTINCT ON (r.relname, t.relname, c.conkey) c.conname, r.relname, t.relname,"
        "       array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)"
        "             JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),"
        "       array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)"
        "             JOIN pg_attribute AS a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)"
        " FROM c JOIN pg_class AS r ON r.oid = c.table_of JOIN pg_class AS t ON t.oid = c.referenced_table_of"
        " JOIN billhook.tenant_isolation() AS i ON i.table_name = c.table_of"
        " JOIN billhook.tenant_isolation() AS j ON j.table_name = c.referenced_table_of"
        " WHERE c.contype = 'f'").fetchall()
    with_administration = {r[0] for r in worker_db.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid"
        " WHERE c.relnamespace = 'billhook'::regnamespace AND a.attname = 'administration_id' AND NOT a.attisdropped")}
    crossing, webhook_scoped, composite = [], set(), set()
    for name, table, referenced, columns, referenced_columns in keys:
        if referenced == "administrations":
            assert (columns, referenced_columns) == (["administration_id"], ["id"]), name
        elif table not in with_administration:
            webhook_scoped.add((table, columns[0]))
        elif ("administration_id", "administration_id") in zip(columns, referenced_columns):
            composite.add((table, columns[0]))
        else:
            crossing.append(f"{name}: {table} ({', '.join(columns)}) → {referenced} ({', '.join(referenced_columns)})")
    assert crossing == [], "these keys let a row point into another administration"
    assert webhook_scoped == WEBHOOK_SCOPED_KEYS
    assert {("quotations", "invoice_id"), ("recurring_invoices", "last_invoice_id"), ("invoices", "recurring_invoice_id"),
            ("invoice_lines", "invoice_id"), ("webhook_health_log", "webhook_id")} <= composite
    # Nobody but billhook writes a delivery's event.
    assert worker_db.execute("SELECT has_table_privilege('billhook_app', 'billhook.deliveries', 'INSERT'),"
                             " has_column_privilege('billhook_app', 'billhook.deliveries', 'event_id', 'UPDATE')"
                             ).fetchone() == (False, False)


def test_a_tenant_cannot_point_its_rows_at_another_administrations_rows(worker_db, tenants):
    alices_customer = customer(worker_db, tenants.a)
    alices_invoice = invoice(worker_db, tenants.a, alices_customer)
    with tenants.connect("bob", tenants.b) as bob:
        bobs_customer = bob.execute("INSERT INTO billhook.customers (company_name) VALUES ('Bob') RETURNING id").fetchone()[0]
        bobs_quotation = bob.execute("INSERT INTO billhook.quotations (customer_id) VALUES (%s) RETURNING id",
                                     (bobs_customer,)).fetchone()[0]
        for sql, params in (
            ("INSERT INTO billhook.quotations (customer_id, invoice_id) VALUES (%s, %s)", (bobs_customer, alices_invoice)),
            ("UPDATE billhook.quotations SET invoice_id = %s WHERE id = %s", (alices_invoice, bobs_quotation)),
            ("INSERT INTO billhook.recurring_invoices (customer_id, frequency, last_invoice_id) VALUES (%s, 'monthly', %s)",
             (bobs_customer, alices_invoice)),
            ("INSERT INTO billhook.invoices (customer_id) VALUES (%s)", (alices_customer,)),
            ("INSERT INTO billhook.invoice_lines (invoice_id, description, price) VALUES (%s, 'x', 1)", (alices_invoice,)),
        ):
            error = error_of(bob, sql, params)
            assert isinstance(error, psycopg.errors.ForeignKeyViolation), sql
            # Refused like a row that does not exist, without showing the key back.
            assert error.diag.message_detail.startswith("Key is not present in table"), sql
    # Not even the tables' owner, isolation or not, can make the reference.
    error = error_of(worker_db, "INSERT INTO billhook.quotations (administration_id, customer_id, invoice_id)"
                                " VALUES (%s, %s, %s)", (tenants.b, bobs_customer, alices_invoice))
    assert isinstance(error, psycopg.errors.ForeignKeyViolation)
    # So Alice's invoice names no quotation of Bob's in its events.
    assert worker_db.execute("SELECT billhook.invoice_json(%s)->'quotation_id'", (alices_invoice,)).fetchone() == (None,)
    assert worker_db.execute("SELECT count(*) FROM billhook.quotations WHERE invoice_id = %s"
                             " UNION ALL SELECT count(*) FROM billhook.recurring_invoices WHERE last_invoice_id = %s",
                             (alices_invoice, alices_invoice)).fetchall() == [(0,), (0,)]


def test_a_tenant_cannot_make_another_administrations_schedule_skip_a_period(worker_db, tenants):
    alices_customer = customer(worker_db, tenants.a)
    # Inactive, so that the worker's own sweeps leave it to this test.
    schedule = worker_db.execute("INSERT INTO billhook.recurring_invoices"
                                 " (administration_id, customer_id, frequency, active) VALUES (%s, %s, 'monthly', false)"
                                 " RETURNING id, start_date", (tenants.a, alices_customer)).fetchone()
    worker_db.execute("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id,"
                      " description, price) VALUES (%s, %s, 'Hosting', 49)", (tenants.a, schedule[0]))
    with tenants.connect("bob", tenants.b) as bob:
        bobs_customer = bob.execute("INSERT INTO billhook.customers (company_name) VALUES ('Bob') RETURNING id").fetchone()[0]
        error = error_of(bob, "INSERT INTO billhook.invoices (customer_id, recurring_invoice_id, recurring_period)"
                              " VALUES (%s, %s, %s)", (bobs_customer, schedule[0], schedule[1]))
        assert isinstance(error, psycopg.errors.ForeignKeyViolation)
    # The period is still the schedule's own to generate.
    generated = worker_db.execute("SELECT g.id FROM billhook.recurring_invoices AS r,"
                                  " billhook.generate_recurring_invoice(r, r.start_date) AS g WHERE r.id = %s",
                                  (schedule[0],)).fetchone()
    assert generated[0] is not None, "the period was taken"
    assert worker_db.execute("SELECT administration_id, customer_id, recurring_period FROM billhook.invoices"
                             " WHERE recurring_invoice_id = %s", (schedule[0],)).fetchall() == \
        [(tenants.a, alices_customer, schedule[1])]


def test_an_update_stops_at_references_into_another_administration_and_says_which(cluster):
    """0.11.0 let these be written; the update names them and the query that finds them, and goes
    through once they are mended. The health log of a webhook moved to another administration
    follows it."""
    cluster.create_database("billhook_tenants_update", with_extension=False)
    try:
        with cluster.connect("billhook_tenants_update") as conn:
            conn.execute("CREATE EXTENSION billhook VERSION '0.11.0'")
            a, b = new_administration(conn), new_administration(conn)
            alices_invoice = invoice(conn, a, customer(conn, a))
            bobs_quotation = conn.execute("INSERT INTO billhook.quotations (administration_id, customer_id, invoice_id)"
                                          " VALUES (%s, %s, %s) RETURNING id",
                                          (b, customer(conn, b), alices_invoice)).fetchone()[0]
            hook = create_webhook(conn, a, "http://127.0.0.1:9/moved")[0]
            conn.execute("UPDATE billhook.webhooks SET enabled = false, disabled_at = now() WHERE id = %s", (hook,))
            conn.execute("UPDATE billhook.webhooks SET administration_id = %s WHERE id = %s", (b, hook))

            error = error_of(conn, "ALTER EXTENSION billhook UPDATE")
            assert isinstance(error, psycopg.errors.ForeignKeyViolation)
            assert error.diag.message_primary == \
                "1 row(s) reference a row of another administration, which billhook 0.12.0 refuses"
            assert error.diag.message_detail == \
                f"billhook.quotations {bobs_quotation} (administration {b}): invoice_id {alices_invoice} is administration {a}'s"
            finder = error.diag.message_hint.split("They all are: ", 1)[1]
            assert conn.execute(finder).fetchall() == [("quotations", bobs_quotation, b, "invoice_id", alices_invoice, a)]
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone() == ("0.11.0",)

            conn.execute("UPDATE billhook.quotations SET invoice_id = NULL WHERE id = %s", (bobs_quotation,))
            conn.execute("ALTER EXTENSION billhook UPDATE")
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone() == (VERSION,)
            log = "SELECT DISTINCT administration_id FROM billhook.webhook_health_log WHERE webhook_id = %s"
            assert conn.execute(log, (hook,)).fetchall() == [(b,)]
            conn.execute("UPDATE billhook.webhooks SET administration_id = %s WHERE id = %s", (a, hook))
            assert conn.execute(log, (hook,)).fetchall() == [(a,)]
            error = error_of(conn, "UPDATE billhook.quotations SET invoice_id = %s WHERE id = %s",
                             (alices_invoice, bobs_quotation))
            assert isinstance(error, psycopg.errors.ForeignKeyViolation)
    finally:
        with cluster.connect("postgres") as conn:
            conn.execute("DROP DATABASE billhook_tenants_update")


def test_a_tenant_cannot_take_the_ids_the_sequences_will_hand_to_others(worker_db, tenants):
    """An id chosen at INSERT (or set by UPDATE) ahead of its identity sequence makes another
    administration's next insert fail with 23505: billhook_app writes every column but the id."""
    with tenants.connect("bob", tenants.b) as bob:
        ahead = worker_db.execute("SELECT last_value + 1 FROM billhook.customers_id_seq").fetchone()[0]
        for sql, params in (
            ("INSERT INTO billhook.customers (id, company_name) VALUES (%s, 'squatter')", (ahead,)),
            ("UPDATE billhook.customers SET id = %s WHERE true", (ahead,)),
            ("INSERT INTO billhook.webhooks (id, url, enabled_events) VALUES (%s, 'https://x.example/', '{*}')",
             (ahead,)),
        ):
            assert isinstance(error_of(bob, sql, params), psycopg.errors.InsufficientPrivilege), sql
        mine = bob.execute("INSERT INTO billhook.customers (company_name) VALUES ('Bob') RETURNING id").fetchone()[0]
        bob.execute("UPDATE billhook.customers SET company_name = 'Bob B.V.' WHERE id = %s", (mine,))
    with tenants.connect("alice", tenants.a) as alice:
        assert alice.execute("INSERT INTO billhook.customers (company_name) VALUES ('Alice') RETURNING id").fetchone()


def test_turning_isolation_on_waits_for_a_transaction_holding_its_tables_instead_of_deadlocking(cluster,
                                                                                                worker_db):
    """A round of the worker holds some of the tables and asks for others; the policies' DDL must
    not take them one by one while waiting (a deadlock), but all at once when it can."""
    import threading

    with cluster.connect("billhook_worker") as round_, cluster.connect("billhook_worker") as dba:
        round_.execute("BEGIN")
        round_.execute("LOCK TABLE billhook.deliveries IN ROW EXCLUSIVE MODE")
        outcome = {}

        def enable():
            try:
                dba.execute("SELECT billhook.enable_tenant_isolation()")
                outcome["dba"] = "done"
            except psycopg.Error as error:
                outcome["dba"] = error

        enabling = threading.Thread(target=enable)
        enabling.start()
        time.sleep(0.5)
        round_.execute("SET lock_timeout = '5s'")
        round_.execute("LOCK TABLE billhook.administrations IN ROW SHARE MODE")
        round_.execute("COMMIT")
        enabling.join(15)
    worker_db.execute("SELECT billhook.disable_tenant_isolation()")
    assert outcome.get("dba") == "done", outcome


def test_turning_isolation_on_gives_up_after_ten_seconds_with_55p03_and_changes_nothing(cluster, worker_db):
    with cluster.connect("billhook_worker") as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE billhook.deliveries IN ROW EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable) as refused:
            worker_db.execute("SELECT billhook.enable_tenant_isolation()")
        assert time.monotonic() - started >= 9.5
        assert "apply tenant isolation" in refused.value.diag.message_primary
        holder.execute("ROLLBACK")
    assert not worker_db.execute("SELECT EXISTS (SELECT FROM billhook.tenant_isolation_settings)").fetchone()[0]
    assert not worker_db.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'billhook.invoices'::regclass"
                                 ).fetchone()[0]
