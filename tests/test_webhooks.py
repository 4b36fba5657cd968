"""Webhook management functions, subscription matching (fan-out) and validation errors."""

import base64

import psycopg
import pytest

from helpers import customer, deliveries, expense, fan_out, invoice, quotation, webhook


def errors_of(db, sql, params=()):
    with pytest.raises(psycopg.Error) as caught:
        db.execute(sql, params)
    return caught.value


def test_create_webhook_returns_token_and_secret(db, admin):
    row = db.execute(
        "SELECT id, administration_id, url, enabled_events, subscribed_events, enabled, token,"
        " signing_secret, last_http_status, last_http_body"
        " FROM billhook.create_webhook('https://example.com/hooks?key=1', ARRAY['invoice.paid'], %s, verify => false)",
        (admin,),
    ).fetchone()
    (_, administration, url, enabled_events, subscribed, enabled, token, secret, status, body) = row
    assert (administration, url, enabled_events, subscribed, enabled) == (
        admin, "https://example.com/hooks?key=1", ["invoice.paid"], ["invoice.paid"], True)
    assert len(token) == 24 and token.isalnum()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert (status, body) == (None, None)


def test_tokens_and_secrets_are_never_reused(db, admin):
    ids = [webhook(db, admin) for _ in range(20)]
    rows = db.execute("SELECT token, signing_secret FROM billhook.webhooks WHERE id = ANY(%s)", (ids,)).fetchall()
    assert len({r[0] for r in rows}) == 20 and len({r[1] for r in rows}) == 20
    hook = ids[0]
    before = db.execute("SELECT token, signing_secret FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone()
    token = db.execute("SELECT token FROM billhook.rotate_token(%s)", (hook,)).fetchone()[0]
    assert token != before[0] and len(token) == 24
    rotated = db.execute(
        "SELECT signing_secret, previous_signing_secret, previous_secret_expires_at - now()"
        " FROM billhook.rotate_secret(%s, '1 hour')", (hook,)).fetchone()
    assert rotated[0] != before[1] and rotated[1] == before[1]
    assert rotated[2].total_seconds() == 3600
    assert errors_of(db, "SELECT billhook.rotate_secret(%s, '-1 hour')", (hook,)).sqlstate == "22023"


def test_update_enable_disable_delete(db, admin):
    hook = webhook(db, admin, ["invoice"])
    row = db.execute("SELECT url, enabled_events, enabled FROM billhook.update_webhook(%s, url => 'http://example.org/x')",
                     (hook,)).fetchone()
    assert row == ("http://example.org/x", ["invoice"], True), "NULL arguments leave columns unchanged"
    row = db.execute("SELECT subscribed_events FROM billhook.update_webhook(%s, enabled_events => '{}')", (hook,)).fetchone()
    assert row[0] == ["invoice.sent", "invoice.paid", "invoice.overdue", "invoice.cancelled"]
    assert db.execute("SELECT enabled FROM billhook.disable_webhook(%s)", (hook,)).fetchone()[0] is False
    assert db.execute("SELECT enabled FROM billhook.enable_webhook(%s)", (hook,)).fetchone()[0] is True
    assert db.execute("SELECT id FROM billhook.delete_webhook(%s)", (hook,)).fetchone()[0] == hook
    assert db.execute("SELECT count(*) FROM billhook.webhooks WHERE id = %s", (hook,)).fetchone()[0] == 0
    for call in ("update_webhook(%s, url => 'http://a.example')", "enable_webhook(%s)", "disable_webhook(%s)",
                 "delete_webhook(%s)", "rotate_token(%s)", "rotate_secret(%s)"):
        err = errors_of(db, f"SELECT billhook.{call}", (hook,))
        assert err.sqlstate == "P0002", call
        assert f"webhook {hook} does not exist" in str(err)


def test_overview_hides_credentials_and_counts_deliveries(db, admin):
    hook = webhook(db, admin, ["*"])
    customer(db, admin)
    fan_out(db)
    columns = [c.name for c in db.execute("SELECT * FROM billhook.webhook_overview LIMIT 0").description]
    assert "token" not in columns and "signing_secret" not in columns
    row = db.execute("SELECT url, pending_deliveries, failed_deliveries FROM billhook.webhook_overview WHERE id = %s",
                     (hook,)).fetchone()
    assert row == ("https://receiver.example/***", 1, 0)


@pytest.mark.parametrize("entries, expected_entry", [
    (["invoice.payed"], "invoice.payed"),
    (["invoice.paid", "estimate_destroyed"], "estimate_destroyed"),
    (["sales_invoices"], "sales_invoices"),
    (["Invoice"], "Invoice"),
    (["invoice.*"], "invoice.*"),
    ([""], ""),
    (["invoice", None], "NULL"),
])
def test_unknown_events_are_22023_naming_the_entry(db, admin, entries, expected_entry):
    err = errors_of(db, "SELECT billhook.create_webhook('https://example.com', %s, %s)", (entries, admin))
    assert err.sqlstate == "22023"
    assert err.diag.message_primary == f'unknown event "{expected_entry}" in enabled_events'
    assert "invoice, quotation, customer, expense, recurring_invoice" in err.diag.message_hint
    assert db.execute("SELECT count(*) FROM billhook.webhooks WHERE administration_id = %s", (admin,)).fetchone()[0] == 0


@pytest.mark.parametrize("url, reason", [
    ("example.com/hook", "relative URL without a base"),
    ("ftp://example.com/hook", 'scheme "ftp" is not http or https'),
    ("https://", "empty host"),
    ("https://example.com/" + "a" * 2029, "longer than 2048 characters"),
])
def test_bad_urls_are_22023_naming_the_url(db, admin, url, reason):
    err = errors_of(db, "SELECT billhook.create_webhook(%s, NULL, %s)", (url, admin))
    assert err.sqlstate == "22023"
    assert reason in err.diag.message_primary and err.diag.message_primary.startswith('invalid webhook url "')
    assert "http:// or https://" in err.diag.message_hint


def test_validation_also_guards_direct_table_writes(db, admin):
    hook = webhook(db, admin)
    err = errors_of(db, "UPDATE billhook.webhooks SET enabled_events = '{customer.merged}' WHERE id = %s", (hook,))
    assert err.sqlstate == "22023"
    err = errors_of(db, "UPDATE billhook.webhooks SET url = 'gopher://x' WHERE id = %s", (hook,))
    assert err.sqlstate == "22023"


def test_url_of_2048_characters_is_accepted(db, admin):
    url = "https://example.com/" + "a" * 2028
    assert len(url) == 2048
    assert db.execute("SELECT url FROM billhook.create_webhook(%s, NULL, %s, verify => false)",
                      (url, admin)).fetchone()[0] == url


def test_fan_out_matches_exact_category_wildcard_and_default(cluster, db, admin):
    exact = webhook(db, admin, ["invoice.paid", "customer.created"])
    category = webhook(db, admin, ["quotation"])
    everything = webhook(db, admin, ["*"])
    default = webhook(db, admin, None)
    empty = webhook(db, admin, [])
    disabled = webhook(db, admin, ["*"], enabled=False)
    other_admin = db.execute("INSERT INTO billhook.administrations (name) VALUES ('other') RETURNING id").fetchone()[0]
    foreign = webhook(db, other_admin, ["*"])

    c = customer(db, admin)
    i = invoice(db, admin, c)
    db.execute("UPDATE billhook.invoices SET state = 'open', sent_at = now() WHERE id = %s", (i,))
    db.execute("UPDATE billhook.invoices SET state = 'paid' WHERE id = %s", (i,))
    q = quotation(db, admin, c)
    db.execute("UPDATE billhook.quotations SET state = 'accepted' WHERE id = %s", (q,))
    expense(db, admin)

    assert deliveries(db, exact) == ["customer.created", "invoice.paid"]
    assert deliveries(db, category) == ["quotation.created", "quotation.updated", "quotation.accepted"]
    assert deliveries(db, everything) == [
        "customer.created", "invoice.created", "invoice.updated", "invoice.sent", "invoice.updated",
        "invoice.paid", "quotation.created", "quotation.updated", "quotation.accepted", "expense.created"]
    assert deliveries(db, default) == ["invoice.sent", "invoice.paid"]
    assert deliveries(db, empty) == ["invoice.sent", "invoice.paid"]
    assert deliveries(db, disabled) == []
    assert deliveries(db, foreign) == []


def test_deliveries_start_pending_with_unique_idempotency_keys(db, admin):
    hook = webhook(db, admin, ["customer"])
    for n in range(5):
        customer(db, admin, company_name=f"c{n}")
    fan_out(db)
    rows = db.execute("SELECT status, attempts, idempotency_key, next_attempt_at <= now() FROM billhook.deliveries"
                      " WHERE webhook_id = %s", (hook,)).fetchall()
    assert len(rows) == 5
    assert {(r[0], r[1], r[3]) for r in rows} == {("pending", 0, True)}
    assert len({r[2] for r in rows}) == 5


def test_event_catalog_is_the_25_events_and_3_operational_ones(db):
    rows = db.execute("SELECT category, count(*) FROM billhook.event_types GROUP BY category ORDER BY category").fetchall()
    assert rows == [("customer", 3), ("expense", 5), ("invoice", 7), ("operations", 3), ("quotation", 7),
                    ("recurring_invoice", 3)]
    assert db.execute("SELECT description FROM billhook.event_types WHERE name = 'quotation.expired'").fetchone()[0] == \
        "A quotation passes its valid_until date"


@pytest.mark.parametrize("setting, value, shown, hint", [
    ("retry_schedule", "5 parsecs", 'invalid retry_schedule "5 parsecs"', "billhook.retry_schedule"),
    ("retry_schedule", ",".join(["1s"] * 101), "more than the 100 allowed", "billhook.retry_schedule"),
    ("request_timeout", "1 ms", "invalid request_timeout 1 ms: outside 10 ms .. 600 s", "billhook.request_timeout"),
    ("request_timeout", "20 minutes", "invalid request_timeout 1200000 ms", "billhook.request_timeout"),
    ("max_in_flight", "0", "invalid max_in_flight 0: outside 1 .. 512", "billhook.max_in_flight_per_webhook"),
    ("max_in_flight", "513", "invalid max_in_flight 513", "from 1 to 512"),
    ("max_requests_per_second", "0", "invalid max_requests_per_second 0: outside 0.001 .. 10000", "NULL for no limit"),
    ("max_requests_per_second", "1e-30", "invalid max_requests_per_second 0.000000000000000000000000000001: outside 0.001", "a push every 1000 s"),
    ("max_requests_per_second", "20000", "invalid max_requests_per_second 20000", "to 10000"),
    ("max_requests_per_second", "NaN", "invalid max_requests_per_second NaN", "from 0.001"),
])
def test_a_webhooks_own_settings_follow_the_settings_rules(db, admin, setting, value, shown, hint):
    before = db.execute("SELECT count(*) FROM billhook.webhooks").fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        db.execute(f"SELECT billhook.create_webhook('https://receiver.example/s', NULL, %s, verify => false,"
                   f" {setting} => %s)", (admin, value))
    assert shown in str(refused.value)
    assert hint in refused.value.diag.message_hint
    assert db.execute("SELECT count(*) FROM billhook.webhooks").fetchone()[0] == before
    hook = db.execute("SELECT id FROM billhook.create_webhook('https://receiver.example/s', NULL, %s,"
                      " verify => false)", (admin,)).fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute(f"SELECT billhook.update_webhook(%s, {setting} => %s)", (hook, value))


def test_a_webhooks_own_settings_are_kept_shown_and_reset(db, admin):
    hook = db.execute("SELECT id FROM billhook.create_webhook('https://receiver.example/s', NULL, %s,"
                      " verify => false, retry_schedule => '1s,2s', request_timeout => '2s', max_in_flight => 4,"
                      " max_requests_per_second => 2.5)", (admin,)).fetchone()[0]
    row = lambda: db.execute("SELECT retry_schedule, request_timeout::text, max_in_flight, max_requests_per_second"
                             " FROM billhook.webhook_overview WHERE id = %s", (hook,)).fetchone()
    assert row() == ("1s,2s", "00:00:02", 4, 2.5)
    db.execute("SELECT billhook.update_webhook(%s, request_timeout => '30s', max_in_flight => 1)", (hook,))
    assert row() == ("1s,2s", "00:00:30", 1, 2.5)
    db.execute("SELECT billhook.reset_webhook_settings(%s)", (hook,))
    assert row() == (None, None, None, None)
    with pytest.raises(psycopg.errors.NoDataFound):
        db.execute("SELECT billhook.reset_webhook_settings(-1)")


# What billhook writes after pushes, or derives, or keeps itself; every other column of webhooks is
# configuration and moves updated_at.
NOT_CONFIGURATION = {"id", "created_at", "updated_at", "subscribed_events", "exact_events", "public_key",
                     "previous_public_key", "last_http_status", "last_http_body", "consecutive_failures",
                     "failing_since", "last_success_at", "disabled_at", "disabled_reason"}
CONFIGURATION_CHANGES = {
    "url": "'https://changed.example/hook'",
    "enabled_events": "'{invoice.paid}'",
    "enabled": "NOT enabled",
    "token": "billhook.generate_token()",
    "signing_secret": "billhook.generate_signing_secret()",
    "previous_signing_secret": "billhook.generate_signing_secret()",
    "previous_secret_expires_at": "now() + interval '1 day'",
    "administration_id": "(SELECT min(id) FROM billhook.administrations WHERE id <> administration_id)",
    "headers": """'{"X-Changed": "1"}'""",
    "retry_schedule": "'1m'",
    "request_timeout": "interval '3 seconds'",
    "max_in_flight": "2",
    "max_requests_per_second": "5",
    "ordering": "'entity'",
    "payload_format": "'standard'",
    "payload": "'thin'",
    "filter": """'$.entity_type == "Invoice"'""",
    "signature": "'both'",
    "signing_key": "billhook.generate_signing_key()",
    "previous_signing_key": "billhook.generate_signing_key()",
    "previous_key_expires_at": "now() + interval '1 day'",
}


def test_updated_at_follows_every_configuration_column_and_nothing_billhook_writes(db, admin):
    columns = {name for (name,) in db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'billhook.webhooks'::regclass AND attnum > 0"
        " AND NOT attisdropped").fetchall()}
    assert columns == NOT_CONFIGURATION | set(CONFIGURATION_CHANGES), "a new column is configuration or not"
    db.execute("INSERT INTO billhook.administrations (name) VALUES ('updated_at test')")
    hook = webhook(db, admin)
    old = "SELECT updated_at < '2001-01-01' FROM billhook.webhooks WHERE id = %s"
    reset = "UPDATE billhook.webhooks SET updated_at = '2000-01-01' WHERE id = %s"
    for column, value in CONFIGURATION_CHANGES.items():
        db.execute(reset, (hook,))
        assert db.execute(old, (hook,)).fetchone()[0]
        db.execute(f"UPDATE billhook.webhooks SET {column} = {value} WHERE id = %s", (hook,))
        assert not db.execute(old, (hook,)).fetchone()[0], f"{column} is configuration"
    db.execute(reset, (hook,))
    db.execute("UPDATE billhook.webhooks SET last_http_status = 500, last_http_body = 'no', consecutive_failures = 3,"
               " failing_since = now(), last_success_at = now() WHERE id = %s", (hook,))
    assert db.execute(old, (hook,)).fetchone()[0], "the delivery status is no configuration change"
