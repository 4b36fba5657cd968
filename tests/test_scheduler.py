"""Time-driven events: billhook.run_schedules(as_of) drives overdue invoices, expired quotations and
recurring invoices; the worker runs it on its own."""

import json
import threading

import psycopg
import pytest

from helpers import customer, events, invoice, last_event_id, quotation


def schedule(db, admin, customer_id, start, frequency="monthly", every=1, lines=(("Subscription", 1, "49.00", 21),),
             **fields):
    with db.transaction():
        schedule_id = db.execute(
            "INSERT INTO billhook.recurring_invoices"
            " (administration_id, customer_id, frequency, frequency_interval, start_date, due_days, reference, "
            + ", ".join(fields) + (", " if fields else "") + "currency)"
            " VALUES (%s, %s, %s, %s, %s, 14, 'Hosting', " + "%s, " * len(fields) + "'EUR') RETURNING id",
            (admin, customer_id, frequency, every, start, *fields.values())).fetchone()[0]
        for order, (description, amount, price, tax_rate) in enumerate(lines):
            db.execute("INSERT INTO billhook.recurring_invoice_lines"
                       " (administration_id, recurring_invoice_id, description, amount, price, tax_rate, row_order)"
                       " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                       (admin, schedule_id, description, amount, price, tax_rate, order))
    return schedule_id


def run(db, as_of, max_invoices=100):
    """What run_schedules did to the administrations created by this module (other tests' documents
    in the shared database are swept too, and left out here)."""
    return db.execute(
        "SELECT r.action, r.entity_type, r.entity_id, r.detail"
        " FROM billhook.run_schedules(%s, %s) WITH ORDINALITY AS r(action, entity_type, entity_id, detail, n)"
        " JOIN billhook.administrations AS a ON a.id = CASE r.entity_type"
        "   WHEN 'Invoice' THEN (SELECT administration_id FROM billhook.invoices WHERE id = r.entity_id)"
        "   WHEN 'Quotation' THEN (SELECT administration_id FROM billhook.quotations WHERE id = r.entity_id)"
        "   ELSE (SELECT administration_id FROM billhook.recurring_invoices WHERE id = r.entity_id) END"
        " WHERE a.name LIKE 'scheduler %%'"
        # In the order run_schedules returned them: the join alone could reorder them.
        " ORDER BY r.n",
        (as_of, max_invoices)).fetchall()


@pytest.fixture(autouse=True)
def settle_schedules(db):
    """Later tests sweep with later dates: leave nothing of this test for them to sweep."""
    yield
    db.execute("UPDATE billhook.recurring_invoices SET active = false WHERE active")
    db.execute("UPDATE billhook.invoices SET state = 'paid' WHERE state IN ('open', 'reminded')")
    db.execute("UPDATE billhook.quotations SET state = 'rejected' WHERE state = 'open'")


def new_administration(db, time_zone):
    return db.execute("INSERT INTO billhook.administrations (name, time_zone) VALUES ('scheduler ' || %s, %s)"
                      " RETURNING id", (time_zone, time_zone)).fetchone()[0]


def invoice_dates(db, schedule_id):
    return [r[0].isoformat() for r in db.execute(
        "SELECT invoice_date FROM billhook.invoices WHERE recurring_invoice_id = %s ORDER BY invoice_date",
        (schedule_id,)).fetchall()]


def schedule_state(db, schedule_id):
    return db.execute("SELECT active, occurrences, next_date::text, failed_attempts, last_error"
                      " FROM billhook.recurring_invoices WHERE id = %s", (schedule_id,)).fetchone()


@pytest.fixture
def utc_admin(db):
    return new_administration(db, "UTC")


def test_generated_emits_invoice_created_then_generated_with_exact_payloads(db, utc_admin):
    c = customer(db, utc_admin)
    s = schedule(db, utc_admin, c, "2026-01-31", lines=[("Hosting", 1, "49.00", 21), ("Support", 2, "10.00", 21)])
    after = last_event_id(db)
    done = run(db, "2026-01-31 09:00+00")
    [created_invoice] = db.execute("SELECT id FROM billhook.invoices WHERE recurring_invoice_id = %s", (s,)).fetchone()
    assert done == [("generated", "RecurringInvoice", s, f"invoice {created_invoice} for 2026-01-31")]
    created, generated = events(db, utc_admin, after)
    assert (created["event_type"], created["entity_id"]) == ("invoice.created", created_invoice)
    entity = created["entity"]
    assert (entity["invoice_date"], entity["due_date"], entity["recurring_invoice_id"], entity["reference"]) == (
        "2026-01-31", "2026-02-14", str(s), "Hosting")
    assert [(l["description"], l["amount"], l["price"]) for l in entity["lines"]] == [
        ("Hosting", "1", "49.00"), ("Support", "2", "10.00")]
    assert entity["total_price_incl_tax"] == "83.49"
    assert (generated["event_type"], generated["entity_type"], generated["entity_id"], generated["state"]) == (
        "recurring_invoice.generated", "RecurringInvoice", s, "active")
    g = generated["entity"]
    assert (g["occurrences"], g["next_date"], g["last_invoice_id"], g["failed_attempts"], g["last_error"]) == (
        1, "2026-02-28", str(created_invoice), 0, None)
    assert (g["frequency"], g["frequency_interval"], g["start_date"], g["customer_id"]) == ("monthly", 1, "2026-01-31", str(c))
    assert run(db, "2026-01-31 23:00+00") == [], "the same period is never generated twice"


@pytest.mark.parametrize("start, frequency, every, as_of, expected", [
    ("2026-01-31", "monthly", 1, "2026-04-30", ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]),
    ("2028-01-31", "monthly", 1, "2028-03-31", ["2028-01-31", "2028-02-29", "2028-03-31"]),
    ("2024-02-29", "yearly", 1, "2028-03-01", ["2024-02-29", "2025-02-28", "2026-02-28", "2027-02-28", "2028-02-29"]),
    ("2026-08-31", "quarterly", 1, "2027-06-01", ["2026-08-31", "2026-11-30", "2027-02-28", "2027-05-31"]),
    ("2026-08-31", "half_yearly", 1, "2027-09-01", ["2026-08-31", "2027-02-28", "2027-08-31"]),
    ("2026-01-05", "weekly", 2, "2026-02-02", ["2026-01-05", "2026-01-19", "2026-02-02"]),
    ("2026-01-31", "monthly", 2, "2026-08-01", ["2026-01-31", "2026-03-31", "2026-05-31", "2026-07-31"]),
])
def test_periods_keep_month_ends_and_leap_days(db, utc_admin, start, frequency, every, as_of, expected):
    s = schedule(db, utc_admin, customer(db, utc_admin), start, frequency=frequency, every=every)
    run(db, f"{as_of} 12:00+00")
    assert invoice_dates(db, s) == expected


def test_catch_up_after_downtime_is_oldest_first_once_each_and_bounded(db, utc_admin):
    s = schedule(db, utc_admin, customer(db, utc_admin), "2026-01-15")
    after = last_event_id(db)
    assert [r[0] for r in run(db, "2026-06-20 12:00+00", max_invoices=2)] == ["generated", "generated"]
    assert invoice_dates(db, s) == ["2026-01-15", "2026-02-15"]
    assert [r[0] for r in run(db, "2026-06-20 12:00+00")] == ["generated"] * 4
    assert invoice_dates(db, s) == ["2026-01-15", "2026-02-15", "2026-03-15", "2026-04-15", "2026-05-15", "2026-06-15"]
    names = [e["event_type"] for e in events(db, utc_admin, after)]
    assert names == ["invoice.created", "recurring_invoice.generated"] * 6
    assert schedule_state(db, s)[1:3] == (6, "2026-07-15")


@pytest.mark.parametrize("limit", [{"max_occurrences": 2}, {"end_date": "2026-02-10"}])
def test_completed_after_the_last_period(db, utc_admin, limit):
    s = schedule(db, utc_admin, customer(db, utc_admin), "2026-01-01", **limit)
    after = last_event_id(db)
    done = run(db, "2026-05-01 12:00+00")
    assert [r[0] for r in done] == ["generated", "generated", "completed"]
    emitted = events(db, utc_admin, after)
    assert [e["event_type"] for e in emitted][-1] == "recurring_invoice.completed"
    completed = emitted[-1]
    assert (completed["state"], completed["entity"]["active"], completed["entity"]["occurrences"]) == ("inactive", False, 2)
    assert completed["entity"]["completed_at"] is not None
    assert invoice_dates(db, s) == ["2026-01-01", "2026-02-01"]
    assert run(db, "2027-01-01 12:00+00") == []


def test_failed_generation_creates_nothing_and_is_retried_then_deactivated(db, utc_admin):
    c = customer(db, utc_admin)
    s = schedule(db, utc_admin, c, "2026-03-01")
    db.execute("DELETE FROM billhook.customers WHERE id = %s", (c,))
    after = last_event_id(db)
    reason = f"the customer of recurring invoice {s} was deleted"
    assert run(db, "2026-03-02 12:00+00") == [("failed", "RecurringInvoice", s, f"2026-03-01: {reason}")]
    assert invoice_dates(db, s) == []
    assert schedule_state(db, s) == (True, 0, None, 1, reason), "not advanced, kept active for a retry"
    [failed] = events(db, utc_admin, after)
    assert (failed["event_type"], failed["entity"]["last_error"], failed["entity"]["failed_attempts"]) == (
        "recurring_invoice.failed", reason, 1)
    for _ in range(4):
        run(db, "2026-03-02 12:00+00")
    assert schedule_state(db, s)[:4] == (False, 0, None, 5), "deactivated after 5 failures in a row"
    assert run(db, "2026-03-03 12:00+00") == []
    assert [e["event_type"] for e in events(db, utc_admin, after)] == ["recurring_invoice.failed"] * 5


def test_a_constraint_failing_halfway_leaves_no_invoice(db, utc_admin):
    s = schedule(db, utc_admin, customer(db, utc_admin), "2026-03-01",
                 lines=[("fine", 1, 10, 0), ("forbidden", 1, 10, 0)])
    db.execute("ALTER TABLE billhook.invoice_lines ADD CONSTRAINT test_forbidden CHECK (description <> 'forbidden') NOT VALID")
    try:
        after = last_event_id(db)
        [(action, _, _, detail)] = run(db, "2026-03-01 12:00+00")
        assert action == "failed" and "test_forbidden" in detail
        assert invoice_dates(db, s) == []
        assert [e["event_type"] for e in events(db, utc_admin, after)] == ["recurring_invoice.failed"], \
            "the rolled-back invoice emits no invoice.created"
    finally:
        db.execute("ALTER TABLE billhook.invoice_lines DROP CONSTRAINT test_forbidden")
    assert [r[0] for r in run(db, "2026-03-01 12:00+00")] == ["generated"], "retried on the next sweep"
    assert schedule_state(db, s)[3:] == (0, None)


def test_a_schedule_without_lines_fails(db, utc_admin):
    s = schedule(db, utc_admin, customer(db, utc_admin), "2026-03-01", lines=[])
    assert run(db, "2026-03-01 12:00+00") == [("failed", "RecurringInvoice", s, f"2026-03-01: recurring invoice {s} has no lines")]


def test_no_schedule_stops_the_sweep_for_the_others(db, utc_admin):
    """Values that overflowed where the sweep records a failure are refused at write; a failure that
    cannot be recorded all the same (a DBA's trigger refuses it here) deactivates its schedule with
    both reasons, and the sweep goes on to the next schedule, of another administration."""
    other = new_administration(db, "UTC")
    broken = schedule(db, utc_admin, customer(db, utc_admin), "2026-03-01", lines=[])
    healthy = schedule(db, other, customer(db, other), "2026-03-02")
    for sql, params in [
        ("UPDATE billhook.recurring_invoices SET failed_attempts = -1 WHERE id = %s", (broken,)),
        ("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description, price)"
         " VALUES (%s, %s, 'huge', 1e15)", (utc_admin, broken)),
        ("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description, amount,"
         " price) VALUES (%s, %s, 'not a number', 'NaN', 1)", (utc_admin, broken)),
        ("INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description, price)"
         " VALUES (%s, %s, 'infinite', '-Infinity')", (utc_admin, broken)),
    ]:
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute(sql, params)
    db.execute("CREATE FUNCTION public.refuse_failure_count() RETURNS trigger LANGUAGE plpgsql AS"
               " $$ BEGIN RAISE EXCEPTION 'failure counts are read-only today'; END $$")
    db.execute("CREATE TRIGGER refuse_failure_count BEFORE UPDATE OF failed_attempts ON billhook.recurring_invoices"
               " FOR EACH ROW WHEN (NEW.failed_attempts <> OLD.failed_attempts)"
               " EXECUTE FUNCTION public.refuse_failure_count()")
    try:
        swept = run(db, "2026-03-02 12:00+00")
    finally:
        db.execute("DROP TRIGGER refuse_failure_count ON billhook.recurring_invoices")
        db.execute("DROP FUNCTION public.refuse_failure_count()")
    reason = (f"recurring invoice {broken} has no lines; the failure could not be recorded:"
              " failure counts are read-only today")
    assert swept[0] == ("failed", "RecurringInvoice", broken, f"2026-03-01: {reason}")
    assert [r[0] for r in swept[1:]] == ["generated"] and swept[1][2] == healthy
    assert schedule_state(db, broken) == (False, 0, None, 0, reason)
    assert invoice_dates(db, healthy) == ["2026-03-02"]


def test_two_concurrent_sweeps_never_generate_a_period_twice(cluster, db, utc_admin):
    schedules = [schedule(db, utc_admin, customer(db, utc_admin), "2026-01-01") for _ in range(5)]
    barrier = threading.Barrier(2)
    results = []

    def sweep():
        with cluster.connect() as conn:
            barrier.wait()
            results.append(run(conn, "2026-06-15 12:00+00"))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in results) == 30
    for s in schedules:
        assert invoice_dates(db, s) == [f"2026-0{m}-01" for m in range(1, 7)]

    # A sweep that holds a schedule makes the other skip it; the schema refuses a duplicate anyway.
    held = schedule(db, utc_admin, customer(db, utc_admin), "2026-01-01")
    with cluster.connect() as first:
        first.execute("BEGIN")
        assert len(run(first, "2026-01-01 12:00+00")) == 1
        assert run(db, "2026-01-01 12:00+00") == [], "the locked schedule is skipped"
        first.execute("COMMIT")
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO billhook.invoices (administration_id, customer_id, recurring_invoice_id, recurring_period)"
                   " SELECT administration_id, customer_id, id, start_date FROM billhook.recurring_invoices WHERE id = %s",
                   (held,))


def test_overdue_invoices_become_late_in_the_administrations_time_zone(db):
    auckland = new_administration(db, "Pacific/Auckland")
    los_angeles = new_administration(db, "America/Los_Angeles")
    # 2026-11-21 12:00 UTC is already 2026-11-22 in Auckland and still 2026-11-21 in Los Angeles.
    nz = invoice(db, auckland, customer(db, auckland), state="open", due_date="2026-11-21", invoice_date="2026-11-01")
    la = invoice(db, los_angeles, customer(db, los_angeles), state="open", due_date="2026-11-21", invoice_date="2026-11-01")
    nz_after = la_after = last_event_id(db)
    done = run(db, "2026-11-21 12:00+00")
    assert ("overdue", "Invoice", nz, "due 2026-11-21") in done
    assert all(r[2] != la for r in done)
    assert [(e["event_type"], e["state"]) for e in events(db, auckland, nz_after)] == [
        ("invoice.updated", "late"), ("invoice.overdue", "late")]
    assert events(db, los_angeles, la_after) == []
    run(db, "2026-11-22 08:00+00")
    assert [e["event_type"] for e in events(db, los_angeles, la_after)] == ["invoice.updated", "invoice.overdue"]


def test_only_open_and_reminded_invoices_go_late(db, utc_admin):
    c = customer(db, utc_admin)
    ids = {state: invoice(db, utc_admin, c, state=state, due_date="2026-01-10", invoice_date="2026-01-01")
           for state in ("draft", "open", "reminded", "pending_payment", "paid", "cancelled")}
    run(db, "2026-02-01 00:00+00")
    states = dict(db.execute("SELECT id, state FROM billhook.invoices WHERE id = ANY(%s)", (list(ids.values()),)).fetchall())
    assert {s: states[i] for s, i in ids.items()} == {
        "draft": "draft", "open": "late", "reminded": "late", "pending_payment": "pending_payment",
        "paid": "paid", "cancelled": "cancelled"}


def test_open_quotations_past_valid_until_expire(db, utc_admin):
    c = customer(db, utc_admin)
    due = quotation(db, utc_admin, c, state="open", quotation_date="2026-01-01", valid_until="2026-01-31")
    still_valid = quotation(db, utc_admin, c, state="open", quotation_date="2026-01-01", valid_until="2026-02-01")
    accepted = quotation(db, utc_admin, c, state="accepted", quotation_date="2026-01-01", valid_until="2026-01-31")
    after = last_event_id(db)
    assert run(db, "2026-02-01 10:00+00") == [("expired", "Quotation", due, "valid until 2026-01-31")]
    emitted = events(db, utc_admin, after)
    assert [(e["event_type"], e["entity_id"], e["state"]) for e in emitted] == [
        ("quotation.updated", due, "expired"), ("quotation.expired", due, "expired")]
    assert emitted[1]["entity"]["valid_until"] == "2026-01-31"
    assert {still_valid, accepted}.isdisjoint(e["entity_id"] for e in emitted)


def test_time_zones_are_validated(db):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as bad:
        db.execute("INSERT INTO billhook.administrations (name, time_zone) VALUES ('x', 'Mars/Olympus')")
    assert 'unknown time zone "Mars/Olympus"' in str(bad.value)


def test_run_schedules_is_not_for_everyone(cluster, db):
    db.execute("DROP ROLE IF EXISTS billhook_nobody")
    db.execute("CREATE ROLE billhook_nobody LOGIN")
    with cluster.connect(user="billhook_nobody") as nobody:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute("SELECT * FROM billhook.run_schedules()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute("SELECT billhook.emit_event('RecurringInvoice', 1, 'recurring_invoice.failed', '{}')")


def test_the_worker_runs_due_schedules_and_delivers_both_events(cluster, worker_db, worker_admin, receiver):
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{recurring_invoice, invoice.created}', %s,"
                             " verify => false)",
                             (receiver.url("/recurring"), worker_admin)).fetchone()[0]
    today = worker_db.execute("SELECT (now() AT TIME ZONE time_zone)::date FROM billhook.administrations WHERE id = %s",
                              (worker_admin,)).fetchone()[0]
    s = schedule(worker_db, worker_admin, customer(worker_db, worker_admin), today)
    cluster.configure(schedule_interval="300ms")
    try:
        pushes = receiver.wait_for("/recurring", 2, timeout=10)
    finally:
        cluster.configure(schedule_interval=None)
    # Pushes travel in parallel, so arrival order is not guaranteed; event ids give the order.
    created, generated = sorted((json.loads(p.body) for p in pushes), key=lambda body: int(body["event_id"]))
    assert [created["action"], generated["action"]] == ["invoice.created", "recurring_invoice.generated"]
    assert (generated["entity_type"], generated["entity_id"], generated["webhook_id"]) == ("RecurringInvoice", str(s), str(hook))
    assert (generated["entity"]["occurrences"], generated["entity"]["last_invoice_id"]) == (1, created["entity_id"])
    assert created["entity"]["recurring_invoice_id"] == str(s)


def test_the_worker_delivers_its_own_sweeps_events_at_once(cluster, worker_db, worker_admin, receiver):
    # The sweep's commit wakes the worker like any other commit: with a 60 s poll and sweeps 3 s
    # apart, waiting for the next timer would show as seconds between the event and its push.
    cluster.configure(schedule_interval="3s")
    try:
        worker_db.execute("SELECT billhook.create_webhook(%s, '{recurring_invoice.generated}', %s, verify => false)",
                          (receiver.url("/swept"), worker_admin))
        today = worker_db.execute("SELECT (now() AT TIME ZONE time_zone)::date FROM billhook.administrations"
                                  " WHERE id = %s", (worker_admin,)).fetchone()[0]
        schedule(worker_db, worker_admin, customer(worker_db, worker_admin), today)
        [push] = receiver.wait_for("/swept", 1, timeout=10)
    finally:
        cluster.configure(schedule_interval=None)
    occurred = worker_db.execute("SELECT extract(epoch FROM occurred_at)::float8 FROM billhook.events WHERE id = %s",
                                 (int(json.loads(push.body)["event_id"]),)).fetchone()[0]
    assert push.at - occurred < 1.0


def test_an_invoice_too_large_for_an_event_is_skipped_and_the_sweep_goes_on(db):
    """Each of a tenant's commits stays within the 64 MiB an event may carry, but its invoice, once
    its customer has grown, would not: the sweep's commit (which writes invoice.late) must not fail
    for everyone. That invoice is skipped and said so; another tenant's goes late."""
    big, other = new_administration(db, "UTC"), new_administration(db, "UTC")
    grown = customer(db, big)
    too_large = invoice(db, big, grown, lines=[("x" * 10_000_000, 1, 10, 0)], invoice_date="2026-02-01",
                        due_date="2026-03-01", state="open")
    db.execute("UPDATE billhook.customers SET company_name = repeat('y', 60000000) WHERE id = %s", (grown,))
    try:
        fine = invoice(db, other, customer(db, other), invoice_date="2026-02-01", due_date="2026-03-01", state="open")
        swept = run(db, "2026-03-05 12:00+00")
        assert ("skipped", "Invoice", too_large, "its entity would be beyond the 64 MiB an event may carry") in swept
        assert ("overdue", "Invoice", fine, "due 2026-03-01") in swept
        assert db.execute("SELECT state FROM billhook.invoices WHERE id = %s", (too_large,)).fetchone()[0] == "open"
        assert db.execute("SELECT state FROM billhook.invoices WHERE id = %s", (fine,)).fetchone()[0] == "late"
    finally:
        db.execute("UPDATE billhook.customers SET company_name = 'small again' WHERE id = %s", (grown,))
