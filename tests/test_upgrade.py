"""ALTER EXTENSION billhook UPDATE from every earlier version: every row and key survives, pending
deliveries go out with their original keys, and the upgraded schema is exactly a fresh install's.

Only the first version's install script is kept (tests/fixtures/billhook--0.1.0.sql, frozen);
`CREATE EXTENSION billhook VERSION 'x'` builds any later one from it through the upgrade scripts in
sql/, so each start is exactly what an install of that version became by updating."""

import json
import os
import subprocess
import time
from pathlib import Path

import psycopg
import psycopg.sql
import pytest

from helpers import VERSION, wait_until
from receiver import Receiver

SQL = Path(__file__).parent.parent / "sql"

# Every object of schema billhook with what defines it: functions (with their rights), columns,
# constraints, indexes, triggers, views, table rights and options, comments, dump registrations.
SCHEMA_FINGERPRINT = """
SELECT 'function ' || p.oid::regprocedure, pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '')
FROM pg_proc AS p WHERE p.pronamespace = 'billhook'::regnamespace
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname,
       concat_ws(' ', a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
                 a.attcompression,
                 pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum))
FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relnamespace = 'billhook'::regnamespace
UNION ALL
SELECT 'relation ' || c.relname, concat_ws(' ', c.relkind::text, c.relacl, c.reloptions, obj_description(c.oid, 'pg_class'),
                                           CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END)
FROM pg_class AS c WHERE c.relnamespace = 'billhook'::regnamespace
UNION ALL
SELECT 'constraint ' || conrelid::regclass || '.' || conname,
       concat_ws(' ', pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint'))
FROM pg_constraint WHERE connamespace = 'billhook'::regnamespace
UNION ALL
SELECT 'index ' || indexname, indexdef FROM pg_indexes WHERE schemaname = 'billhook'
UNION ALL
SELECT 'trigger ' || tgrelid::regclass || '.' || tgname, pg_get_triggerdef(oid) || ' ' || tgenabled::text
FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'billhook'::regnamespace)
UNION ALL
SELECT 'function comment ' || p.oid::regprocedure, obj_description(p.oid, 'pg_proc')
FROM pg_proc AS p WHERE p.pronamespace = 'billhook'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NOT NULL
UNION ALL
-- The dump registrations as a set: an update appends its own, a fresh install has them in file order.
SELECT 'extension', concat_ws(' ', extversion,
                              (SELECT string_agg(r.c::regclass || ' ' || r.w, ', ' ORDER BY r.c::regclass::text)
                               FROM unnest(extconfig, extcondition) AS r(c, w)))
FROM pg_extension WHERE extname = 'billhook'
ORDER BY 1, 2
"""

KEPT_ROWS = {
    "customers": "SELECT id, administration_id, company_name, email FROM billhook.customers ORDER BY id",
    "invoices": "SELECT id, customer_id, state, due_date, sent_at FROM billhook.invoices ORDER BY id",
    "invoice_lines": "SELECT id, invoice_id, description, amount, price, tax_rate FROM billhook.invoice_lines ORDER BY id",
    "webhooks": "SELECT id, url, enabled_events, token, signing_secret FROM billhook.webhooks ORDER BY id",
    "events": "SELECT id, event_type, entity_id, entity, occurred_at FROM billhook.events ORDER BY id",
    "deliveries": "SELECT id, event_id, webhook_id, idempotency_key FROM billhook.deliveries ORDER BY id",
}


def upgrade_scripts():
    """(from, to) of every upgrade script in sql/."""
    return {tuple(path.name[len("billhook--") : -len(".sql")].split("--")) for path in SQL.glob("billhook--*--*.sql")}


def version_order(version):
    """0.9.0 before 0.10.0, and 0.13.0-rc1 before 0.13.0."""
    release, _, pre = version.partition("-")
    return tuple(int(part) for part in release.split(".")), pre == "", pre


def earlier_versions():
    """Every version an upgrade script in sql/ starts from, oldest first."""
    return sorted({start for start, _ in upgrade_scripts()}, key=version_order)


def test_every_release_is_reached_by_the_chain_of_upgrade_scripts():
    versions = earlier_versions() + [VERSION]
    assert versions[0] == "0.1.0" and len(versions) >= 12
    assert upgrade_scripts() == set(zip(versions, versions[1:])), "one chain, each release to the next"
    # Installed are the frozen base and this version's script only: no other version installs from a
    # script of its own, which would bypass the chain under test.
    sharedir = subprocess.run([os.environ["PG_CONFIG"], "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()
    installed = {path.name for path in (Path(sharedir) / "extension").glob("billhook--*.sql") if path.name.count("--") == 1}
    assert installed == {"billhook--0.1.0.sql", f"billhook--{VERSION}.sql"}


@pytest.mark.parametrize("start", earlier_versions())
def test_an_earlier_install_upgrades_to_this_version_with_nothing_lost(own_cluster, start):
    receiver = Receiver()
    try:
        cluster = own_cluster("billhook.database = 'upgraded'", "billhook.allow_private_targets = on",
                              "billhook.poll_interval = '200ms'", "billhook.retry_schedule = '100ms'")
        cluster.create_database("upgraded", with_extension=False)
        cluster.create_database("fresh", with_extension=False)
        with cluster.connect("postgres") as conn:
            assert wait_until(lambda: conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = 'upgraded'"
                                                   " AND backend_type = 'billhook delivery worker'").fetchone(), 40)
        with cluster.connect("upgraded") as old:
            old.execute("CREATE EXTENSION billhook VERSION %s" % psycopg.sql.quote(start))
            hook = old.execute("SELECT id FROM billhook.create_webhook(%s, '{invoice, customer}', verify => false)",
                               (receiver.url("/upgrade"),)).fetchone()[0]
            with old.transaction():
                customer = old.execute("INSERT INTO billhook.customers (company_name, email)"
                                       " VALUES ('Before B.V.', 'a@example.com') RETURNING id").fetchone()[0]
                invoice = old.execute("INSERT INTO billhook.invoices (customer_id, due_date)"
                                      " VALUES (%s, current_date + 14) RETURNING id", (customer,)).fetchone()[0]
                old.execute("INSERT INTO billhook.invoice_lines (invoice_id, description, price) VALUES (%s, 'Work', 100)",
                            (invoice,))
            old.execute("UPDATE billhook.invoices SET state = 'open', sent_at = now() WHERE id = %s", (invoice,))
            # The worker of this library does not touch an earlier install: its own fan-out makes
            # the deliveries (0.1.0 with random keys); one of them has failed for good.
            assert old.execute("SELECT deliveries FROM billhook.fan_out()").fetchone()[0] == 4
            old.execute("UPDATE billhook.deliveries SET status = 'failed', attempts = 11, last_http_status = 500"
                        " WHERE id = (SELECT min(id) FROM billhook.deliveries)")
            warning = f"billhook {start} is installed in database \"upgraded\" but the library is"
            assert wait_until(lambda: warning in cluster.server_log()), \
                "the worker says why it waits; the server's log ends:\n" + cluster.server_log()[-4000:]
            time.sleep(0.5)
            assert receiver.received("/upgrade") == [], "nothing is sent before the update"
            before = {table: old.execute(query).fetchall() for table, query in KEPT_ROWS.items()}
            keys = dict(old.execute("SELECT event_id::text, idempotency_key::text FROM billhook.deliveries"
                                    " WHERE status = 'pending'").fetchall())

            old.execute("ALTER EXTENSION billhook UPDATE")
            assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == VERSION
            assert {table: old.execute(query).fetchall() for table, query in KEPT_ROWS.items()} == before

            pushes = receiver.wait_for("/upgrade", len(keys), timeout=20)
            assert {p.headers["webhook-id"] for p in pushes} == set(keys.values())
            assert {json.loads(p.body)["event_id"]: p.headers["idempotency-key"] for p in pushes} == keys
            assert wait_until(lambda: old.execute("SELECT count(*) FILTER (WHERE status = 'succeeded')"
                                                  " FROM billhook.deliveries").fetchone()[0] == len(keys))
            assert old.execute("SELECT status, attempts FROM billhook.deliveries ORDER BY id LIMIT 1").fetchone() == \
                ("failed", 11)

            # Keys derived from the install (0.2.0) and the purge work on the upgraded install.
            old.execute("INSERT INTO billhook.customers (company_name) VALUES ('After B.V.')")
            [after] = receiver.wait_for("/upgrade", len(keys) + 1, timeout=10)[len(keys):]
            event = int(json.loads(after.body)["event_id"])
            assert after.headers["idempotency-key"] == str(old.execute(
                "SELECT billhook.delivery_key(key_namespace, %s, %s) FROM billhook.fan_out_state",
                (event, hook)).fetchone()[0])
            assert old.execute("SELECT * FROM billhook.purge('7 days')").fetchone() == (0, 0)
            upgraded = old.execute(SCHEMA_FINGERPRINT).fetchall()

        with cluster.connect("fresh") as fresh:
            fresh.execute("CREATE EXTENSION billhook")
            installed = fresh.execute(SCHEMA_FINGERPRINT).fetchall()
        missing = sorted(set(installed) - set(upgraded))
        extra = sorted(set(upgraded) - set(installed))
        assert (missing, extra) == ([], []), "the upgraded schema is a fresh install's"
        assert len(installed) > 300
    finally:
        receiver.close()


def test_operational_events_of_0_11_0_lose_the_path_and_query_of_their_url_in_the_update(own_cluster):
    """0.11.0 showed a URL's path and query in operational events (its credentials as ***): the
    update rewrites the stored ones to what readers see now, scheme, host and port."""
    cluster = own_cluster("billhook.database = 'postgres'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook VERSION '0.11.0'")
        hook = conn.execute("SELECT id FROM billhook.create_webhook('https://bob:pw@hooks.example.com/T0/s3cret?k=s3cret',"
                            " '{customer}', verify => false)").fetchone()[0]
        conn.execute("SELECT billhook.emit_operations(ARRAY[%s]::bigint[], ARRAY[%s]::bigint[], '{}')", (hook, hook))
        # As 0.11.0's library wrote them (this library's redact_url serves the old install too).
        conn.execute("UPDATE billhook.events SET entity = jsonb_set(entity, '{url}',"
                     " '\"https://bob:***@hooks.example.com/T0/s3cret?k=s3cret\"') WHERE entity_type = 'Webhook'")
        stored = "SELECT entity->>'url' FROM billhook.events WHERE entity_type = 'Webhook' ORDER BY id"
        assert conn.execute(stored).fetchall() == [("https://bob:***@hooks.example.com/T0/s3cret?k=s3cret",)] * 2
        conn.execute("ALTER EXTENSION billhook UPDATE")
        assert conn.execute(stored).fetchall() == [("https://***@hooks.example.com/***",)] * 2


def test_rows_of_0_11_0_beyond_the_new_bounds_stop_the_update_which_names_them(own_cluster):
    """A line price 0.11.0 accepted and 0.12.0 refuses stops the update (money is not changed behind
    anyone's back, and a row kept outside a check would fail every later change of it and every
    restore): the error names the check and how to find the row; once it is corrected the update
    goes through. An infinite date ('never ends') is brought to the end of the range instead."""
    cluster = own_cluster("billhook.database = 'postgres'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook VERSION '0.11.0'")
        with conn.transaction():
            customer = conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('Big')"
                                    " RETURNING id").fetchone()[0]
            invoice = conn.execute("INSERT INTO billhook.invoices (customer_id) VALUES (%s) RETURNING id",
                                   (customer,)).fetchone()[0]
            conn.execute("INSERT INTO billhook.invoice_lines (invoice_id, description, price) VALUES (%s, 'x', 1e16)",
                         (invoice,))
            schedule = conn.execute("INSERT INTO billhook.recurring_invoices (customer_id, frequency, start_date,"
                                    " end_date) VALUES (%s, 'monthly', '2026-01-01', 'infinity') RETURNING id",
                                    (customer,)).fetchone()[0]
        events = conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0]
        conn.execute("SELECT billhook.create_roles()")
        may_choose_ids = "SELECT has_column_privilege('billhook_app', 'billhook.customers', 'id', 'INSERT')"
        assert conn.execute(may_choose_ids).fetchone()[0]
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute("ALTER EXTENSION billhook UPDATE")
        assert "rows of billhook.invoice_lines break its check invoice_lines_price_check" in str(refused.value)
        assert refused.value.diag.message_hint.startswith("Find them with SELECT * FROM billhook.invoice_lines WHERE NOT")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == "0.11.0"
        conn.execute("UPDATE billhook.invoice_lines SET price = 1e14")
        events = conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0]
        conn.execute("ALTER EXTENSION billhook UPDATE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == VERSION
        assert not conn.execute(may_choose_ids).fetchone()[0], "the update granted the roles again"
        assert conn.execute("SELECT end_date::text FROM billhook.recurring_invoices WHERE id = %s",
                            (schedule,)).fetchone()[0] == "9999-12-31"
        assert conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == events, "nothing was pushed for it"
        assert conn.execute("SELECT bool_and(convalidated) FROM pg_constraint"
                            " WHERE connamespace = 'billhook'::regnamespace").fetchone()[0]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO billhook.invoice_lines (invoice_id, description, price) VALUES (%s, 'y', 1e16)",
                         (invoice,))


def test_an_expense_amount_of_0_12_0_that_is_not_finite_stops_the_update(own_cluster):
    """0.12.0 accepted 'NaN' and 'Infinity' as expense amounts; 0.13.0 refuses them. The update stops,
    naming the check and how to find the row, and 0.12.0 stays; corrected, the update goes through.
    It also lists a webhook's operational events once, as 0.13.0's library does, but for a webhook
    naming an event type deleted since, which keeps its list and is named in a WARNING."""
    cluster = own_cluster("billhook.database = 'postgres'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook VERSION '0.12.0'")
        expense = conn.execute("INSERT INTO billhook.expenses (supplier_name, amount) VALUES ('s', 'NaN')"
                               " RETURNING id").fetchone()[0]
        webhook = conn.execute("SELECT id FROM billhook.create_webhook('https://hooks.example.com/ops',"
                               " ARRAY['operations'], verify => false)").fetchone()[0]
        conn.execute("SELECT billhook.register_event_type('parcel.sent', 'parcel')")
        orphan = conn.execute("SELECT id FROM billhook.create_webhook('https://hooks.example.com/parcels',"
                              " ARRAY['operations', 'parcel.sent'], verify => false)").fetchone()[0]
        conn.execute("DELETE FROM billhook.event_types WHERE name = 'parcel.sent'")
        # Both lists as 0.12.0's library saved them (this library would list them once again).
        with conn.transaction():
            conn.execute("ALTER TABLE billhook.webhooks DISABLE TRIGGER keep_subscription")
            conn.execute("UPDATE billhook.webhooks SET subscribed_events = subscribed_events || subscribed_events")
            conn.execute("ALTER TABLE billhook.webhooks ENABLE TRIGGER keep_subscription")
        orphan_list = conn.execute("SELECT subscribed_events FROM billhook.webhooks WHERE id = %s",
                                   (orphan,)).fetchone()[0]
        warnings = []
        conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary))
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute("ALTER EXTENSION billhook UPDATE")
        assert "rows of billhook.expenses break its check expenses_amount_check" in str(refused.value)
        assert refused.value.diag.message_hint.startswith("Find them with SELECT * FROM billhook.expenses WHERE NOT")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == "0.12.0"
        conn.execute("UPDATE billhook.expenses SET amount = 12.5 WHERE id = %s", (expense,))
        conn.execute("ALTER EXTENSION billhook UPDATE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == VERSION
        subscribed = conn.execute("SELECT subscribed_events FROM billhook.webhooks WHERE id = %s",
                                  (webhook,)).fetchone()[0]
        assert sorted(subscribed) == sorted(set(subscribed)) and "webhook.disabled" in subscribed
        # The webhook naming a deleted event type cannot be expanded: it keeps its list, and the update
        # goes through with a WARNING naming it.
        assert conn.execute("SELECT subscribed_events FROM billhook.webhooks WHERE id = %s",
                            (orphan,)).fetchone()[0] == orphan_list
        assert [w for w in warnings if f"webhook {orphan} keeps its subscribed_events" in w and "parcel.sent" in w]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO billhook.expenses (supplier_name, amount) VALUES ('s', 'Infinity')")


def test_the_outbox_of_0_12_0_becomes_window_0_with_its_rows_rights_and_tenant_isolation(own_cluster):
    """The update from 0.12.0 partitions the outbox: its rows land in window 0's partitions, each
    attempt with its delivery's event, the next event continues the id sequence, and the roles'
    rights and tenant isolation's policies on the outbox are what they were."""
    cluster = own_cluster("billhook.database = 'postgres'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook VERSION '0.12.0'")
        conn.execute("SELECT billhook.create_roles()")
        other = conn.execute("INSERT INTO billhook.administrations (name) VALUES ('other') RETURNING id").fetchone()[0]
        for administration in (1, other):
            conn.execute("SELECT billhook.create_webhook('https://hooks.example.com/w', '{customer}', %s,"
                         " verify => false)", (administration,))
            conn.execute("INSERT INTO billhook.customers (company_name, administration_id) VALUES ('c', %s)",
                         (administration,))
        assert conn.execute("SELECT deliveries FROM billhook.fan_out()").fetchone()[0] == 2
        conn.execute("INSERT INTO billhook.delivery_attempts (delivery_id, webhook_id, attempt, attempted_at,"
                     " duration_ms, http_status, succeeded) SELECT id, webhook_id, 1, now(), 4, 503, false"
                     " FROM billhook.deliveries")
        conn.execute("SELECT billhook.enable_tenant_isolation()")
        last_event = conn.execute("SELECT max(id) FROM billhook.events").fetchone()[0]
        rights = "SELECT has_table_privilege('billhook_reader', 'billhook.delivery_attempts', 'SELECT')," \
                 " has_column_privilege('billhook_app', 'billhook.deliveries', 'status', 'UPDATE')," \
                 " has_table_privilege('billhook_app', 'billhook.deliveries', 'DELETE')"
        rights_before = conn.execute(rights).fetchone()
        conn.execute("CREATE ROLE retention_job")
        conn.execute("GRANT EXECUTE ON FUNCTION billhook.purge(interval, integer) TO retention_job")

        conn.execute("ALTER EXTENSION billhook UPDATE")
        assert conn.execute(rights).fetchone() == rights_before
        # purge took an argument: whoever could run it still can, and no one else.
        assert conn.execute(
            "SELECT has_function_privilege('retention_job', 'billhook.purge(interval, integer, interval)', 'EXECUTE'),"
            " has_function_privilege('billhook_reader', 'billhook.purge(interval, integer, interval)', 'EXECUTE'),"
            " to_regprocedure('billhook.purge(interval, integer)')").fetchone() == (True, False, None)
        assert conn.execute(
            "SELECT a.tableoid::regclass::text, a.event_id = d.event_id FROM billhook.delivery_attempts AS a"
            " JOIN billhook.deliveries AS d ON d.id = a.delivery_id").fetchall() == \
            [("billhook.delivery_attempts_0", True)] * 2
        assert {r[0] for r in conn.execute("SELECT tableoid::regclass::text FROM billhook.deliveries")} == \
            {"billhook.deliveries_0"}
        assert conn.execute("SELECT bool_and(enabled) FROM billhook.tenant_isolation()"
                            " WHERE table_name::text IN ('billhook.events', 'billhook.deliveries',"
                            " 'billhook.delivery_attempts')").fetchone()[0]
        conn.execute("CREATE ROLE upgraded_reader LOGIN IN ROLE billhook_reader")
        with cluster.connect("postgres", user="upgraded_reader",
                             options=f"-c billhook.administration_id={other}") as reader:
            assert reader.execute("SELECT count(*) FROM billhook.delivery_attempts").fetchone()[0] == 1
            assert reader.execute("SELECT count(*), min(administration_id) FROM billhook.events").fetchone() == \
                (1, other)
        conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('after')")
        assert conn.execute("SELECT max(id) FROM billhook.events").fetchone()[0] == last_event + 1


def test_objects_of_others_on_the_outbox_of_0_12_0_stop_its_update_which_names_them(own_cluster):
    """A view, a trigger or a publication on the outbox could not follow it into partitioned tables
    (a publication would silently stop carrying events): the update stops before it copies anything,
    naming each, and 0.12.0 keeps working until they are gone."""
    cluster = own_cluster("billhook.database = 'postgres'")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook VERSION '0.12.0'")
        conn.execute("CREATE VIEW recent_events AS SELECT id FROM billhook.events")
        conn.execute("CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        conn.execute("CREATE TRIGGER audit AFTER INSERT ON billhook.deliveries FOR EACH ROW EXECUTE FUNCTION audit()")
        conn.execute("CREATE PUBLICATION outbox_feed FOR TABLE billhook.events")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as stopped:
            conn.execute("ALTER EXTENSION billhook UPDATE")
        for name in ("view public.recent_events", "trigger audit on table deliveries",
                     "publication outbox_feed"):
            assert name in stopped.value.diag.message_primary, name
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == "0.12.0"
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'billhook.events'::regclass").fetchone()[0] == "r"
        conn.execute("INSERT INTO billhook.customers (company_name) VALUES ('still 0.12.0')")
        conn.execute("DROP VIEW recent_events")
        conn.execute("DROP TRIGGER audit ON billhook.deliveries")
        conn.execute("DROP PUBLICATION outbox_feed")
        conn.execute("ALTER EXTENSION billhook UPDATE")
        assert conn.execute("SELECT count(*) FROM billhook.events_0").fetchone()[0] == 1
