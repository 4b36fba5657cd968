"""Small helpers shared by the end-to-end tests."""

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

VERSION = re.search(r'^version = "(.+)"$', (Path(__file__).parent.parent / "Cargo.toml").read_text(), re.M).group(1)

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def events(db, admin, after_id=0):
    """The administration's events in order: dicts of the outbox columns."""
    rows = db.execute(
        "SELECT id, event_type, entity_type, entity_id, state, entity FROM billhook.events"
        " WHERE administration_id = %s AND id > %s ORDER BY id",
        (admin, after_id),
    ).fetchall()
    keys = ("id", "event_type", "entity_type", "entity_id", "state", "entity")
    return [dict(zip(keys, row)) for row in rows]


def event_names(db, admin, after_id=0):
    return [e["event_type"] for e in events(db, admin, after_id)]


def last_event_id(db):
    return db.execute("SELECT coalesce(max(id), 0) FROM billhook.events").fetchone()[0]


def insert(db, table, **fields):
    """Inserts one row into billhook.<table> and returns its id."""
    columns = ", ".join(fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return db.execute(
        f"INSERT INTO billhook.{table} ({columns}) VALUES ({placeholders}) RETURNING id",
        list(fields.values()),
    ).fetchone()[0]


def customer(db, admin, **fields):
    return insert(db, "customers", **{"company_name": "Foobar Holding B.V.", **fields}, administration_id=admin)


def document(db, admin, kind, customer_id, lines, **fields):
    """An invoice or quotation (kind) and its lines, inserted in one transaction."""
    with db.transaction():
        document_id = insert(db, f"{kind}s", **fields, administration_id=admin, customer_id=customer_id)
        for order, (description, amount, price, tax_rate) in enumerate(lines):
            insert(db, f"{kind}_lines", **{f"{kind}_id": document_id}, administration_id=admin,
                   description=description, amount=amount, price=price, tax_rate=tax_rate, row_order=order)
    return document_id


def invoice(db, admin, customer_id, lines=(("Project X", 1, 300, 21),), **fields):
    return document(db, admin, "invoice", customer_id, lines, **fields)


def quotation(db, admin, customer_id, lines=(("Design", 2, 500, 21),), **fields):
    return document(db, admin, "quotation", customer_id, lines, **fields)


def expense(db, admin, **fields):
    defaults = {"supplier_name": "Office Supplies Ltd", "amount": "100.00", "tax_rate": 21}
    return insert(db, "expenses", **{**defaults, **fields}, administration_id=admin)


def webhook(db, admin, enabled_events=None, url="https://receiver.example/hook", enabled=True, verify=False):
    row = db.execute(
        "SELECT id, token, signing_secret FROM billhook.create_webhook(%s, %s, %s, %s, %s)",
        (url, enabled_events, admin, enabled, verify),
    ).fetchone()
    return row[0]


def create_webhook(conn, admin, url, events=("*",), verify=False):
    return conn.execute(
        "SELECT id, token, signing_secret FROM billhook.create_webhook(%s, %s, %s, verify => %s)",
        (url, list(events), admin, verify),
    ).fetchone()


def delivery_rows(conn, webhook_id):
    return conn.execute(
        "SELECT id, status, attempts, idempotency_key::text, last_http_status, last_error FROM billhook.deliveries"
        " WHERE webhook_id = %s ORDER BY id", (webhook_id,)).fetchall()


def fan_out(db):
    """Creates the deliveries of every committed event, as the worker does each round (no worker
    serves the test databases)."""
    while db.execute("SELECT events FROM billhook.fan_out()").fetchone()[0] == 1000:
        pass


def deliveries(db, webhook_id):
    """Event names delivered to one webhook, in order, once fanned out."""
    fan_out(db)
    return [
        r[0]
        for r in db.execute(
            "SELECT e.event_type FROM billhook.deliveries d JOIN billhook.events e ON e.id = d.event_id"
            " WHERE d.webhook_id = %s ORDER BY d.id",
            (webhook_id,),
        ).fetchall()
    ]


def wait_until(check, timeout=20.0, interval=0.05):
    """Calls check until it returns something true or timeout seconds pass; returns its last value."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)


def dump_and_restore(cluster, source, target, before=None, held_back=None, meanwhile=None):
    """pg_dump of database source, restored into the empty database target the way docs/operations.md says:
    restored rows are not new business events, so the restore runs as a replica session, in which
    billhook's triggers (like all ordinary triggers) do not fire. before: (table, other table) of
    schema billhook, to restore the rows of the first right before the other's (pg_restore -L)
    rather than in pg_dump's order. held_back: a table of schema billhook whose rows are restored
    last, by a second pg_restore after meanwhile() returned."""
    pg_bin = os.environ["PG_BIN"]  # set by scripts/pg-config.sh
    with tempfile.TemporaryDirectory() as directory:
        dump = os.path.join(directory, "dump")
        subprocess.run([f"{pg_bin}/pg_dump", "-Fc", "-f", dump, cluster.dsn(source)], check=True)
        order = []
        if before:
            toc = subprocess.run([f"{pg_bin}/pg_restore", "-l", dump], check=True, capture_output=True,
                                 text=True).stdout.splitlines()
            first, then = ([line for line in toc if f" TABLE DATA billhook {table} " in line] for table in before)
            assert len(first) == len(then) == 1, toc
            toc.remove(first[0])
            toc.insert(toc.index(then[0]), first[0])
            with open(os.path.join(directory, "list"), "w") as listed:
                listed.write("\n".join(toc) + "\n")
            order = ["-L", listed.name]
        steps = [order]
        if held_back:
            toc = subprocess.run([f"{pg_bin}/pg_restore", "-l", dump], check=True, capture_output=True,
                                 text=True).stdout.splitlines()
            [last] = [line for line in toc if f" TABLE DATA billhook {held_back} " in line]
            toc.remove(last)
            for name, lines in (("first", toc), ("last", [last])):
                with open(os.path.join(directory, name), "w") as listed:
                    listed.write("\n".join(lines) + "\n")
            steps = [["-L", os.path.join(directory, "first")], ["-L", os.path.join(directory, "last")]]
        for step, listed in enumerate(steps):
            if step == 1 and meanwhile:
                meanwhile()
            restore = subprocess.run([f"{pg_bin}/pg_restore", "--exit-on-error", *listed, "-d", cluster.dsn(target),
                                      dump], capture_output=True,
                                     env={**os.environ, "PGOPTIONS": "-c session_replication_role=replica"})
            assert restore.returncode == 0, restore.stderr.decode()


def make_worker_look_up_claims_floor(conn, receiver, path):
    """Makes the worker look up where its claims start (billhook.pending_from) and waits until it
    has: a webhook enabled makes it look again in its next round, and the push of an event committed
    with it (an expense's, which the tests' other webhooks leave alone) is claimed in that round or
    later."""
    probe = conn.execute("SELECT id FROM billhook.create_webhook(%s, '{expense}', 1, verify => false)",
                         (receiver.url(path),)).fetchone()[0]
    conn.execute("UPDATE billhook.webhooks SET enabled = false WHERE id = %s", (probe,))
    seen = len(receiver.received(path))
    with conn.transaction():
        conn.execute("UPDATE billhook.webhooks SET enabled = true WHERE id = %s", (probe,))
        conn.execute("INSERT INTO billhook.expenses (administration_id, supplier_name, amount) VALUES (1, 'Probe', 1)")
    # Kept: deleting it would make the worker look again.
    receiver.wait_for(path, seen + 1)
