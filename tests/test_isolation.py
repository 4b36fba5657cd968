"""No row, setting, entity or receiver stops delivery to other webhooks, and no table owner gets
billhook's rights: what the worker cannot process is set apart with its reason, where SQL users
look, and every other webhook goes on (docs/operations.md, "Isolation and privileges")."""

import json
import time
import uuid

import psycopg
import pytest

from helpers import create_webhook, customer, invoice, wait_until
from receiver import Receiver, Response

DEEP = 200
# The entity ids of the events these tests write by hand.
HAND_WRITTEN = (424242, 434343)


def deep_json(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.fixture(scope="module")
def receiver():
    """A receiver of this module's own: some pushes here are of events written by hand, which
    tests/test_payload_schemas.py, checking every push of the session's receiver, must not see."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def forget_hand_written_events(worker_db):
    """Events these tests write by hand are not billhook's: they go afterwards, their deliveries with them."""
    yield
    worker_db.execute("DELETE FROM billhook.events WHERE entity_id IN (%s, %s)", HAND_WRITTEN)


@pytest.fixture
def canary(worker_db, receiver):
    """A webhook of an administration of its own that must keep receiving whatever the test does to
    the others: canary() inserts a customer there and returns whether its push arrived."""
    admin = worker_db.execute("INSERT INTO billhook.administrations (name) VALUES ('canary') RETURNING id").fetchone()[0]
    path = f"/canary-{uuid.uuid4().hex[:8]}"
    create_webhook(worker_db, admin, receiver.url(path), ["customer.created"])

    def check(timeout: float = 15.0) -> bool:
        marker = uuid.uuid4().hex
        customer(worker_db, admin, company_name=marker)
        return wait_until(lambda: any(marker.encode() in r.body for r in receiver.received(path)), timeout=timeout)

    yield check
    worker_db.execute("DELETE FROM billhook.webhooks WHERE administration_id = %s", (admin,))


@pytest.fixture
def tracked_notes(worker_db):
    """app.notes (owned by a role with nothing but USAGE on schema billhook), tracked as Note."""
    worker_db.execute("CREATE SCHEMA IF NOT EXISTS app")
    worker_db.execute("CREATE ROLE note_owner LOGIN")
    worker_db.execute("GRANT USAGE ON SCHEMA billhook TO note_owner")
    worker_db.execute("GRANT CREATE, USAGE ON SCHEMA app TO note_owner")
    worker_db.execute("CREATE TABLE app.notes (id bigserial PRIMARY KEY, tenant bigint NOT NULL, body jsonb)")
    worker_db.execute("ALTER TABLE app.notes OWNER TO note_owner")
    worker_db.execute("SELECT billhook.track_table('app.notes', 'Note', 'note', administration_column => 'tenant')")
    yield
    worker_db.execute("DROP TABLE app.notes CASCADE")
    worker_db.execute("DELETE FROM billhook.webhooks WHERE 'note.created' = ANY (subscribed_events)")
    worker_db.execute("DROP OWNED BY note_owner CASCADE")
    worker_db.execute("DROP ROLE note_owner")


@pytest.mark.parametrize("payload_format", ["billhook", "standard", "moneybird"])
def test_a_200_deep_entity_goes_out_byte_for_byte_in_every_format(worker_db, worker_admin, receiver, canary,
                                                                  tracked_notes, payload_format):
    path = f"/deep-{payload_format}"
    worker_db.execute("SELECT billhook.create_webhook(%s, '{note}', %s, verify => false, payload_format => %s)",
                      (receiver.url(path), worker_admin, payload_format))
    worker_db.execute("INSERT INTO app.notes (tenant, body) VALUES (%s, %s)", (worker_admin, deep_json(DEEP)))
    pushes = receiver.wait_for(path, 1, timeout=15)
    assert len(pushes) == 1, "the deep entity's push arrived"
    assert b'"body":' + deep_json(DEEP).encode() in pushes[0].body.replace(b" ", b"")
    assert canary()


def test_an_event_that_cannot_be_built_into_a_push_fails_alone_with_its_reason(worker_db, worker_admin, receiver,
                                                                               canary):
    # Moneybird's format reads billhook's own entities; one too deep to read (written by hand, as
    # only a superuser can) cannot become a Moneybird push.
    path = "/moneybird-unbuildable"
    hook = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{invoice.created}', %s, verify => false,"
                             " payload_format => 'moneybird')", (receiver.url(path), worker_admin)).fetchone()[0]
    watcher_path = "/operations-watcher"
    create_webhook(worker_db, worker_admin, receiver.url(watcher_path), ["operations"])
    with worker_db.transaction():
        worker_db.execute("INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, state,"
                          " entity) VALUES (%s, 'invoice.created', 'Invoice', 424242, 'draft', %s)",
                          (worker_admin, json.dumps({"id": "424242", "lines": json.loads(deep_json(DEEP))})))
        # A commit of an event some webhook takes wakes the worker; the hand-written one alone would not.
        customer(worker_db, worker_admin)
    status, attempts, last_error = wait_until(lambda: worker_db.execute(
        "SELECT status, attempts, last_error FROM billhook.deliveries WHERE webhook_id = %s AND status = 'failed'",
        (hook,)).fetchone())
    assert (status, attempts) == ("failed", 0)
    assert last_error.startswith("billhook could not build this push: the Invoice entity cannot be read")
    assert "recursion limit" in last_error
    assert receiver.received(path) == [], "nothing was sent for it"
    exhausted = receiver.wait_for(watcher_path, 1)
    assert [json.loads(p.body)["action"] for p in exhausted] == ["delivery.exhausted"]
    assert worker_db.execute("SELECT enabled FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone()[0]
    assert canary()


def test_an_event_a_webhook_cannot_decide_on_fails_only_that_webhooks_delivery(worker_db, worker_admin, receiver,
                                                                                canary):
    # A subscription by Moneybird names reads the entity to name the push; one too deep to read
    # (written by hand, as only a superuser can) cannot be decided on, for that webhook alone.
    by_name = worker_db.execute("SELECT id FROM billhook.create_webhook(%s, '{sales_invoice_created}', %s,"
                                " verify => false)", (receiver.url("/by-moneybird-name"), worker_admin)).fetchone()[0]
    plain_path = "/by-billhook-name"
    plain = create_webhook(worker_db, worker_admin, receiver.url(plain_path), ["invoice.created"])[0]
    with worker_db.transaction():
        worker_db.execute("INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, state,"
                          " entity) VALUES (%s, 'invoice.created', 'Invoice', 434343, 'draft', %s)",
                          (worker_admin, json.dumps({"id": "434343", "lines": json.loads(deep_json(DEEP))})))
        customer(worker_db, worker_admin)
    assert receiver.wait_for(plain_path, 1), "the other webhook of the same event got it"
    status, last_error = wait_until(lambda: worker_db.execute(
        "SELECT status, last_error FROM billhook.deliveries WHERE webhook_id = %s", (by_name,)).fetchone())
    assert status == "failed"
    assert last_error.startswith("billhook could not fan this event out to this webhook: ")
    assert worker_db.execute("SELECT status FROM billhook.deliveries WHERE webhook_id = %s",
                             (plain,)).fetchone()[0] in ("pending", "succeeded")
    assert receiver.received("/by-moneybird-name") == []
    assert canary()


@pytest.mark.parametrize("refused", ["'pending'", "'pending', 'failed'"])
def test_a_webhook_whose_deliveries_cannot_be_written_holds_up_no_other(worker_db, worker_admin, receiver, canary,
                                                                          cluster, refused):
    """A DBA's trigger refuses one webhook's new deliveries: the event's fan-out fails as a whole and
    is made webhook by webhook. That webhook gets a failed delivery saying why, or, when even that
    is refused, none and a WARNING naming both; the event's other webhook and everyone else get
    theirs."""
    refused_hook = create_webhook(worker_db, worker_admin, receiver.url("/refused-deliveries"), ["customer.created"])[0]
    other_path = f"/next-to-refused-{uuid.uuid4().hex[:8]}"
    create_webhook(worker_db, worker_admin, receiver.url(other_path), ["customer.created"])
    worker_db.execute(f"""CREATE FUNCTION public.refuse_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
                          BEGIN
                              IF NEW.webhook_id = {int(refused_hook)} AND NEW.status IN ({refused}) THEN
                                  RAISE EXCEPTION 'deliveries of webhook % are refused today', NEW.webhook_id;
                              END IF;
                              RETURN NEW;
                          END $$""")
    worker_db.execute("CREATE TRIGGER refuse_deliveries BEFORE INSERT ON billhook.deliveries"
                      " FOR EACH ROW EXECUTE FUNCTION public.refuse_deliveries()")
    try:
        refused_customer = customer(worker_db, worker_admin, company_name="refused")
        assert receiver.wait_for(other_path, 1), "the event's other webhook got it"
        assert canary()
        delivery = worker_db.execute("SELECT d.status, d.last_error FROM billhook.deliveries AS d"
                                     " JOIN billhook.events AS e ON e.id = d.event_id"
                                     " WHERE d.webhook_id = %s AND e.entity_id = %s",
                                     (refused_hook, refused_customer)).fetchone()
        if refused == "'pending'":
            assert delivery[0] == "failed"
            assert delivery[1].startswith("billhook could not fan this event out to this webhook: deliveries of webhook")
        else:
            assert delivery is None
            assert f"left event" in cluster.server_log() and f"out for webhook {refused_hook}" in cluster.server_log()
        assert receiver.received("/refused-deliveries") == []
    finally:
        worker_db.execute("DROP TRIGGER refuse_deliveries ON billhook.deliveries")
        worker_db.execute("DROP FUNCTION public.refuse_deliveries()")
        worker_db.execute("DELETE FROM billhook.webhooks WHERE id = %s", (refused_hook,))


def test_a_filter_comparing_a_date_with_a_time_with_time_zone_works_instead_of_failing(worker_db, worker_admin,
                                                                                      receiver, canary):
    path = "/tz-filter"
    worker_db.execute(
        "SELECT billhook.create_webhook(%s, '{invoice.created}', %s, verify => false,"
        " filter => '$.entity.invoice_date.datetime() < \"2999-01-01T00:00:00+00:00\".datetime()')",
        (receiver.url(path), worker_admin))
    invoice(worker_db, worker_admin, customer(worker_db, worker_admin))
    assert receiver.wait_for(path, 1)
    assert canary()


@pytest.fixture
def poisoned_answers(worker_db):
    """A DBA's trigger that refuses to log an attempt whose answer says "poison": an outcome the
    worker cannot write, whatever it is."""
    worker_db.execute("""
        CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.response_body LIKE '%poison%' THEN
                RAISE EXCEPTION 'this answer is poison';
            END IF;
            RETURN NEW;
        END $$""")
    worker_db.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON billhook.delivery_attempts"
                      " FOR EACH ROW EXECUTE FUNCTION public.refuse_poison()")
    yield
    worker_db.execute("DROP TRIGGER refuse_poison ON billhook.delivery_attempts")
    worker_db.execute("DROP FUNCTION public.refuse_poison()")


def test_an_outcome_that_cannot_be_written_fails_its_delivery_and_the_others_are_written(
        worker_db, worker_admin, receiver, canary, poisoned_answers):
    poisoned_path, plain_path = "/poisoned", "/plain"
    receiver.plan(poisoned_path, Response(200, b"poison"))
    poisoned = create_webhook(worker_db, worker_admin, receiver.url(poisoned_path), ["customer.created"])[0]
    plain = create_webhook(worker_db, worker_admin, receiver.url(plain_path), ["customer.created"])[0]
    customer(worker_db, worker_admin)
    status, attempts, last_error = wait_until(lambda: worker_db.execute(
        "SELECT status, attempts, last_error FROM billhook.deliveries WHERE webhook_id = %s AND status = 'failed'",
        (poisoned,)).fetchone())
    assert (status, attempts) == ("failed", 1), "the push was made: its attempt counts"
    assert last_error == ("billhook could not record this attempt's outcome (HTTP 200): this answer is poison")
    assert wait_until(lambda: worker_db.execute(
        "SELECT status FROM billhook.deliveries WHERE webhook_id = %s", (plain,)).fetchone()[0] == "succeeded")
    assert len(receiver.received(poisoned_path)) == 1, "sent once, not again and again"
    assert canary()


@pytest.fixture
def refused_claims(worker_db):
    """A DBA's trigger that refuses every lease of one webhook's deliveries: a claim that fails
    for that webhook, whatever the cause."""
    def refuse(webhook_id):
        worker_db.execute(f"""
            CREATE FUNCTION public.refuse_claims() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.webhook_id = {int(webhook_id)} AND NEW.locked_by IS NOT NULL THEN
                    RAISE EXCEPTION 'no leases for this webhook';
                END IF;
                RETURN NEW;
            END $$""")
        worker_db.execute("CREATE TRIGGER refuse_claims BEFORE UPDATE ON billhook.deliveries"
                          " FOR EACH ROW EXECUTE FUNCTION public.refuse_claims()")
    yield refuse
    worker_db.execute("DROP TRIGGER IF EXISTS refuse_claims ON billhook.deliveries")
    worker_db.execute("DROP FUNCTION IF EXISTS public.refuse_claims()")


def test_a_webhook_whose_claims_fail_is_disabled_with_the_reason_and_the_others_go_on(
        worker_db, worker_admin, receiver, canary, refused_claims):
    stuck = create_webhook(worker_db, worker_admin, receiver.url("/stuck"), ["customer.created"])[0]
    watcher_path = "/claims-watcher"
    create_webhook(worker_db, worker_admin, receiver.url(watcher_path), ["operations"])
    others = [create_webhook(worker_db, worker_admin, receiver.url(f"/other-{n}"), ["customer.created"])[0]
              for n in range(3)]
    refused_claims(stuck)
    customer(worker_db, worker_admin)
    for n in range(3):
        assert receiver.wait_for(f"/other-{n}", 1), f"webhook {others[n]} got its push"
    enabled, reason = wait_until(lambda: worker_db.execute(
        "SELECT enabled, disabled_reason FROM billhook.webhooks WHERE id = %s AND NOT enabled", (stuck,)).fetchone())
    assert not enabled
    assert reason == "billhook could not claim its deliveries: no leases for this webhook"
    assert worker_db.execute("SELECT status FROM billhook.deliveries WHERE webhook_id = %s",
                             (stuck,)).fetchone()[0] == "pending", "held, not lost"
    disabled = [json.loads(p.body) for p in receiver.wait_for(watcher_path, 1)]
    assert [(p["action"], p["entity_id"]) for p in disabled] == [("webhook.disabled", str(stuck))]
    assert receiver.received("/stuck") == []
    assert canary()


def test_a_rate_too_low_for_a_lease_stored_behind_the_check_stops_no_other_webhook(cluster, worker_db, worker_admin,
                                                                                 receiver, canary):
    slow = create_webhook(worker_db, worker_admin, receiver.url("/slow"), ["customer.created"])[0]
    other_path = "/not-slow"
    create_webhook(worker_db, worker_admin, receiver.url(other_path), ["customer.created"])
    # As a DBA would have to: the check refuses such a rate at every write (test_webhooks.py).
    with worker_db.transaction():
        worker_db.execute("ALTER TABLE billhook.webhooks DROP CONSTRAINT webhooks_settings_check")
        worker_db.execute("UPDATE billhook.webhooks SET max_requests_per_second = 1e-30 WHERE id = %s", (slow,))
        worker_db.execute("ALTER TABLE billhook.webhooks ADD CONSTRAINT webhooks_settings_check"
                          " CHECK (billhook.check_webhook_settings(retry_schedule,"
                          " extract(epoch FROM request_timeout)::float8 * 1000, max_in_flight,"
                          " max_requests_per_second)) NOT VALID")
    try:
        customer(worker_db, worker_admin)
        assert receiver.wait_for(other_path, 1)
        assert canary()
        assert receiver.received("/slow") == []
        assert worker_db.execute("SELECT status FROM billhook.deliveries WHERE webhook_id = %s",
                                 (slow,)).fetchone()[0] == "pending", "held, not lost"
        # Its check refuses to disable it; its lease, computed within the bounds, keeps the worker
        # from taking it up again and again meanwhile.
        assert cluster.server_log().count("could not disable webhooks whose pushes it cannot build or claim:"
                                          " invalid max_requests_per_second"
                                          " 0.000000000000000000000000000001") == 1
    finally:
        worker_db.execute("DELETE FROM billhook.webhooks WHERE id = %s", (slow,))
        worker_db.execute("ALTER TABLE billhook.webhooks VALIDATE CONSTRAINT webhooks_settings_check")


def test_a_table_owners_cast_runs_as_the_owner_and_cannot_make_them_superuser(worker_db, worker_admin, receiver,
                                                                             cluster, tracked_notes):
    path = "/cast"
    create_webhook(worker_db, worker_admin, receiver.url(path), ["note"])
    with cluster.connect("billhook_worker", user="note_owner") as owner:
        owner.execute("CREATE TYPE app.mood AS ENUM ('calm', 'rising')")
        owner.execute("""CREATE FUNCTION app.mood_json(app.mood) RETURNS json LANGUAGE plpgsql AS $$
                         BEGIN
                             IF $1 = 'rising' THEN
                                 EXECUTE 'ALTER ROLE note_owner SUPERUSER';
                             END IF;
                             RETURN to_json(current_user || ':' || $1::text);
                         END $$""")
        owner.execute("CREATE CAST (app.mood AS json) WITH FUNCTION app.mood_json(app.mood)")
        owner.execute("ALTER TABLE app.notes ADD COLUMN mood app.mood")
        owner.execute("INSERT INTO app.notes (tenant, mood) VALUES (%s, 'calm')", (worker_admin,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            owner.execute("INSERT INTO app.notes (tenant, mood) VALUES (%s, 'rising')", (worker_admin,))
    assert not worker_db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'note_owner'").fetchone()[0]
    pushes = receiver.wait_for(path, 1)
    assert [json.loads(p.body)["entity"]["mood"] for p in pushes] == ["note_owner:calm"], \
        "the cast ran as the table's owner, and the refused row emitted nothing"


def test_a_table_owners_cast_cannot_change_the_settings_of_the_session_that_committed(worker_db, worker_admin,
                                                                                      cluster, tracked_notes):
    """The owner's code runs inside the committing session: a setting it changes (search_path, to
    put its own operators before pg_catalog's for the committer's next statement) must not outlive
    it, on the commit path nor on the delete path in the middle of a transaction."""
    with cluster.connect("billhook_worker", user="note_owner") as owner:
        owner.execute("CREATE TYPE app.tone AS ENUM ('plain')")
        owner.execute("""CREATE FUNCTION app.tone_json(app.tone) RETURNS json LANGUAGE plpgsql AS $$
                         BEGIN
                             PERFORM set_config('search_path', 'app, pg_catalog', false);
                             PERFORM set_config('billhook.administration_id', '424242', false);
                             PERFORM set_config('statement_timeout', '1ms', true);
                             RETURN to_json($1::text);
                         END $$""")
        owner.execute("CREATE CAST (app.tone AS json) WITH FUNCTION app.tone_json(app.tone)")
        owner.execute("ALTER TABLE app.notes ADD COLUMN tone app.tone")
    settings = "SELECT current_setting('search_path'), current_setting('billhook.administration_id', true)," \
               " current_setting('statement_timeout')"
    with cluster.connect("billhook_worker") as victim:
        before = victim.execute(settings).fetchone()
        victim.execute("INSERT INTO app.notes (tenant, tone) VALUES (%s, 'plain')", (worker_admin,))
        assert victim.execute(settings).fetchone() == before, "the commit path kept the owner's settings"
        with victim.transaction():
            victim.execute("DELETE FROM app.notes WHERE tone = 'plain'")
            assert victim.execute(settings).fetchone() == before, "the delete path kept the owner's settings"
    assert worker_db.execute("SELECT count(*) FROM billhook.events WHERE entity_type = 'Note' AND"
                             " entity->>'tone' = 'plain'").fetchone()[0] == 2, "both changes emitted"


def test_rows_a_table_owners_cast_writes_at_commit_fail_the_commit_instead_of_going_without_events(
        worker_db, worker_admin, cluster, tracked_notes):
    """The owner's cast runs while billhook writes the transaction's events, after it took the
    transaction's changes: a row it inserts then would commit with no event (or, before, leak into
    the session's next transaction). The commit fails instead, with nothing written."""
    with cluster.connect("billhook_worker", user="note_owner") as owner:
        owner.execute("CREATE TYPE app.echo AS ENUM ('loud', 'quiet')")
        owner.execute("""CREATE FUNCTION app.echo_json(app.echo) RETURNS json LANGUAGE plpgsql AS $$
                         BEGIN
                             IF $1 = 'loud' THEN
                                 INSERT INTO app.notes (tenant, echo) VALUES (0, 'quiet');
                             END IF;
                             RETURN to_json($1::text);
                         END $$""")
        owner.execute("CREATE CAST (app.echo AS json) WITH FUNCTION app.echo_json(app.echo)")
        owner.execute("ALTER TABLE app.notes ADD COLUMN echo app.echo")
    before = worker_db.execute("SELECT coalesce(max(id), 0) FROM billhook.events").fetchone()[0]
    with cluster.connect("billhook_worker") as session:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
            session.execute("INSERT INTO app.notes (tenant, echo) VALUES (%s, 'loud')", (worker_admin,))
        assert "changed rows that emit events while billhook wrote" in str(refused.value)
        later = session.execute("INSERT INTO app.notes (tenant) VALUES (%s) RETURNING id", (worker_admin,)).fetchone()[0]
    assert worker_db.execute("SELECT count(*) FROM app.notes WHERE echo IS NOT NULL").fetchone()[0] == 0
    emitted = worker_db.execute("SELECT entity_id FROM billhook.events WHERE entity_type = 'Note' AND id > %s",
                                (before,)).fetchall()
    assert emitted == [(later,)], "the next transaction emits its own event only"


def test_under_tenant_isolation_a_tracked_row_of_another_administration_is_refused(worker_db, worker_admin, cluster,
                                                                                  tracked_notes):
    other = worker_db.execute("INSERT INTO billhook.administrations (name) VALUES ('other') RETURNING id").fetchone()[0]
    worker_db.execute("SELECT billhook.create_roles()")
    worker_db.execute("DROP ROLE IF EXISTS tenant_app")
    worker_db.execute("CREATE ROLE tenant_app LOGIN IN ROLE billhook_app")
    worker_db.execute("GRANT USAGE ON SCHEMA app TO tenant_app")
    worker_db.execute("GRANT INSERT, UPDATE, DELETE, SELECT ON app.notes TO tenant_app")
    worker_db.execute("GRANT USAGE ON SEQUENCE app.notes_id_seq TO tenant_app")
    before = worker_db.execute("SELECT count(*) FROM billhook.events WHERE entity_type = 'Note'").fetchone()[0]
    worker_db.execute("SELECT billhook.enable_tenant_isolation()")
    try:
        with cluster.connect("billhook_worker", user="tenant_app") as app:
            app.execute("SET billhook.administration_id = %s" % int(worker_admin))
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                app.execute("INSERT INTO app.notes (tenant) VALUES (%s)", (other,))
            assert f"a row of administration {other} cannot be written" in str(refused.value)
            mine = app.execute("INSERT INTO app.notes (tenant) VALUES (%s) RETURNING id", (worker_admin,)).fetchone()[0]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("UPDATE app.notes SET tenant = %s WHERE id = %s", (other, mine))
            app.execute("RESET billhook.administration_id")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("INSERT INTO app.notes (tenant) VALUES (%s)", (worker_admin,))
    finally:
        worker_db.execute("SELECT billhook.disable_tenant_isolation()")
        worker_db.execute("REVOKE ALL ON app.notes FROM tenant_app")
        worker_db.execute("REVOKE ALL ON SCHEMA app FROM tenant_app")
        worker_db.execute("REVOKE ALL ON SEQUENCE app.notes_id_seq FROM tenant_app")
        worker_db.execute("DROP ROLE tenant_app")
    rows = worker_db.execute("SELECT administration_id FROM billhook.events WHERE entity_type = 'Note'"
                             " ORDER BY id").fetchall()[before:]
    assert rows == [(worker_admin,)], "only the row of the session's own administration emitted"


@pytest.mark.parametrize("lock", ["SELECT 1 FROM billhook.webhooks WHERE id = %s FOR UPDATE",
                                  "SELECT billhook.rotate_secret(%s)"])
def test_a_webhook_row_held_locked_holds_up_only_that_webhook(worker_db, worker_admin, cluster, receiver, canary,
                                                              lock):
    """An application's open transaction that locks its webhook's row against the deliveries'
    foreign key (SELECT ... FOR UPDATE, a change of its signing secret) may keep that webhook's
    deliveries from being made, never anyone else's; they are made, in order, when it ends."""
    path = f"/locked-{uuid.uuid4().hex[:8]}"
    hook = create_webhook(worker_db, worker_admin, receiver.url(path), ["customer.created"])[0]
    with cluster.connect("billhook_worker") as app:
        app.execute("BEGIN")
        app.execute(lock, (hook,))
        first = customer(worker_db, worker_admin, company_name="while locked 1")
        second = customer(worker_db, worker_admin, company_name="while locked 2")
        assert canary(), "another administration's webhook receives while the row is locked"
        assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.fan_out_owed WHERE webhook_id = %s",
                                                    (hook,)).fetchone()[0] == 2)
        assert receiver.received(path) == []
        app.execute("COMMIT")
    pushes = receiver.wait_for(path, 2)
    assert sorted(json.loads(p.body)["entity"]["id"] for p in pushes) == sorted([str(first), str(second)])
    assert [r[0] for r in worker_db.execute(
        "SELECT e.entity_id FROM billhook.deliveries AS d JOIN billhook.events AS e ON e.id = d.event_id"
        " WHERE d.webhook_id = %s ORDER BY d.id", (hook,)).fetchall()] == [first, second], "made in order"
    assert worker_db.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 0


def test_a_commits_pushes_leave_while_the_outcomes_before_them_cannot_be_written(worker_db, worker_admin, cluster,
                                                                                receiver):
    """The pushes of a commit leave before the outcomes waiting in the worker are written (the
    fan-out and its claim commit first, on their own): a lock on the attempt log (a long report's,
    a pending ALTER's) holds up those outcomes, and no longer stops the next commit's pushes; the
    outcomes are written once it goes."""
    path = f"/outcomes-locked-{uuid.uuid4().hex[:8]}"
    hook = create_webhook(worker_db, worker_admin, receiver.url(path), ["customer.created"])[0]
    with cluster.connect("billhook_worker") as report:
        report.execute("BEGIN")
        report.execute("LOCK TABLE billhook.delivery_attempts IN SHARE MODE")
        first = customer(worker_db, worker_admin, company_name="before the lock's outcome")
        assert len(receiver.wait_for(path, 1)) == 1
        # Its outcome now waits for the lock, round after round.
        time.sleep(1.5)
        second = customer(worker_db, worker_admin, company_name="while the outcome waits")
        pushes = receiver.wait_for(path, 2, timeout=15)
        assert [json.loads(p.body)["entity"]["id"] for p in pushes] == [str(first), str(second)]
        assert worker_db.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s"
                                 " AND status = 'pending' AND attempts = 0", (hook,)).fetchone()[0] == 2, \
            "both outcomes wait for the lock"
        report.execute("ROLLBACK")
    assert wait_until(lambda: worker_db.execute(
        "SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s AND status = 'succeeded' AND attempts = 1",
        (hook,)).fetchone()[0] == 2)
    assert worker_db.execute("SELECT count(*) FROM billhook.delivery_attempts WHERE webhook_id = %s AND succeeded",
                             (hook,)).fetchone()[0] == 2
    assert len(receiver.received(path)) == 2, "each pushed once"


def test_an_endpoint_whose_410_waits_to_be_written_gets_nothing_more_meanwhile(worker_db, worker_admin, cluster,
                                                                             receiver):
    """An endpoint that answered 410 Gone gets no more pushes, also while that outcome cannot be
    written yet and new commits' pushes go before the outcomes waiting: its webhook is disabled
    once the outcome is written, and its deliveries are held."""
    path = f"/gone-unwritten-{uuid.uuid4().hex[:8]}"
    receiver.plan(path, Response(410))
    hook = create_webhook(worker_db, worker_admin, receiver.url(path), ["customer.created"])[0]
    with cluster.connect("billhook_worker") as report:
        report.execute("BEGIN")
        report.execute("LOCK TABLE billhook.delivery_attempts IN SHARE MODE")
        customer(worker_db, worker_admin, company_name="answered 410")
        assert len(receiver.wait_for(path, 1)) == 1
        for n in range(5):
            customer(worker_db, worker_admin, company_name=f"after the 410, {n}")
            time.sleep(0.3)
        time.sleep(1)
        assert len(receiver.received(path)) == 1, "nothing more after the 410"
        report.execute("ROLLBACK")
    assert wait_until(lambda: worker_db.execute("SELECT NOT enabled FROM billhook.webhooks WHERE id = %s",
                                                (hook,)).fetchone()[0])
    assert wait_until(lambda: worker_db.execute(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM billhook.deliveries WHERE webhook_id = %s",
        (hook,)).fetchone() == (6, 6)), "all held for when it is enabled again"
    assert len(receiver.received(path)) == 1


def test_the_deliveries_owed_to_a_webhook_deleted_meanwhile_go_with_it(worker_db, worker_admin, cluster, receiver,
                                                                        canary):
    path = f"/deleted-{uuid.uuid4().hex[:8]}"
    hook = create_webhook(worker_db, worker_admin, receiver.url(path), ["customer.created"])[0]
    with cluster.connect("billhook_worker") as app:
        app.execute("BEGIN")
        app.execute("DELETE FROM billhook.webhooks WHERE id = %s", (hook,))
        customer(worker_db, worker_admin, company_name="while deleted")
        assert canary()
        app.execute("COMMIT")
    assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 0)
    assert canary()
    assert receiver.received(path) == []


def test_under_tenant_isolation_a_tracked_table_without_administration_column_is_administration_1s(
        worker_db, cluster):
    """Its rows' events go to administration 1's webhooks: another administration's session may not
    write them (it would push content of its choosing to administration 1's receivers)."""
    other = worker_db.execute("INSERT INTO billhook.administrations (name) VALUES ('other') RETURNING id").fetchone()[0]
    worker_db.execute("CREATE SCHEMA IF NOT EXISTS app")
    worker_db.execute("CREATE TABLE app.memos (id bigserial PRIMARY KEY, body text)")
    worker_db.execute("SELECT billhook.track_table('app.memos', 'Memo', 'memo')")
    worker_db.execute("SELECT billhook.create_roles()")
    worker_db.execute("DROP ROLE IF EXISTS memo_app")
    worker_db.execute("CREATE ROLE memo_app LOGIN IN ROLE billhook_app")
    worker_db.execute("GRANT USAGE ON SCHEMA app TO memo_app")
    worker_db.execute("GRANT INSERT, SELECT ON app.memos TO memo_app")
    worker_db.execute("GRANT USAGE ON SEQUENCE app.memos_id_seq TO memo_app")
    before = worker_db.execute("SELECT count(*) FROM billhook.events WHERE entity_type = 'Memo'").fetchone()[0]
    worker_db.execute("SELECT billhook.enable_tenant_isolation()")
    try:
        with cluster.connect("billhook_worker", user="memo_app") as app:
            app.execute("SET billhook.administration_id = %s" % int(other))
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                app.execute("INSERT INTO app.memos (body) VALUES ('to administration 1')")
            assert "a row of administration 1 cannot be written" in str(refused.value)
            app.execute("SET billhook.administration_id = 1")
            app.execute("INSERT INTO app.memos (body) VALUES ('mine')")
    finally:
        worker_db.execute("DROP TABLE app.memos")
        worker_db.execute("SELECT billhook.disable_tenant_isolation()")
        worker_db.execute("REVOKE ALL ON SCHEMA app FROM memo_app")
        worker_db.execute("DROP ROLE memo_app")
    assert worker_db.execute("SELECT array_agg(entity->>'body') FROM billhook.events WHERE entity_type = 'Memo'"
                             " OFFSET 0").fetchone()[0][before:] == ["mine"]


def test_a_debt_that_cannot_be_paid_holds_up_no_other(worker_db, worker_admin, cluster, receiver, canary):
    """A delivery the fan-out owed (its webhook was locked) whose payment fails once the lock goes
    (a DBA's trigger refuses it) becomes a failed delivery saying why; everyone else's flow on."""
    hook = create_webhook(worker_db, worker_admin, receiver.url("/unpayable"), ["customer.created"])[0]
    worker_db.execute(f"""CREATE FUNCTION public.refuse_pending() RETURNS trigger LANGUAGE plpgsql AS $$
                          BEGIN
                              IF NEW.webhook_id = {int(hook)} AND NEW.status = 'pending' THEN
                                  RAISE EXCEPTION 'webhook % takes nothing today', NEW.webhook_id;
                              END IF;
                              RETURN NEW;
                          END $$""")
    worker_db.execute("CREATE TRIGGER refuse_pending BEFORE INSERT ON billhook.deliveries"
                      " FOR EACH ROW EXECUTE FUNCTION public.refuse_pending()")
    try:
        with cluster.connect("billhook_worker") as app:
            app.execute("BEGIN")
            app.execute("SELECT 1 FROM billhook.webhooks WHERE id = %s FOR UPDATE", (hook,))
            customer(worker_db, worker_admin, company_name="owed, then refused")
            assert wait_until(lambda: worker_db.execute("SELECT count(*) FROM billhook.fan_out_owed"
                                                        " WHERE webhook_id = %s", (hook,)).fetchone()[0] == 1)
            app.execute("COMMIT")
        failed = wait_until(lambda: worker_db.execute("SELECT status, last_error FROM billhook.deliveries"
                                                      " WHERE webhook_id = %s", (hook,)).fetchone())
        assert failed[0] == "failed"
        assert failed[1].startswith("billhook could not make this delivery it owed: webhook")
        assert canary()
        assert worker_db.execute("SELECT count(*) FROM billhook.fan_out_owed").fetchone()[0] == 0
    finally:
        worker_db.execute("DROP TRIGGER refuse_pending ON billhook.deliveries")
        worker_db.execute("DROP FUNCTION public.refuse_pending()")
        worker_db.execute("DELETE FROM billhook.webhooks WHERE id = %s", (hook,))
