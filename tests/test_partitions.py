"""The outbox in windows of time (docs/operations.md, "The outbox's partitions"): events move into a
new window, their deliveries and attempts follow their event into its window's partitions, and
retention drops a window whole once everything in it is done and old, never before. The SQL
functions are driven directly in a database no worker serves; the last test lets a worker roll and
drop windows on its own, end to end at a real receiver."""

import json
import time

import psycopg
import pytest

from helpers import customer, dump_and_restore, make_worker_look_up_claims_floor, wait_until
from receiver import Receiver, Response

WINDOW = 1 << 40


@pytest.fixture
def windows(cluster):
    """A database of its own, which no worker serves: its windows move only when a test says so."""
    cluster.create_database("billhook_windows")
    try:
        with cluster.connect("billhook_windows") as conn:
            yield conn
    finally:
        with cluster.connect("postgres") as conn:
            conn.execute('DROP DATABASE "billhook_windows" WITH (FORCE)')


@pytest.fixture
def own_receiver():
    """A receiver of the test's own: the session's checks every push it got against the push schemas,
    and these pushes' entities are made up."""
    r = Receiver()
    yield r
    r.close()


def webhook(conn, url="http://127.0.0.1:9/hooks", events=("customer.created",), **options):
    extra = "".join(f", {name} => %s" for name in options)
    return conn.execute(f"SELECT id FROM billhook.create_webhook(%s, %s, 1, verify => false{extra})",
                        (url, list(events), *options.values())).fetchone()[0]


def roll(conn):
    """Moves the events' ids into the next window at once: an upkeep makes it (if it is not made
    yet), the next moves into it."""
    current = conn.execute("SELECT billhook.current_window()").fetchone()[0]
    for _ in range(2):
        moved = conn.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0]
        if moved > current:
            return moved
    raise AssertionError("the window did not move")


def moves_long_ago(conn):
    """Dates every window's opening and closing an hour earlier: the claims read no window for a
    move within the last minute (billhook.pending_from)."""
    conn.execute("UPDATE billhook.outbox_partitions"
                 " SET opened_at = opened_at - interval '1 hour', closed_at = closed_at - interval '1 hour'")


def fan_out(conn):
    return conn.execute("SELECT deliveries FROM billhook.fan_out()").fetchone()[0]


def partition(conn, table, row_id, column="id"):
    return conn.execute(f"SELECT tableoid::regclass::text FROM billhook.{table} WHERE {column} = %s",
                        (row_id,)).fetchone()[0]


def exists(conn, relation):
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()[0]


def test_events_move_into_the_next_window_and_their_deliveries_and_attempts_follow_them(windows):
    hook = webhook(windows)
    customer(windows, 1, company_name="Window Zero B.V.")
    assert fan_out(windows) == 1
    assert windows.execute("SELECT window_number, opened_at IS NOT NULL, closed_at IS NULL"
                           " FROM billhook.outbox_partitions ORDER BY 1").fetchall() == [(0, True, True)]
    # Not due yet: nothing is made ahead a day before.
    assert windows.execute("SELECT billhook.roll_outbox('1 day')").fetchone()[0] == 0
    assert not exists(windows, "billhook.events_1")
    # The upkeep that makes a window does not move into it: setval would outlive a rollback of the
    # window's making, and every commit would then fail for want of a partition.
    assert windows.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0] == 0
    assert exists(windows, "billhook.events_1")

    assert roll(windows) == 1
    assert windows.execute("SELECT billhook.current_window()").fetchone()[0] == 1
    customer(windows, 1, company_name="Window One B.V.")
    assert fan_out(windows) == 1
    first, second = windows.execute("SELECT id FROM billhook.events ORDER BY id").fetchall()
    assert first[0] < WINDOW and second[0] == WINDOW, "the new window's first id"
    assert partition(windows, "events", first[0]) == "billhook.events_0"
    assert partition(windows, "events", second[0]) == "billhook.events_1"
    delivery = windows.execute("SELECT id FROM billhook.deliveries WHERE event_id = %s", (second[0],)).fetchone()[0]
    assert partition(windows, "deliveries", delivery) == "billhook.deliveries_1"
    windows.execute("INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at,"
                    " duration_ms, succeeded) VALUES (%s, %s, %s, 1, now(), 3, true)", (delivery, second[0], hook))
    assert partition(windows, "delivery_attempts", delivery, "delivery_id") == "billhook.delivery_attempts_1"
    # An attempt must name its delivery's event: the pair is the foreign key.
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        windows.execute("INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt,"
                        " attempted_at, duration_ms, succeeded) VALUES (%s, %s, %s, 1, now(), 3, true)",
                        (delivery, first[0], hook))

    rows = windows.execute("SELECT window_number, opened_at IS NOT NULL, closed_at IS NOT NULL, closed_at >= opened_at"
                           " FROM billhook.outbox_partitions ORDER BY 1").fetchall()
    assert rows == [(0, True, True, True), (1, True, False, None)]
    assert windows.execute("SELECT obj_description('billhook.deliveries_1'::regclass, 'pg_class')").fetchone()[0] == \
        f"Window 1 of billhook.deliveries: the deliveries of the events with event ids from {WINDOW} to" \
        f" {2 * WINDOW - 1} (billhook.outbox_partitions)."
    # A push names its event by the id, a string: the jump is invisible to JSON readers.
    assert windows.execute("SELECT count(*) FROM billhook.delivery_status WHERE event_id = %s",
                           (second[0],)).fetchone()[0] == 1


def test_the_claims_start_at_the_oldest_window_holding_a_pending_delivery(windows):
    """billhook.pending_from: where the worker's claims start reading (claim.sql)."""
    def pending_from():
        return windows.execute("SELECT billhook.pending_from()").fetchone()[0]

    webhook(windows)
    customer(windows, 1, company_name="Window Zero B.V.")
    fan_out(windows)
    assert pending_from() == -(1 << 63), "window 0 starts at the lowest id"
    for window in (1, 2, 3):
        assert roll(windows) == window
        customer(windows, 1, company_name=f"Window {window} B.V.")
        fan_out(windows)

    def moved(hours_ago, *windows_moved_from):
        """Dates the moves out of these windows (into the next) as long ago as said, all at one time."""
        windows.execute(
            "UPDATE billhook.outbox_partitions AS p"
            " SET closed_at = CASE WHEN p.window_number = ANY (%(from)s) THEN m.at ELSE p.closed_at END,"
            "     opened_at = CASE WHEN p.window_number - 1 = ANY (%(from)s) THEN m.at ELSE p.opened_at END"
            " FROM (SELECT now() - make_interval(hours => %(hours)s) AS at) AS m"
            " WHERE p.window_number = ANY (%(from)s) OR p.window_number - 1 = ANY (%(from)s)",
            {"from": list(windows_moved_from), "hours": hours_ago})

    windows.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - interval '4 hours'"
                    " WHERE window_number = 0")
    moved(3, 0)
    moved(2, 1)
    moved(1, 2)
    # Window 0's delivery is pending: every window.
    assert pending_from() == -(1 << 63)
    windows.execute("UPDATE billhook.deliveries SET status = 'succeeded' WHERE event_id < %s", (2 * WINDOW,))
    # Windows 0 and 1 done: from window 2, which holds a pending delivery.
    assert pending_from() == 2 * WINDOW
    windows.execute("UPDATE billhook.deliveries SET status = 'pending' WHERE event_id >= %s AND event_id < %s",
                    (WINDOW, 2 * WINDOW))
    assert pending_from() == WINDOW
    # A failed delivery is not pending: it is not read by claims until redelivered.
    windows.execute("UPDATE billhook.deliveries SET status = 'failed' WHERE event_id < %s", (2 * WINDOW,))
    windows.execute("UPDATE billhook.deliveries SET status = 'succeeded' WHERE event_id >= %s", (2 * WINDOW,))
    # Nothing pending: from the current window, 3 (a transaction that drew its ids before the move
    # and commits later has its deliveries made by a fan-out that makes the worker look again).
    assert pending_from() == 3 * WINDOW
    # A partition that is not a window's as billhook made it (attached by hand; a window's name in
    # another schema, or for another range) is not trusted: the claims read every window.
    windows.execute("CREATE SCHEMA elsewhere")
    for name, bounds in (("billhook.stray", (50, 51)), ("elsewhere.deliveries_52", (52, 53)),
                         ("billhook.deliveries_1000", (54, 55))):
        windows.execute(f"CREATE TABLE {name} (LIKE billhook.deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        windows.execute(f"ALTER TABLE billhook.deliveries ATTACH PARTITION {name}"
                        " FOR VALUES FROM (%s) TO (%s)" % tuple(b * WINDOW for b in bounds))
        assert pending_from() == -(1 << 63), name
        windows.execute(f"ALTER TABLE billhook.deliveries DETACH PARTITION {name}")
        windows.execute(f"DROP TABLE {name}")
        assert pending_from() == 3 * WINDOW
    # Every window current within the last minute is read too: a fan-out that read the events'
    # sequence before a move may commit into it after the worker looked. The move into 3 a moment
    # ago ...
    moved(0, 2)
    assert pending_from() == 2 * WINDOW
    # ... and into 2 too: both moves.
    moved(0, 1, 2)
    assert pending_from() == WINDOW
    moved(1, 1, 2)
    assert pending_from() == 3 * WINDOW
    # A move not committed yet, as other sessions see it: the ids are in window 3 already, its
    # opening and window 2's closing are not.
    windows.execute("UPDATE billhook.outbox_partitions SET opened_at = NULL WHERE window_number = 3")
    windows.execute("UPDATE billhook.outbox_partitions SET closed_at = NULL WHERE window_number = 2")
    assert pending_from() == 2 * WINDOW
    moved(1, 2)
    assert pending_from() == 3 * WINDOW
    # The events' ids moved below window 0 (a sequence altered by hand): window 0, every window.
    windows.execute("ALTER SEQUENCE billhook.events_id_seq MINVALUE -100 RESTART WITH -50")
    assert pending_from() == -(1 << 63)


def test_the_window_functions_refuse_what_is_not_a_window_or_a_width(windows):
    for statement in ("SELECT billhook.roll_outbox('0')", "SELECT billhook.roll_outbox('-1 day')",
                      "SELECT billhook.add_outbox_window(-1)", "SELECT billhook.add_outbox_window(8388607)",
                      "SELECT billhook.add_outbox_window(NULL)", "SELECT billhook.drop_outbox_window('-1 second')",
                      "SELECT billhook.drop_outbox_window(NULL)",
                      "SELECT billhook.drop_outbox_window('1 day', '-1 second')"):
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            windows.execute(statement)
        assert refused.value.diag.message_hint, statement
    assert windows.execute("SELECT count(*) FROM billhook.outbox_partitions").fetchone()[0] == 1
    # Its look again, once the locks are held, must see what committed meanwhile.
    windows.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(psycopg.errors.InvalidTransactionState) as refused:
        windows.execute("SELECT billhook.drop_outbox_window('1 day')")
    windows.execute("ROLLBACK")
    assert "READ COMMITTED" in refused.value.diag.message_hint


def test_ids_never_move_into_a_window_made_in_the_same_transaction(windows):
    """setval outlives a rollback: had a second upkeep in the transaction that made the window moved
    the ids into it, the rollback would leave them in a window with no partitions, and every commit
    that writes an event would fail."""
    with windows.transaction():
        assert windows.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0] == 0
        assert exists(windows, "billhook.events_1")
        assert windows.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0] == 0
        assert windows.execute("SELECT billhook.current_window()").fetchone()[0] == 0
        raise psycopg.Rollback()
    assert not exists(windows, "billhook.events_1")
    customer(windows, 1, company_name="After The Rollback B.V.")
    assert windows.execute("SELECT max(id) FROM billhook.events").fetchone()[0] < WINDOW


def test_the_upkeep_makes_a_missing_current_window_even_when_windows_never_move(windows):
    """A dump reads the sequence after the tables: one taken across a move holds the sequence in a
    window it holds no partitions of. The upkeep makes the current window, with width NULL
    (billhook.outbox_window = 0) too, and does not move on."""
    windows.execute("SELECT setval('billhook.events_id_seq', %s, false)", (3 * WINDOW,))
    with pytest.raises(psycopg.errors.CheckViolation):
        customer(windows, 1)
    assert windows.execute("SELECT billhook.roll_outbox(NULL)").fetchone()[0] == 3
    assert windows.execute("SELECT billhook.roll_outbox(NULL)").fetchone()[0] == 3
    customer(windows, 1, company_name="Window Three B.V.")
    assert windows.execute("SELECT max(id) FROM billhook.events").fetchone()[0] // WINDOW == 3
    assert not exists(windows, "billhook.events_4"), "width NULL makes nothing ahead"


def test_a_window_goes_whole_only_once_everything_in_it_is_done_and_old(windows):
    webhook(windows)
    customer(windows, 1)
    customer(windows, 1)
    assert fan_out(windows) == 2
    roll(windows)
    customer(windows, 1)
    assert fan_out(windows) == 1

    def drop(older_than="0", failed_older_than=None):
        return windows.execute("SELECT billhook.drop_outbox_window(%s, %s)",
                               (older_than, failed_older_than)).fetchone()[0]

    def settle(status, window, ago="2 hours"):
        windows.execute(f"UPDATE billhook.deliveries SET status = %s, delivered_at = CASE WHEN %s = 'succeeded'"
                        f" THEN now() - interval '{ago}' END, last_attempt_at = now() - interval '{ago}'"
                        " WHERE event_id >= %s AND event_id < %s", (status, status, window * WINDOW,
                                                                    (window + 1) * WINDOW))

    assert drop() is None, "pending deliveries keep window 0"
    settle("failed", 0)
    assert drop() is None, "failed deliveries keep window 0 while no age is given for them"
    assert drop("0", "3 hours") is None, "failed deliveries last attempted two hours ago, kept for three"
    windows.execute("UPDATE billhook.deliveries SET last_attempt_at = NULL WHERE event_id < %s", (WINDOW,))
    assert drop("0", "1 hour") is None, "never attempted: their age is their creation's, a moment ago"
    settle("failed", 0)
    windows.execute("UPDATE billhook.deliveries SET status = 'pending'"
                    " WHERE id = (SELECT min(id) FROM billhook.deliveries WHERE event_id < %s)", (WINDOW,))
    assert drop("0", "1 hour") is None, "a pending delivery keeps the window whatever the failed ones' age"
    settle("succeeded", 0)
    assert drop("1 hour") is None, "its events occurred less than an hour ago"
    windows.execute("UPDATE billhook.events SET occurred_at = now() - interval '3 hours' WHERE id < %s", (WINDOW,))
    windows.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - interval '4 hours',"
                    " closed_at = now() - interval '3 hours' WHERE window_number = 0")
    settle("succeeded", 0, ago="30 minutes")
    assert drop("1 hour") is None, "a delivery acknowledged half an hour ago"
    settle("succeeded", 0)
    assert drop("1 hour") == 0
    for table in ("events_0", "deliveries_0", "delivery_attempts_0"):
        assert not exists(windows, f"billhook.{table}")
    assert windows.execute("SELECT array_agg(window_number) FROM billhook.outbox_partitions").fetchone()[0] == [1]
    assert windows.execute("SELECT count(*), min(id) FROM billhook.events").fetchone() == (1, WINDOW)

    settle("failed", 1)
    assert drop("0", "1 hour") is None, "the current window is never dropped"
    roll(windows)
    customer(windows, 1)  # window 2: committed, not fanned out yet
    roll(windows)
    assert drop() is None, "window 1's failed deliveries keep it while no age is given for them"
    assert drop("0", "1 hour") == 1, "failed two hours ago, kept for one"
    assert drop() is None, "window 2's event waits for its fan-out"
    assert fan_out(windows) == 1
    settle("succeeded", 2)
    assert drop() == 2
    assert windows.execute("SELECT array_agg(window_number ORDER BY 1) FROM billhook.outbox_partitions"
                           ).fetchone()[0] == [3]
    # A window's rows deleted row by row meanwhile leave nothing to keep it either: the purge and
    # the drop go together.
    assert windows.execute("SELECT * FROM billhook.purge('0')").fetchone() == (0, 0)


def test_an_application_role_reads_the_outbox_through_its_tables_never_its_partitions(windows):
    windows.execute("SELECT billhook.create_roles()")
    webhook(windows)
    customer(windows, 1)
    fan_out(windows)
    windows.execute("SET ROLE billhook_reader")
    try:
        assert windows.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == 1
        for relation in ("events_0", "deliveries_0", "delivery_attempts_0", "outbox_partitions"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                windows.execute(f"SELECT count(*) FROM billhook.{relation}")
        for call in ("billhook.roll_outbox('1 day')", "billhook.drop_outbox_window('0')",
                     "billhook.add_outbox_window(5)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                windows.execute(f"SELECT {call}")
    finally:
        windows.execute("RESET ROLE")


def test_new_windows_are_no_one_elses_whatever_default_privileges_say(windows):
    windows.execute("SELECT billhook.create_roles()")
    windows.execute('CREATE ROLE "Read-Only Analysts"')
    windows.execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO billhook_reader")
    windows.execute('ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO "Read-Only Analysts"')
    windows.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA billhook GRANT ALL ON TABLES TO PUBLIC")
    try:
        roll(windows)
        for table in ("events_1", "deliveries_1", "delivery_attempts_1"):
            assert windows.execute("SELECT has_table_privilege('billhook_reader', %s, 'SELECT'),"
                                   " has_table_privilege('billhook_app', %s, 'INSERT'),"
                                   " has_table_privilege('Read-Only Analysts', %s, 'SELECT')",
                                   (f"billhook.{table}",) * 3).fetchone() == (False, False, False), table
        assert windows.execute("SELECT has_table_privilege('billhook_reader', 'billhook.events', 'SELECT')"
                               ).fetchone()[0]
    finally:
        windows.execute("ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM billhook_reader")
        windows.execute('ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM "Read-Only Analysts"')
        windows.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA billhook REVOKE ALL ON TABLES FROM PUBLIC")
        windows.execute('DROP OWNED BY "Read-Only Analysts"')
        windows.execute('DROP ROLE "Read-Only Analysts"')


def test_a_grant_on_every_table_of_the_schema_shows_no_partition_and_the_upkeep_takes_it_back(windows):
    """GRANT ... ON ALL TABLES IN SCHEMA reaches the partitions too, and a restore gives them the
    restoring role's default privileges (pg_dump keeps no ACL that matches the default): row-level
    security without a policy shows them empty to anyone but their owner, and the next upkeep takes
    the rights back."""
    windows.execute("SELECT billhook.create_roles()")
    webhook(windows)
    customer(windows, 1)
    fan_out(windows)
    windows.execute("GRANT SELECT ON ALL TABLES IN SCHEMA billhook TO billhook_reader")
    windows.execute("SET ROLE billhook_reader")
    try:
        assert windows.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == 1
        for relation in ("events_0", "deliveries_0", "delivery_attempts_0"):
            assert windows.execute(f"SELECT count(*) FROM billhook.{relation}").fetchone()[0] == 0, relation
    finally:
        windows.execute("RESET ROLE")
    windows.execute("SELECT billhook.roll_outbox('1 day')")
    assert windows.execute("SELECT has_table_privilege('billhook_reader', 'billhook.events_0', 'SELECT'),"
                           " has_table_privilege('billhook_reader', 'billhook.events', 'SELECT')").fetchone() == (
        False, True)


def test_making_or_dropping_a_window_never_waits_in_line_for_a_lock(windows, cluster):
    """A lock waited for holds up every lock asked after it: the outcomes' UPDATE of webhooks behind
    a window being attached, every commit behind a drop. Both give up (55P03) rather than queue, and
    vacuum of another window does not stop a drop."""
    hook = webhook(windows)
    customer(windows, 1)
    fan_out(windows)
    with cluster.connect("billhook_windows") as other:
        other.execute("BEGIN")
        other.execute("UPDATE billhook.webhooks SET updated_at = now() WHERE id = %s", (hook,))
        with pytest.raises(psycopg.errors.LockNotAvailable):
            windows.execute("SELECT billhook.roll_outbox('1 microsecond')")
        other.execute("ROLLBACK")
    roll(windows)
    windows.execute("UPDATE billhook.deliveries SET status = 'succeeded', delivered_at = now() - interval '1 hour'")
    windows.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - interval '2 hours',"
                    " closed_at = now() - interval '1 hour' WHERE window_number = 0")
    with cluster.connect("billhook_windows") as other:
        other.execute("BEGIN")
        # What (auto)vacuum takes on the partition it vacuums.
        other.execute("LOCK TABLE billhook.deliveries_1 IN SHARE UPDATE EXCLUSIVE MODE")
        assert windows.execute("SELECT billhook.drop_outbox_window('0')").fetchone()[0] == 0
        other.execute("ROLLBACK")
        customer(windows, 1)
        fan_out(windows)
        roll(windows)
        windows.execute("UPDATE billhook.deliveries SET status = 'succeeded', delivered_at = now() - interval '1 hour'")
        windows.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - interval '2 hours',"
                        " closed_at = now() - interval '1 hour' WHERE window_number = 1")
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM billhook.events")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            windows.execute("SELECT billhook.drop_outbox_window('0')")
        other.execute("ROLLBACK")
    assert windows.execute("SELECT billhook.drop_outbox_window('0')").fetchone()[0] == 1


def test_a_dump_with_several_windows_restores_with_its_windows_rows_and_times(cluster):
    """The worker's windows are dumped as tables of their own; window 0 came with CREATE EXTENSION
    and, once dropped, is gone from the dump too. pg_restore --exit-on-error, as docs/operations.md says."""
    cluster.create_database("windows_origin")
    cluster.create_database("windows_restored", with_extension=False)
    try:
        with cluster.connect("windows_origin") as origin:
            webhook(origin)
            customer(origin, 1, company_name="Window 0")
            fan_out(origin)
            roll(origin)
            customer(origin, 1, company_name="Window 1")
            fan_out(origin)
            roll(origin)
            customer(origin, 1, company_name="Window 2")
            fan_out(origin)
            origin.execute("UPDATE billhook.deliveries SET status = 'succeeded', delivered_at = now() - interval '1 day'"
                           " WHERE event_id < %s", (WINDOW,))
            assert origin.execute("SELECT billhook.drop_outbox_window('0')").fetchone()[0] == 0
            rows = "SELECT e.id, e.entity->>'company_name', d.webhook_id, d.idempotency_key, d.tableoid::regclass::text" \
                   " FROM billhook.events AS e JOIN billhook.deliveries AS d ON d.event_id = e.id ORDER BY e.id"
            windows_query = "SELECT window_number, opened_at, closed_at FROM billhook.outbox_partitions ORDER BY 1"
            before, windows_before = origin.execute(rows).fetchall(), origin.execute(windows_query).fetchall()
            assert [r[1] for r in before] == ["Window 1", "Window 2"]
        dump_and_restore(cluster, "windows_origin", "windows_restored")
        with cluster.connect("windows_restored") as restored:
            assert restored.execute(rows).fetchall() == before
            # Window 0 came with CREATE EXTENSION, empty; the dump's windows keep their times.
            assert restored.execute(windows_query).fetchall()[1:] == windows_before
            assert restored.execute("SELECT count(*) FROM billhook.events_0").fetchone()[0] == 0
            assert restored.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'deliveries_2'").fetchone()[0] == 8
            customer(restored, 1, company_name="After")
            assert restored.execute("SELECT max(id) >> 40 FROM billhook.events").fetchone()[0] == 2
            # The first upkeep counts the empty window 0 as closed (it is below the current one),
            # and the retention drops it.
            assert roll(restored) == 3
            assert restored.execute("SELECT billhook.drop_outbox_window('0')").fetchone()[0] == 0
    finally:
        with cluster.connect("postgres") as conn:
            for name in ("windows_origin", "windows_restored"):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_worker_moves_to_new_windows_and_drops_the_old_ones_keeping_failed_deliveries_for_their_retention(own_cluster, receiver):
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '60s'", "billhook.outbox_window = '2s'",
                          "billhook.retention = '1s'")
    receiver.plan("/windows-failing", *[Response(500)] * 5)
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook")
        webhook(conn, receiver.url("/windows"))
        failing = webhook(conn, receiver.url("/windows-failing"), retry_schedule="")
        customer(conn, 1, company_name="Early B.V.")
        early = json.loads(receiver.wait_for("/windows", 1)[0].body)
        assert int(early["event_id"]) < WINDOW
        assert wait_until(lambda: conn.execute("SELECT billhook.current_window() >= 1").fetchone()[0], timeout=30)
        customer(conn, 1, company_name="Later B.V.")
        later = json.loads(receiver.wait_for("/windows", 2)[1].body)
        window = int(later["event_id"]) >> 40
        assert window >= 1
        assert wait_until(lambda: conn.execute("SELECT count(*) FROM billhook.deliveries"
                                               " WHERE webhook_id = %s AND status = 'failed'",
                                               (failing,)).fetchone()[0] == 2, timeout=30)
        # Windows 0 and `window` each hold a failed delivery: they stay; the empty windows after
        # them go as they close.
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM billhook.outbox_partitions WHERE window_number > %s AND closed_at IS NOT NULL",
            (window,)).fetchone()[0] == 0 and conn.execute(
            "SELECT billhook.current_window() > %s + 1", (window,)).fetchone()[0], timeout=30)
        kept = [w for (w,) in conn.execute("SELECT window_number FROM billhook.outbox_partitions ORDER BY 1")]
        assert 0 in kept and window in kept
        assert conn.execute("SELECT count(*) FROM billhook.events").fetchone()[0] == 2
        # The claims read from the oldest window holding a pending delivery on, a later one here:
        # window 0's failed delivery, redelivered, goes out at once (not a poll interval, a minute
        # here, later).
        make_worker_look_up_claims_floor(conn, receiver, "/windows-probe")
        early_failed = conn.execute("SELECT id FROM billhook.deliveries WHERE webhook_id = %s AND event_id < %s",
                                    (failing, WINDOW)).fetchone()[0]
        conn.execute("SELECT billhook.redeliver(%s)", (early_failed,))
        again = receiver.wait_for("/windows-failing", 3, timeout=15)
        assert len(again) == 3 and json.loads(again[2].body)["event_id"] == early["event_id"]
        assert wait_until(lambda: conn.execute("SELECT status FROM billhook.deliveries WHERE id = %s AND event_id < %s",
                                               (early_failed, WINDOW)).fetchone()[0] == "failed", timeout=15)
        # Once the failed deliveries are older than billhook.failed_retention (30 days by default),
        # their windows go too.
        cluster.configure(failed_retention="1s")
        assert wait_until(lambda: not conn.execute(
            "SELECT EXISTS (SELECT FROM billhook.outbox_partitions WHERE window_number IN (0, %s))",
            (window,)).fetchone()[0], timeout=30)
        # Operational events the failures made may stay in the current window; the customers' went.
        assert conn.execute("SELECT count(*) FROM billhook.events WHERE event_type = 'customer.created'"
                            ).fetchone()[0] == 0
        assert "ERROR" not in cluster.server_log()


def test_a_delivery_owed_into_an_older_window_is_claimed_at_once(own_cluster, receiver):
    """A debt of the fan-out (its webhook was locked) paid after the events' ids moved twice lies
    below where the claims start: the fan-out that pays it makes the worker look again, so it goes
    out at once, not a poll interval (a minute here) later."""
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '60s'")
    with cluster.connect("postgres") as conn, cluster.connect("postgres") as holder:
        conn.execute("CREATE EXTENSION billhook")
        hook = webhook(conn, receiver.url("/owed"))
        with holder.transaction():
            holder.execute("SELECT FROM billhook.webhooks WHERE id = %s FOR UPDATE", (hook,))
            customer(conn, 1, company_name="Owed B.V.")
            assert wait_until(lambda: conn.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 1)
            for _ in range(2):
                roll(conn)
            make_worker_look_up_claims_floor(conn, receiver, "/owed-probe")
        pushed = receiver.wait_for("/owed", 1, timeout=15)
        assert int(json.loads(pushed[0].body)["event_id"]) < WINDOW
        assert conn.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 0


def test_events_committed_into_the_window_before_the_current_go_out_at_once(own_cluster, receiver):
    """The claims read from the current window once the one before holds nothing pending. A
    transaction that drew its events' ids before the move and commits after it (prepared here) has
    its deliveries made below that: the fan-out that makes them makes the worker look again, so they
    go out at once, not a poll interval (a minute here) later."""
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '60s'")
    with cluster.connect("postgres") as conn, cluster.connect("postgres") as late:
        conn.execute("CREATE EXTENSION billhook")
        webhook(conn, receiver.url("/late"))
        # Window 1 made before, as the upkeep makes it ahead: making it waits for no transaction.
        assert conn.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0] == 0
        late.execute("BEGIN")
        customer(late, 1, company_name="Late B.V.")
        late.execute("PREPARE TRANSACTION 'billhook_late_into_window_0'")
        assert roll(conn) == 1
        # Committed an hour after the move: the claims no longer read the window before.
        moves_long_ago(conn)
        make_worker_look_up_claims_floor(conn, receiver, "/late-probe")
        assert conn.execute("SELECT billhook.pending_from()").fetchone()[0] == WINDOW
        conn.execute("COMMIT PREPARED 'billhook_late_into_window_0'")
        customer(conn, 1, company_name="On Time B.V.")
        pushed = receiver.wait_for("/late", 2, timeout=15)
        assert sorted(int(json.loads(p.body)["event_id"]) >> 40 for p in pushed) == [0, 1]
        assert sorted(json.loads(p.body)["entity"]["company_name"] for p in pushed) == ["Late B.V.", "On Time B.V."]


def test_a_fan_out_open_across_a_move_into_the_window_before_is_claimed_at_once(own_cluster, receiver):
    """A fan-out tells whether it made deliveries below the current window by the events' sequence,
    read before it commits: one that read it before a move and commits after the worker looked up
    where its claims start, after the move, does not make the worker look again. The look-up keeps
    every window current within the last minute, so the delivery is claimed in the next round, not
    a poll interval (a minute here) later."""
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '60s'", "track_functions = 'pl'")

    def look_ups():
        return conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                            " WHERE funcname = 'pending_from'").fetchone()[0]

    with cluster.connect("postgres") as conn, cluster.connect("postgres") as fan_out_session:
        conn.execute("CREATE EXTENSION billhook")
        webhook(conn, receiver.url("/race"))
        assert conn.execute("SELECT billhook.roll_outbox('1 microsecond')").fetchone()[0] == 0
        with fan_out_session.transaction():
            # The worker's fan-out finds the pass taken and leaves the event to this session's.
            fan_out_session.execute("SELECT FROM billhook.fan_out_state FOR UPDATE")
            customer(conn, 1, company_name="Racing B.V.")
            assert fan_out(fan_out_session) == 1
            assert roll(conn) == 1
            # The worker reports its statistics within a second of a transaction, or of falling
            # asleep: the look-ups of earlier rounds are counted by then.
            time.sleep(2.5)
            before = look_ups()
            conn.execute("SELECT billhook.wake_worker_at_commit()")
            assert wait_until(lambda: look_ups() > before, timeout=15), "the worker looked up its claims' floor"
            assert conn.execute("SELECT billhook.pending_from()").fetchone()[0] == -(1 << 63), "window 0 on"
        customer(conn, 1, company_name="On Time B.V.")
        pushed = receiver.wait_for("/race", 2, timeout=15)
        assert sorted(int(json.loads(p.body)["event_id"]) >> 40 for p in pushed) == [0, 1]
        assert "could not look up" not in cluster.server_log()


def test_a_dead_workers_lease_in_an_older_window_is_freed_when_the_worker_starts(own_cluster, receiver):
    """The worker's start frees the leases dead processes left on pending deliveries from the oldest
    window holding one on (billhook.pending_from), not only from where claims usually start: a
    delivery two windows back, leased for a day by a worker that is gone, goes out at once."""
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on")

    def serve(database):
        cluster.configure(database=database)
        assert wait_until(lambda: cluster.worker_database() == database)

    with cluster.connect("postgres") as conn:
        serve("template1")
        conn.execute("CREATE EXTENSION billhook")
        webhook(conn, receiver.url("/stale-lease"))
        assert roll(conn) == 1
        customer(conn, 1, company_name="Stale Lease B.V.")
        assert fan_out(conn) == 1
        for window in (2, 3):
            assert roll(conn) == window
        with cluster.connect("postgres") as gone:
            dead = gone.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert wait_until(lambda: not conn.execute("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
                                                   (dead,)).fetchone()[0])
        leased = conn.execute("UPDATE billhook.deliveries SET locked_by = %s, locked_until = now() + interval '1 day'"
                              " RETURNING event_id", (dead,)).fetchall()
        assert [WINDOW <= event_id < 2 * WINDOW for (event_id,) in leased] == [True]
        moves_long_ago(conn)
        assert conn.execute("SELECT billhook.pending_from()").fetchone()[0] == WINDOW, "not every window"
        serve("postgres")
        pushed = receiver.wait_for("/stale-lease", 1, timeout=15)
        assert len(pushed) == 1, "the lease was freed and the delivery pushed at the worker's start"
        assert WINDOW <= int(json.loads(pushed[0].body)["event_id"]) < 2 * WINDOW
        assert wait_until(lambda: conn.execute("SELECT status, locked_by FROM billhook.deliveries").fetchall()
                          == [("succeeded", None)])


def test_the_worker_plans_again_as_a_window_it_planned_for_empty_fills(own_cluster, own_receiver):
    """The worker keeps its claim and outcome plans; PostgreSQL makes them again when a partition is
    next analyzed. Made on a window analyzed while empty (as a scheduled ANALYZE or a restore's
    leaves a window made ahead), they estimate it at a row or none, and once it fills they would read
    all of it at each claim and outcome write until autovacuum (off here) analyzes it: the worker
    makes them again each time a window they read has grown fourfold (plans.rs, size_class)."""
    pushes = 10_000
    cluster = own_cluster("billhook.database = 'postgres'", "billhook.allow_private_targets = on",
                          "billhook.poll_interval = '100ms'", "autovacuum = off")
    with cluster.connect("postgres") as conn:
        conn.execute("CREATE EXTENSION billhook")
        conn.execute("ANALYZE billhook.events, billhook.deliveries, billhook.delivery_attempts")
        hook = webhook(conn, own_receiver.url("/filled"), events=("invoice.created",))

        def queue(count):
            conn.execute("""
                WITH e AS (INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id,
                                                        state, entity, occurred_at, transaction_id)
                           SELECT 1, 'invoice.created', 'Invoice', n, 'draft', '{}', now(), '0'
                           FROM generate_series(1, %s) AS n RETURNING id, occurred_at)
                INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key, status, next_attempt_at)
                SELECT e.id, %s, gen_random_uuid(), 'pending', e.occurred_at FROM e""", (count, hook))

        queue(1)
        # The plans, made on the empty window, and the first push's outcome written with them.
        own_receiver.wait_for("/filled", 1)
        assert wait_until(lambda: conn.execute("SELECT status FROM billhook.deliveries").fetchone()[0] == "succeeded")
        conn.execute("SELECT pg_stat_reset()")
        queue(pushes)
        own_receiver.wait_for("/filled", 1 + pushes, timeout=120)

        def counts():
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return conn.execute("SELECT n_tup_upd, seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
                                " WHERE relid = 'billhook.deliveries_0'::regclass").fetchone()

        # Every push's lease and outcome written and reported (each delivery is updated twice).
        assert wait_until(lambda: counts()[0] >= 2 * pushes, timeout=10), counts()
        # Some rows read per push (a claim reads its batch through the index of pending deliveries,
        # an outcome write its deliveries by key, and a few more looks each round: more the smaller
        # the rounds a slow machine makes), not the whole window at each claim and outcome write
        # (hundreds per push).
        assert counts()[1] < 100 * pushes, counts()
        assert conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'"
                            ).fetchone()[0] == 1 + pushes


# One day of an outbox as the worker leaves it (bench/run.py, P6): events the fan-out has passed
# (transaction id 0), a succeeded delivery of each to the webhook, an attempt each; about invoices
# no test makes.
HISTORY_WINDOW = """
    WITH e AS (
        INSERT INTO billhook.events (id, administration_id, event_type, entity_type, entity_id, state, entity,
                                     occurred_at, transaction_id)
        SELECT billhook.window_start(%(window)s) + n, 1, 'invoice.created', 'Invoice', 1000000000 + n, 'draft', '{}',
               now() - make_interval(days => %(days_ago)s) + make_interval(secs => n), '0'
        FROM generate_series(1, %(events)s) AS n
        RETURNING id, occurred_at),
    d AS (
        INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key, status, attempts, next_attempt_at,
                                         last_attempt_at, last_http_status, delivered_at, created_at)
        SELECT e.id, %(hook)s, gen_random_uuid(), 'succeeded', 1, e.occurred_at, e.occurred_at, 200,
               e.occurred_at + interval '7 ms', e.occurred_at
        FROM e
        RETURNING id, event_id, webhook_id, last_attempt_at)
    INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at, duration_ms,
                                            http_status, succeeded)
    SELECT d.id, d.event_id, d.webhook_id, 1, d.last_attempt_at, 2, 200, true FROM d"""


def test_the_hot_paths_read_none_of_forty_older_windows_rows(windows):
    """Forty days of history, a window each, and today's window: a commit, the fan-out, the reports
    over the last hour, a replay and a redelivery of today's pushes, and the erasure of today's
    invoice read none of the older windows' rows (each window's indexes find next to nothing there
    to read), however many windows there are. The erasure of a customer is the exception: its
    copies nested in other kinds' events are found by reading every event of those kinds
    (docs/operations.md, "Erasure")."""
    history, per_window = 40, 5000
    hook = webhook(windows, events=("customer.created", "invoice.created"))
    first = windows.execute("SELECT billhook.current_window()").fetchone()[0] + 1
    for k in range(first, first + history):
        days_ago = first + history - k
        windows.execute("SELECT billhook.add_outbox_window(%s)", (k,))
        windows.execute(HISTORY_WINDOW, {"window": k, "days_ago": days_ago, "events": per_window, "hook": hook})
        windows.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - make_interval(days => %s),"
                        " closed_at = now() - make_interval(days => %s) WHERE window_number = %s",
                        (days_ago + 1, days_ago, k))
    today = first + history
    windows.execute("SELECT billhook.add_outbox_window(%s)", (today,))
    windows.execute("SELECT setval('billhook.events_id_seq', billhook.window_start(%s), false)", (today,))
    # Vacuumed and analyzed, as autovacuum leaves a day-old window (its BRIN index's ranges
    # summarized).
    windows.execute("VACUUM (ANALYZE) billhook.events, billhook.deliveries, billhook.delivery_attempts")
    older = [row[0] for row in windows.execute(
        "SELECT t.relid::regclass::text FROM unnest('{billhook.events, billhook.deliveries,"
        " billhook.delivery_attempts}'::regclass[]) AS p(parent), pg_partition_tree(p.parent) AS t"
        " WHERE t.isleaf AND substring(t.relid::regclass::text FROM '_([0-9]+)$')::integer < %s", (today,))]
    assert len(older) == 3 * (history + 1)

    def rows_read_in_older_windows(run):
        """Rows the statement read from the older windows' partitions: by scan, or index entries."""
        def counts():
            # The backend's counts go to the shared statistics when it is next idle.
            windows.execute("SELECT pg_stat_force_next_flush()")
            windows.execute("SELECT pg_stat_clear_snapshot()")
            return windows.execute(
                "SELECT (SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables WHERE relid = ANY (%s::regclass[]))"
                " + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes WHERE relid = ANY (%s::regclass[]))",
                (older, older)).fetchone()[0]
        before = counts()
        run()
        return counts() - before

    assert rows_read_in_older_windows(lambda: None) == 0
    reads = {}
    reads["commit"] = rows_read_in_older_windows(lambda: customer(windows, 1))
    reads["fan-out"] = rows_read_in_older_windows(lambda: fan_out(windows))
    delivery = windows.execute("SELECT id FROM billhook.deliveries WHERE event_id >= billhook.window_start(%s)",
                               (today,)).fetchone()[0]
    windows.execute("UPDATE billhook.deliveries SET status = 'succeeded', attempts = 1, delivered_at = now(),"
                    " last_attempt_at = now() WHERE id = %s", (delivery,))
    windows.execute("INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at,"
                    " duration_ms, http_status, succeeded) SELECT id, event_id, webhook_id, 1, now(), 2, 200, true"
                    " FROM billhook.deliveries WHERE id = %s", (delivery,))
    # A push of the oldest window still pending (a webhook retrying for days): the backlog's join
    # reads it, and nothing of the windows between it and today's.
    windows.execute("UPDATE billhook.deliveries SET status = 'pending', delivered_at = NULL"
                    " WHERE event_id = billhook.window_start(%s) + 1", (first,))
    reads["webhook_stats"] = rows_read_in_older_windows(
        lambda: windows.execute("SELECT * FROM billhook.webhook_stats(now() - interval '1 hour')").fetchall())
    assert windows.execute("SELECT sum(backlog) FROM billhook.webhook_stats(now() - interval '1 hour')"
                           ).fetchone()[0] == 1
    reads["delivery_report"] = rows_read_in_older_windows(
        lambda: windows.execute("SELECT * FROM billhook.delivery_report(now() - interval '1 hour', webhook_id => %s)",
                                (hook,)).fetchall())
    reads["delivery_report of every webhook"] = rows_read_in_older_windows(
        lambda: windows.execute("SELECT * FROM billhook.delivery_report(now() - interval '1 hour')").fetchall())
    reads["replay"] = rows_read_in_older_windows(
        lambda: windows.execute("SELECT billhook.replay(%s, now() - interval '1 hour', only_failed => false)",
                                (hook,)))
    reads["redeliver"] = rows_read_in_older_windows(
        lambda: windows.execute("SELECT billhook.redeliver(%s)", (delivery,)))
    invoice = windows.execute(
        "INSERT INTO billhook.invoices (administration_id, customer_id) VALUES (1, %s) RETURNING id",
        (windows.execute("SELECT max(id) FROM billhook.customers").fetchone()[0],)).fetchone()[0]
    assert fan_out(windows) == 1
    reads["erasure of an invoice"] = rows_read_in_older_windows(
        lambda: windows.execute("SELECT billhook.erase_entity('Invoice', %s)", (invoice,)))
    # An index's look into each older window finds its edge, a row or two, and so does the
    # planner's estimate of a range or a join in each window (the reports plan each window's join:
    # about ten index entries a window); never the windows' rows, which a hash join or a scan reads
    # (200,000 of them for the reports and 400,000 for the erasure when they joined every window as
    # one).
    older_windows = history + 1
    reports = {"webhook_stats", "delivery_report", "delivery_report of every webhook"}
    assert not {path: n for path, n in reads.items() if n > (16 if path in reports else 2) * older_windows}, reads
    assert reads["commit"] == 0, reads
    # The one path that reads the older windows: every invoice event, for copies of the customer.
    erasure = rows_read_in_older_windows(
        lambda: windows.execute("SELECT billhook.erase_entity('Customer', 1)"))
    assert erasure >= history * per_window, erasure


def test_the_reports_count_what_is_in_windows_far_apart_and_in_a_partition_attached_by_hand(windows):
    """The reports join window by window: a delivery left pending in window 0, one succeeded in
    window 1 and one failed in window 3 (window 2 empty) are all counted, and so is a delivery in
    partitions a DBA attached by hand, which are no window's and may hold any event."""
    hook = webhook(windows)

    def settle(status):
        windows.execute(
            "WITH settled AS (UPDATE billhook.deliveries SET status = %(status)s, attempts = 1, last_attempt_at = now(),"
            " delivered_at = CASE WHEN %(status)s = 'succeeded' THEN now() END"
            " WHERE event_id >= billhook.window_start(billhook.current_window()) RETURNING *)"
            " INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at,"
            " duration_ms, http_status, succeeded) SELECT id, event_id, webhook_id, 1, now(), 2,"
            " CASE WHEN %(status)s = 'succeeded' THEN 200 ELSE 500 END, %(status)s = 'succeeded' FROM settled",
            {"status": status})

    customer(windows, 1)
    assert fan_out(windows) == 1
    roll(windows)
    customer(windows, 1)
    assert fan_out(windows) == 1
    settle("succeeded")
    roll(windows)
    roll(windows)
    customer(windows, 1)
    assert fan_out(windows) == 1
    settle("failed")
    assert windows.execute("SELECT billhook.current_window()").fetchone()[0] == 3

    def stats():
        return windows.execute("SELECT deliveries, attempts, succeeded, failed, pending, backlog"
                               " FROM billhook.webhook_stats(now() - interval '1 hour', now() + interval '1 minute')"
                               " WHERE webhook_id = %s", (hook,)).fetchall()

    def report():
        return windows.execute("SELECT sum(sent), sum(succeeded), sum(failed) FROM billhook.delivery_report("
                               "now() - interval '1 hour', now() + interval '1 minute', '1 hour', %s)",
                               (hook,)).fetchone()

    assert stats() == [(3, 2, 1, 1, 1, 1)]
    assert report() == (2, 1, 1)

    # Event ids far above every window, in partitions of the three tables attached by hand.
    stray = 1000 * WINDOW
    for table in ("events", "deliveries", "delivery_attempts"):
        windows.execute(f"CREATE TABLE billhook.stray_{table} (LIKE billhook.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        windows.execute(f"ALTER TABLE billhook.{table} ATTACH PARTITION billhook.stray_{table}"
                        " FOR VALUES FROM (%s) TO (%s)" % (stray, stray + WINDOW))
    windows.execute("INSERT INTO billhook.events (id, administration_id, entity_type, entity_id, event_type, entity,"
                    " transaction_id) SELECT %s, administration_id, entity_type, entity_id, event_type, entity,"
                    " transaction_id FROM billhook.events ORDER BY id LIMIT 1", (stray,))
    windows.execute("INSERT INTO billhook.deliveries (id, event_id, webhook_id, status, attempts, last_attempt_at)"
                    " VALUES (%s, %s, %s, 'failed', 1, now())", (stray, stray, hook))
    windows.execute("INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at,"
                    " duration_ms, http_status, succeeded) VALUES (%s, %s, %s, 1, now(), 2, 500, false)",
                    (stray, stray, hook))
    assert stats() == [(4, 3, 1, 2, 1, 1)]
    assert report() == (3, 1, 2)
