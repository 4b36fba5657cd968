"""A hostile suite that searches, not only lists (issue 29): Hypothesis generates values for every
argument of every billhook function that billhook_app may execute, for every column billhook_app
may write, and for the contents of a tracked table, and each example must end in one of

  (a) a clear SQL error with a real SQLSTATE (not XX000, which is what a Rust panic becomes), and
      nothing written: the tenant's rows are as before; or
  (b) success, and the worker still serves everyone: a CANARY webhook of another administration
      receives a fresh event within a few seconds (checked on the HTTP request the receiver got);

and after every example no role gained a privilege and no row of another administration changed.

The app role works under tenant isolation, in an administration of its own per example (with a
customer, documents, lines, a webhook subscribed to everything and its deliveries), so that the
ids it is handed include its own rows, the canary's rows and nonsense alike. Functions and columns
are read from the catalog at test time: a new function or grant is covered without a change here.

`make test` runs a few examples of each, derandomized (the same ones every run); `make fuzz` sets
BILLHOOK_FUZZ_EXAMPLES to run many more, random ones, with shrinking. Every failing example found is
kept as a plain test in test_hostile_cases.py.
"""

import json
import os
import time
import uuid
from dataclasses import dataclass, field

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st


FUZZ = int(os.environ.get("BILLHOOK_FUZZ_EXAMPLES") or 0)
# A file to append one line per hostile statement to (its outcome and duration), to watch a long run.
TRACE = os.environ.get("BILLHOOK_HOSTILE_TRACE")

# The canary must receive its push within this many seconds of its commit.
CANARY_SECONDS = 8.0
# A hostile call that runs this long is a failure too (it is cancelled: 57014).
STATEMENT_TIMEOUT = "10s"



def hostile_settings(examples: int):
    """Few derandomized examples without shrinking in make test; BILLHOOK_FUZZ_EXAMPLES random ones,
    shrunk, in make fuzz."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    if FUZZ:
        phases.append(Phase.shrink)
    return settings(max_examples=FUZZ or examples, deadline=None, derandomize=not FUZZ, database=None,
                    phases=phases, print_blob=True,
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------------------
# Generated values: SQL expressions of a type, with their parameters and a label to report.

@dataclass(frozen=True)
class Ref:
    """A parameter that names a row instead of a literal id ("own customers", "canary webhooks"),
    resolved per example, so that a reported example reproduces in another run."""
    who: str
    table: str


@dataclass(frozen=True)
class Arg:
    """One generated value: `sql` (with %s placeholders for `params`) is an expression of a type."""
    sql: str
    params: tuple = ()
    label: str = ""

    def __repr__(self):
        return self.label or self.sql


def lit(value: str, type_: str, label: str | None = None) -> Arg:
    return Arg(f"%s::{type_}", (value,), label or f"{value[:60]!r}{'...' if len(value) > 60 else ''}::{type_}")


def expr(sql: str, type_: str, label: str | None = None) -> Arg:
    return Arg(f"({sql})::{type_}", (), label or f"({sql})::{type_}")


def null(type_: str) -> Arg:
    return Arg(f"NULL::{type_}", (), f"NULL::{type_}")


def row_ref(who: str, table: str, type_: str = "bigint") -> Arg:
    return Arg(f"%s::{type_}", (Ref(who, table),), f"<id of {who} {table}>")


INT_EDGES = [0, -1, 1, 2, 100, 2**15 - 1, 2**31 - 1, -2**31, 2**31, 2**53, 2**63 - 1, -2**63]
NUMERIC_EDGES = ["1e-30", "1e30", "NaN", "Infinity", "-Infinity", "-0", "0", "0.5", "-1", "100", "101",
                 "1e-1000", "1e1000", "9" * 1000, "0." + "0" * 999 + "1", "123456789012345678901234567890.123"]
FLOAT_EDGES = ["1e-30", "1e30", "NaN", "Infinity", "-Infinity", "-0", "0", "1", "0.001", "5e-324",
               "1.7976931348623157e308", "2.2250738585072014e-308", "1e-300", "-1"]
INTERVAL_EDGES = ["0", "1 microsecond", "-1 microsecond", "-1 second", "1 second", "24 hours", "-24 hours",
                  "178000000 years", "-178000000 years", "2147483647 days", "-2147483648 days",
                  "2147483647 months", "-2147483648 months", "2562047788 hours", "-2562047788 hours",
                  "1 day -1 second", "1 month -30 days"]
TIMESTAMP_EDGES = ["infinity", "-infinity", "epoch", "4713-01-01 00:00:00+00 BC", "294276-12-31 23:59:59+00",
                   "now", "2000-02-29 12:00:00+14", "1900-01-01 00:00:00-12"]
DATE_EDGES = ["infinity", "-infinity", "epoch", "4713-01-01 BC", "5874897-12-31", "today", "2000-02-29",
              "9999-12-31", "0001-01-01"]
ODD_TEXT = [
    "", " ", "\u202e\u200fevil\u202c", "\u200b", "\ufeff", "e\u0301\u0301\u0301", "\U0001F4A9", "\u0000"[1:],
    "\\", "'", "\"", "%s", "%%", "$$", "';--", "'; DROP TABLE billhook.webhooks; --",
    "1; SELECT pg_sleep(10)", "$1", "\\x00", "NULL", "null", "{}", "[]", "\n\r\t", "ǅ", "İ", "ß", "\u2028",
    "a" * 10_000,
]
DOMAIN_TEXT = [
    "*", "customer", "customer.created", "invoice.paid", "invoice.*", "hostiledoc", "order.created",
    "billhook", "moneybird", "standard", "none", "per_entity", "full", "thin", "minimal", "hmac", "ed25519",
    "weekly", "monthly", "quarterly", "half_yearly", "yearly", "draft", "open", "paid", "cancelled",
    "new", "approved", "pending", "succeeded", "failed", "Customer", "Invoice", "SalesInvoice", "Quotation",
    "Expense", "RecurringInvoice", "HostileDoc", "EUR", "en", "NL", "1s", "1s,2s,4s", "0s", "-1s",
    "1s," * 1000, "999999999999 days", "$", "$.state", "$.entity.company_name == \"x\"", "1 hour",
    "http://127.0.0.1:1/hook", "https://localhost:1/hook", "ftp://127.0.0.1/", "file:///etc/passwd",
    "http://user:pass@127.0.0.1:1/", "http://[::1]:1/", "http://169.254.169.254/latest/meta-data/",
    "not a url", "http://" + "a" * 300 + ".test/",
]
JSON_TEXT = [
    "{}", "[]", "null", "0", "-0", "1e1000", "-1e1000", "1e-1000", "123456789012345678901234567890",
    "\"\"", "\"\\u202e\\u200f\"", "\"\\u0000\"", "{\"a\": 1e308}", "[1, \"a\", null, true, {}]",
    "[" * 200 + "]" * 200, "{\"a\": " * 200 + "1" + "}" * 200, "[" * 1000 + "]" * 1000,
    "{" + ", ".join(f"\"k{i}\": {i}" for i in range(10_000)) + "}", "[" + ", ".join(["0"] * 10_000) + "]",
    "{\"X-Custom\": \"1\"}", "{\"Authorization\": \"Bearer x\"}", "{\"Host\": \"evil\"}", "{\"\": \"\"}",
    "{\"X-A\": \"a\\r\\nX-B: b\"}", "{\"X-A\": 1}", "{\"X-A\": null}", "{\"x\": \"" + "y" * 100_000 + "\"}",
    "not json", "{\"a\": NaN}",
]
JSONPATH_TEXT = ["$", "$.a", "$ ? (@ > 1)", "strict $.x", "$.**", "$" + ".a" * 1000, "$[*]",
                 "$.entity ? (@.a like_regex \"(a+)+b\")", "exists($.x)", "$.event_type == \"customer.created\"",
                 "$.a +", "1 / 0", "$ ? (@ == $x)", "last", "$[last]", "$.datetime()"]
REGCLASS_TEXT = ["billhook.webhooks", "billhook.events", "pg_authid", "pg_catalog.pg_class", "hostile.docs",
                 "nonexistent_table", "billhook.customers", "pg_temp.x", "'; select 1"]
UUIDS = ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff", str(uuid.UUID(int=1))]

TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")


def text_values(type_: str, extra: list[str] = ()) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(ODD_TEXT + DOMAIN_TEXT + list(extra)).map(lambda v: lit(v, type_)),
        st.text(TEXT_CHARS, max_size=40).map(lambda v: lit(v, type_)),
        st.just(expr("repeat('x', 1048576)", type_, f"<1 MB of x>::{type_}")),
        st.just(expr("repeat(U&'\\202E\\0301', 300000)", type_, f"<300k RTL marks and accents>::{type_}")),
        # NUL cannot be in a text value: PostgreSQL refuses it (54000), and so must everything after.
        st.just(expr("chr(0)", type_, f"chr(0)::{type_}")),
    )


def integer_values(type_: str, refs: list[Arg]) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(INT_EDGES).map(lambda v: lit(str(v), type_)),
        st.sampled_from(refs) if refs else st.nothing(),
        st.integers(-2**63, 2**63 - 1).map(lambda v: lit(str(v), type_)),
        st.just(lit("9223372036854775808", "numeric", "2^63::numeric")).map(
            lambda a: Arg(f"{a.sql}::{type_}", a.params, f"2^63::{type_}")),
    )


def json_values(type_: str) -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(TEXT_CHARS, max_size=20))
    documents = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(TEXT_CHARS, max_size=10), inner, max_size=5)),
        max_leaves=20)
    return st.one_of(
        st.sampled_from(JSON_TEXT).map(lambda v: lit(v, type_)),
        documents.map(lambda v: lit(json.dumps(v), type_)),
        st.integers(1, 300).map(lambda depth: lit("[" * depth + "]" * depth, type_, f"<{depth}-deep array>::{type_}")),
        st.integers(1, 300).map(lambda depth: lit("{\"a\": " * depth + "1" + "}" * depth, type_,
                                                  f"<{depth}-deep object>::{type_}")),
        st.just(expr("(SELECT jsonb_object_agg('k' || i, repeat('v', 100)) FROM generate_series(1, 100000) AS i)",
                     type_, f"<object of 100000 keys, 10 MB>::{type_}")),
    )


def interval_values(type_: str) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(INTERVAL_EDGES).map(lambda v: lit(v, type_)),
                     st.integers(-10**12, 10**12).map(lambda v: lit(f"{v} microseconds", type_)),
                     st.sampled_from(["infinity", "-infinity", "forever"]).map(lambda v: lit(v, type_)))


def array_values(element: str, refs: list[Arg], ctx: "Context") -> st.SearchStrategy:
    type_ = f"{element}[]"
    elements = st.lists(st.one_of(values_for(element, refs, ctx, arrays=False), st.just(null(element))), max_size=4)
    return st.one_of(
        st.sampled_from(["{}", "{NULL}", "{NULL,NULL}", "{{}}", "{\"\"}", "{*}"]).map(lambda v: lit(v, type_)),
        elements.map(lambda items: Arg(f"ARRAY[{', '.join(a.sql for a in items)}]::{type_}" if items else f"'{{}}'::{type_}",
                                       tuple(p for a in items for p in a.params),
                                       f"ARRAY{items!r}::{type_}")),
        st.just(expr(f"ARRAY(SELECT NULL::{element} FROM generate_series(1, 100000))", type_,
                     f"<100000 NULLs>::{type_}")),
        st.just(expr("ARRAY(SELECT name FROM billhook.event_types)", type_, f"<every event type>::{type_}"))
        if element == "text" else st.nothing(),
    )


@dataclass
class Context:
    """What the strategies of one example refer to: the rows' tables, and the canary's rows as text
    (a forged row of another administration, for arguments of a row type)."""
    foreign_rows: dict = field(default_factory=dict)
    # (who, table) pairs that ids can refer to.
    ref_tables: tuple = ()


def values_for(type_: str, refs: list[Arg], ctx: Context, arrays: bool = True) -> st.SearchStrategy:
    """Values of a type (format_type's spelling), NULL among them."""
    base = type_.split("(")[0]
    if type_.endswith("[]") and arrays:
        values = array_values(type_[:-2], refs, ctx)
    elif type_.endswith("[]"):
        values = st.nothing()
    elif base in ("bigint", "integer", "smallint"):
        values = integer_values(type_, refs)
    elif base == "numeric":
        values = st.one_of(st.sampled_from(NUMERIC_EDGES).map(lambda v: lit(v, type_)),
                           st.decimals(allow_nan=False, allow_infinity=False).map(lambda v: lit(str(v), type_)))
    elif base in ("double precision", "real"):
        values = st.one_of(st.sampled_from(FLOAT_EDGES).map(lambda v: lit(v, type_)),
                           st.floats().map(lambda v: lit(repr(v), type_)))
    elif base in ("text", "character varying", "name"):
        values = text_values(type_)
    elif base == "character":
        values = st.one_of(st.sampled_from(["EUR", "eur", "EURO", "E", "€€€", "NL", "XX"]).map(lambda v: lit(v, type_)),
                           text_values(type_))
    elif base == "boolean":
        values = st.sampled_from(["true", "false"]).map(lambda v: lit(v, type_))
    elif base in ("jsonb", "json"):
        values = json_values(type_)
    elif base == "jsonpath":
        values = st.sampled_from(JSONPATH_TEXT).map(lambda v: lit(v, type_))
    elif base == "interval":
        values = interval_values(type_)
    elif base.startswith("timestamp"):
        values = st.one_of(st.sampled_from(TIMESTAMP_EDGES).map(lambda v: lit(v, type_)),
                           st.datetimes().map(lambda v: lit(v.isoformat() + "+00", type_)))
    elif base == "date":
        values = st.one_of(st.sampled_from(DATE_EDGES).map(lambda v: lit(v, type_)),
                           st.dates().map(lambda v: lit(v.isoformat(), type_)))
    elif base == "uuid":
        values = st.one_of(st.sampled_from(UUIDS).map(lambda v: lit(v, type_)),
                           st.uuids().map(lambda v: lit(str(v), type_)), st.just(lit("not-a-uuid", type_)))
    elif base == "regclass":
        values = st.sampled_from(REGCLASS_TEXT).map(lambda v: lit(v, type_))
    elif base.startswith("billhook."):
        table = base.split(".", 1)[1]
        choices = [Arg(f"(SELECT t FROM {base} AS t WHERE t.id = %s)", (Ref("own", table),), f"<own row of {base}>"),
                   lit("()", type_)]
        if table in ctx.foreign_rows:
            choices.append(lit(ctx.foreign_rows[table], type_, f"<the canary's row of {base}, as text>"))
        values = st.sampled_from(choices)
    else:
        values = text_values(type_)
    return st.one_of(st.just(null(type_)), values)


def id_refs(ctx: Context, type_: str) -> list[Arg]:
    """Ids of the example's own rows and of the canary's, for an argument or column of type_ (or of
    its elements)."""
    element = type_.removesuffix("[]")
    if element not in ("bigint", "integer"):
        return []
    return [row_ref(who, table, element) for who, table in ctx.ref_tables]


# ---------------------------------------------------------------------------------------------
# The environment: roles, tenant isolation, the canary, a tracked table, per-example tenants.

TENANT_TABLES = ["customers", "invoices", "invoice_lines", "quotations", "quotation_lines", "expenses",
                 "recurring_invoices", "recurring_invoice_lines"]
# Webhook columns that are its configuration (the others change with every delivery).
WEBHOOK_CONFIG = ("url, enabled_events, enabled, headers, retry_schedule, request_timeout, max_in_flight,"
                  " max_requests_per_second, ordering, payload_format, payload, filter::text, signature, token,"
                  " signing_secret, signing_key, previous_signing_secret, previous_signing_key, administration_id")
APP_LOGIN = "hostile_app"
TABLE_OWNER = "hostile_owner"
TRACKED = "hostile.docs"


def hostile_administration(conn) -> int:
    """An administration named 'hostile', to tell the suite's rows apart when reading a session's
    database."""
    return conn.execute("INSERT INTO billhook.administrations (name) VALUES ('hostile') RETURNING id").fetchone()[0]


@dataclass
class Tenant:
    id: int
    rows: dict  # table -> id of one row of the tenant
    webhooks: list


class Hostile:
    def __init__(self, cluster, receiver):
        self.cluster = cluster
        self.receiver = receiver
        self.su = cluster.connect("billhook_worker")
        su = self.su
        deadline = time.time() + 30
        while not su.execute("SELECT running FROM billhook.worker_status()").fetchone()[0]:
            assert time.time() < deadline, "the worker runs in billhook_worker"
            time.sleep(0.05)
        su.execute("SELECT billhook.create_roles()")
        for role in (APP_LOGIN, TABLE_OWNER):
            self._drop_role(role)
        su.execute(f"CREATE ROLE {APP_LOGIN} LOGIN IN ROLE billhook_app")
        su.execute(f"CREATE ROLE {TABLE_OWNER} LOGIN")
        su.execute(f"GRANT USAGE ON SCHEMA billhook TO {TABLE_OWNER}")
        su.execute("SELECT billhook.enable_tenant_isolation()")
        # A table of the application, owned by an unprivileged role, tracked by the superuser.
        su.execute("DROP SCHEMA IF EXISTS hostile CASCADE")
        su.execute("CREATE SCHEMA hostile")
        su.execute(f"GRANT USAGE ON SCHEMA hostile TO {TABLE_OWNER}")
        su.execute(f"CREATE TABLE {TRACKED} (id bigserial PRIMARY KEY, tenant bigint NOT NULL, status text NOT NULL"
                   " DEFAULT 'new', doc jsonb, note text, amount numeric)")
        su.execute(f"ALTER TABLE {TRACKED} OWNER TO {TABLE_OWNER}")
        su.execute(f"SELECT billhook.track_table('{TRACKED}', 'HostileDoc', 'hostiledoc',"
                   " administration_column => 'tenant', state_column => 'status',"
                   " state_events => '{\"done\": \"hostiledoc.done\"}')")
        # The canary: another administration whose webhook must keep receiving.
        self.canary = hostile_administration(su)
        self.canary_path = f"/hostile/canary/{self.canary}"
        self.canary_webhook = su.execute(
            "SELECT id FROM billhook.create_webhook(%s, '{customer.created}', %s, verify => false)",
            (receiver.url(self.canary_path), self.canary)).fetchone()[0]
        self.canary_rows = self._documents(self.canary)
        self.canary_rows["webhooks"] = self.canary_webhook
        self.foreign_rows = {table: su.execute(f"SELECT t::text FROM billhook.{table} AS t WHERE id = %s",
                                               (row_id,)).fetchone()[0]
                             for table, row_id in self.canary_rows.items()}
        self.tenants: list[int] = []
        self.app = self._connect(APP_LOGIN)
        self.owner = self._connect(TABLE_OWNER)
        self.baseline = self.privileges()
        self.references = self._tenant_references()
        # The canary works before anything hostile happened (else nothing below means anything).
        self.assert_canary_alive("before the hostile examples")

    def _connect(self, role):
        conn = self.cluster.connect("billhook_worker", user=role)
        conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        return conn

    def _drop_role(self, role):
        if self.su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            self.su.execute(f"DROP OWNED BY {role} CASCADE")
            self.su.execute(f"DROP ROLE {role}")

    def close(self):
        su = self.su
        for conn in (self.app, self.owner):
            conn.close()
        # Nothing of the module is delivered any more: its webhooks go, its administrations stay.
        su.execute("DELETE FROM billhook.webhooks WHERE administration_id = ANY (%s)",
                   (self.tenants + [self.canary],))
        su.execute("DROP SCHEMA IF EXISTS hostile CASCADE")
        su.execute("SELECT billhook.disable_tenant_isolation()")
        for role in (APP_LOGIN, TABLE_OWNER):
            self._drop_role(role)
        su.close()

    # -- tenants -------------------------------------------------------------------------------

    def _documents(self, admin: int) -> dict:
        """One row of each document table in administration admin (as the superuser)."""
        su = self.su
        rows = {}
        with su.transaction():
            q = lambda sql, *params: su.execute(sql, params).fetchone()[0]
            rows["customers"] = q("INSERT INTO billhook.customers (administration_id, company_name, email)"
                                  " VALUES (%s, 'Hostile B.V.', 'x@example.com') RETURNING id", admin)
            rows["invoices"] = q("INSERT INTO billhook.invoices (administration_id, customer_id) VALUES (%s, %s)"
                                 " RETURNING id", admin, rows["customers"])
            rows["invoice_lines"] = q("INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description,"
                                      " price) VALUES (%s, %s, 'Work', 10) RETURNING id", admin, rows["invoices"])
            rows["quotations"] = q("INSERT INTO billhook.quotations (administration_id, customer_id) VALUES (%s, %s)"
                                   " RETURNING id", admin, rows["customers"])
            rows["quotation_lines"] = q("INSERT INTO billhook.quotation_lines (administration_id, quotation_id,"
                                        " description, price) VALUES (%s, %s, 'Design', 20) RETURNING id",
                                        admin, rows["quotations"])
            rows["expenses"] = q("INSERT INTO billhook.expenses (administration_id, supplier_name, amount)"
                                 " VALUES (%s, 'Supplies', 5) RETURNING id", admin)
            # Not due in this century: the worker's sweep must not change the rows an example
            # compares before and after.
            rows["recurring_invoices"] = q("INSERT INTO billhook.recurring_invoices (administration_id, customer_id,"
                                           " frequency, start_date) VALUES (%s, %s, 'monthly', current_date + 36500)"
                                           " RETURNING id", admin, rows["customers"])
            rows["recurring_invoice_lines"] = q(
                "INSERT INTO billhook.recurring_invoice_lines (administration_id, recurring_invoice_id, description,"
                " price) VALUES (%s, %s, 'Hosting', 30) RETURNING id", admin, rows["recurring_invoices"])
        return rows

    def new_tenant(self, payload_formats=("billhook",), events=("*",)) -> Tenant:
        """An administration of the example's own: documents, a webhook per payload format at the
        receiver, and (once the worker fanned them out) deliveries."""
        admin = hostile_administration(self.su)
        self.tenants.append(admin)
        rows = self._documents(admin)
        hooks = []
        for payload_format in payload_formats:
            hooks.append(self.su.execute(
                "SELECT id FROM billhook.create_webhook(%s, %s, %s, verify => false, payload_format => %s)",
                (self.receiver.url(f"/hostile/tenant/{admin}/{payload_format}"), list(events), admin,
                 payload_format)).fetchone()[0])
        rows["webhooks"] = hooks[0]
        rows["administrations"] = admin
        # A delivery of the tenant's, for the functions and columns of deliveries.
        self.su.execute("SELECT billhook.fan_out()")
        delivery = self.su.execute("SELECT min(id) FROM billhook.deliveries WHERE webhook_id = %s",
                                   (hooks[0],)).fetchone()[0]
        if delivery is not None:
            rows["deliveries"] = delivery
            rows["events"] = self.su.execute("SELECT event_id FROM billhook.deliveries WHERE id = %s",
                                             (delivery,)).fetchone()[0]
        for conn in (self.app, self.owner):
            conn.execute("SELECT set_config('billhook.administration_id', %s, false)", (str(admin),))
        return Tenant(admin, rows, hooks)

    def retire(self, tenant: Tenant):
        """What an example left must not disturb the next one: the tenant's webhooks go (with their
        deliveries), so whatever they were set to is no longer the worker's business."""
        self.su.execute("DELETE FROM billhook.webhooks WHERE administration_id = %s", (tenant.id,))

    def context(self) -> Context:
        tables = ["customers", "invoices", "invoice_lines", "quotations", "quotation_lines", "expenses",
                  "recurring_invoices", "webhooks", "deliveries", "events", "administrations"]
        refs = [("own", t) for t in tables] + [("canary", t) for t in ("customers", "invoices", "webhooks",
                                                                         "recurring_invoices", "quotations")]
        return Context(foreign_rows=self.foreign_rows, ref_tables=tuple(refs))

    def resolve(self, arg: Arg, tenant: Tenant) -> tuple:
        def value(p):
            if not isinstance(p, Ref):
                return p
            rows = tenant.rows if p.who == "own" else {**self.canary_rows, "administrations": self.canary}
            return rows.get(p.table)
        return tuple(value(p) for p in arg.params)

    # -- observations --------------------------------------------------------------------------

    def fingerprint(self, admin: int) -> dict:
        """The administration's rows (documents, webhook configuration, events, and how many
        deliveries), to tell whether anything was written."""
        parts = {table: f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM billhook.{table}"
                        f" AS t WHERE t.administration_id = {admin}" for table in TENANT_TABLES}
        parts["administration"] = f"SELECT md5(t::text) FROM billhook.administrations AS t WHERE t.id = {admin}"
        parts["webhooks"] = (f"SELECT md5(coalesce(string_agg(row({WEBHOOK_CONFIG})::text, '|' ORDER BY id), ''))"
                             f" FROM billhook.webhooks WHERE administration_id = {admin}")
        parts["tracked"] = (f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {TRACKED}"
                             f" AS t WHERE t.tenant = {admin}")
        parts["events"] = f"SELECT count(*)::text FROM billhook.events WHERE administration_id = {admin}"
        parts["deliveries"] = (f"SELECT count(*)::text FROM billhook.deliveries AS d JOIN billhook.webhooks AS w"
                               f" ON w.id = d.webhook_id WHERE w.administration_id = {admin}")
        names = list(parts)
        row = self.su.execute("SELECT " + ", ".join(f"({sql})" for sql in parts.values())).fetchone()
        return dict(zip(names, row))

    def privileges(self) -> dict:
        """What the test roles are and may do: attributes, memberships, and every privilege on the
        tables, views and functions of billhook and pg_catalog."""
        roles = [APP_LOGIN, TABLE_OWNER, "billhook_app", "billhook_reader"]
        attributes = self.su.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, rolinherit,"
            " ARRAY(SELECT b.rolname::text FROM pg_auth_members AS m JOIN pg_roles AS b ON b.oid = m.roleid"
            "       WHERE m.member = r.oid ORDER BY 1)"
            " FROM pg_roles AS r WHERE rolname = ANY (%s) ORDER BY rolname", (roles,)).fetchall()
        tables = self.su.execute(
            "SELECT r.rolname, c.oid::regclass::text, p FROM pg_roles AS r, pg_class AS c,"
            " unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}'::text[]) AS p"
            " WHERE r.rolname = ANY (%s) AND c.relkind IN ('r', 'v', 'm', 'p', 'S')"
            " AND c.relnamespace IN ('billhook'::regnamespace, 'pg_catalog'::regnamespace)"
            " AND (c.relkind <> 'S' OR p = 'SELECT') AND has_table_privilege(r.oid, c.oid, p)", (roles,)).fetchall()
        columns = self.su.execute(
            "SELECT r.rolname, c.oid::regclass::text, p FROM pg_roles AS r, pg_class AS c,"
            " unnest('{SELECT,INSERT,UPDATE}'::text[]) AS p"
            " WHERE r.rolname = ANY (%s) AND c.relkind IN ('r', 'v') AND c.relnamespace = 'billhook'::regnamespace"
            " AND has_any_column_privilege(r.oid, c.oid, p)", (roles,)).fetchall()
        functions = self.su.execute(
            "SELECT r.rolname, p.oid::regprocedure::text FROM pg_roles AS r, pg_proc AS p"
            " WHERE r.rolname = ANY (%s) AND p.pronamespace = 'billhook'::regnamespace"
            " AND has_function_privilege(r.oid, p.oid, 'EXECUTE')", (roles,)).fetchall()
        superusers = self.su.execute("SELECT array_agg(rolname::text ORDER BY rolname) FROM pg_roles"
                                     " WHERE rolsuper OR rolbypassrls").fetchone()[0]
        return {"attributes": attributes, "tables": set(tables), "columns": set(columns),
                "functions": set(functions), "superusers": superusers}

    def assert_no_privilege_gained(self):
        now = self.privileges()
        for kind in ("tables", "columns", "functions"):
            gained = now[kind] - self.baseline[kind]
            assert not gained, f"privileges gained on {kind}: {sorted(gained)}"
        assert now["attributes"] == self.baseline["attributes"], "a test role's attributes or memberships changed"
        assert now["superusers"] == self.baseline["superusers"], "a role became superuser or BYPASSRLS"

    def _tenant_references(self) -> list[str]:
        """Per foreign key between two tables with an administration_id: a query counting the rows of
        an administration ($1) that reference a row of another administration."""
        fks = self.su.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text,"
            " ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)"
            "       JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),"
            " ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)"
            "       JOIN pg_attribute AS a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)"
            " FROM pg_constraint AS c WHERE c.contype = 'f' AND c.connamespace = 'billhook'::regnamespace"
            " AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.conrelid AND attname = 'administration_id')"
            " AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.confrelid AND attname = 'administration_id')"
        ).fetchall()
        queries = []
        for child, parent, keys, refs in fks:
            on = " AND ".join(f"p.{r} = c.{k}" for k, r in zip(keys, refs) if k != "administration_id")
            if on:
                queries.append(f"SELECT '{child} → {parent}', count(*) FROM {child} AS c JOIN {parent} AS p ON {on}"
                               f" WHERE c.administration_id = %(admin)s AND p.administration_id <> %(admin)s")
        # Columns that name rows of billhook tables without a foreign key (found by name).
        for child, column, parent in self.su.execute(
                "SELECT a.attrelid::regclass::text, a.attname::text, 'billhook.' || t.t FROM pg_attribute AS a"
                " JOIN pg_class AS c ON c.oid = a.attrelid, LATERAL (SELECT left(a.attname, -3) || 's' AS t) AS t"
                " WHERE c.relnamespace = 'billhook'::regnamespace AND c.relkind = 'r' AND a.attname LIKE '%\\_id'"
                " AND a.attname <> 'administration_id' AND a.attnum > 0 AND NOT a.attisdropped"
                " AND to_regclass('billhook.' || t.t) IS NOT NULL"
                " AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = a.attrelid AND attname = 'administration_id')"
                " AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = ('billhook.' || t.t)::regclass"
                "             AND attname = 'administration_id')").fetchall():
            queries.append(f"SELECT '{child}.{column} → {parent}', count(*) FROM {child} AS c JOIN {parent} AS p"
                           f" ON p.id = c.{column} WHERE c.administration_id = %(admin)s"
                           f" AND p.administration_id <> %(admin)s")
        return queries

    def cross_tenant_references(self, admin: int) -> list:
        return [row for sql in self.references for row in [self.su.execute(sql, {"admin": admin}).fetchone()]
                if row[1]]

    def assert_tenant_integrity(self, tenant: Tenant, canary_before: dict):
        assert self.fingerprint(self.canary) == canary_before, "the canary administration's rows changed"
        crossing = self.cross_tenant_references(tenant.id)
        if crossing:
            raise AssertionError(f"rows of administration {tenant.id} reference another administration's: {crossing}")

    def assert_canary_alive(self, after: str):
        """The canary administration's webhook receives a push of a customer created now."""
        marker = f"canary-{uuid.uuid4()}"
        started = time.time()
        self.su.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, %s)",
                        (self.canary, marker))
        needle = marker.encode()
        self.trace(f"canary after {after[:100]!r}")
        with self.receiver.lock:
            while not any(needle in r.body for r in self.receiver.requests if r.path == self.canary_path):
                left = started + CANARY_SECONDS - time.time()
                if left <= 0:
                    raise AssertionError(f"the canary webhook received nothing within {CANARY_SECONDS} s {after}:"
                                         f" {self.worker_trouble()}")
                self.receiver.lock.wait(timeout=left)

    def worker_trouble(self) -> str:
        warnings = [line for line in self.cluster.server_log().splitlines() if "billhook" in line
                    and ("WARNING" in line or "ERROR" in line or "PANIC" in line)]
        deliveries = self.su.execute(
            "SELECT d.id, d.status, d.attempts, d.next_attempt_at - now(), d.locked_until - now(), d.last_error"
            " FROM billhook.deliveries AS d WHERE d.webhook_id = %s ORDER BY d.id DESC LIMIT 2",
            (self.canary_webhook,)).fetchall()
        return f"the canary's last deliveries: {deliveries}; " + ("; ".join(warnings[-3:]) or "no warning in the server log")

    def trace(self, line: str):
        if TRACE:
            with open(TRACE, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def exercise(self, tenant: Tenant):
        """Something for the tenant's webhooks to deliver, as they are now set."""
        self.su.execute("INSERT INTO billhook.customers (administration_id, company_name) VALUES (%s, 'exercise')",
                        (tenant.id,))

    # -- one hostile statement -----------------------------------------------------------------

    def attempt(self, conn, sql: str, params: tuple, tenant: Tenant, what: str):
        """Runs one hostile statement as conn's role and checks the outcome: a clear error and
        nothing written, or success and a live canary; always no privilege gained and the other
        administration untouched."""
        before = self.fingerprint(tenant.id)
        canary_before = self.fingerprint(self.canary)
        error = None
        started = time.time()
        try:
            conn.execute(sql, params)
        except psycopg.Error as e:
            error = e
        finally:
            self.trace(f"{time.time() - started:6.2f}s {error.sqlstate if error else 'ok'} {what[:300]!r}")
        if conn.closed or conn.broken:
            raise AssertionError(f"{what}: the session died: {error!r}")
        self.assert_no_privilege_gained()
        self.assert_tenant_integrity(tenant, canary_before)
        if error is not None:
            assert error.sqlstate is not None, f"{what}: an error without SQLSTATE: {error!r}"
            assert error.sqlstate != "XX000", f"{what}: internal error (a panic?): {error.diag.message_primary}"
            assert error.sqlstate != "57014", f"{what}: ran longer than {STATEMENT_TIMEOUT}"
            assert not error.sqlstate.startswith(("58", "XX")), f"{what}: {error.sqlstate} {error}"
            assert self.fingerprint(tenant.id) == before, f"{what}: failed with {error.sqlstate} but wrote"
            return error
        self.exercise(tenant)
        self.assert_canary_alive(f"after {what} succeeded")
        return None


@pytest.fixture(scope="module")
def hostile(cluster, receiver):
    env = Hostile(cluster, receiver)
    yield env
    env.close()


# ---------------------------------------------------------------------------------------------
# Functions.

def executable_functions(conn) -> list[tuple]:
    """Every function of schema billhook that billhook_app may execute: (signature, name,
    [(argument name, type)])."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proname::text,"
        " ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) AS t),"
        " coalesce(p.proargnames, '{}'), p.prokind::text"
        " FROM pg_proc AS p WHERE p.pronamespace = 'billhook'::regnamespace"
        " AND has_function_privilege('billhook_app', p.oid, 'EXECUTE') ORDER BY 1").fetchall()
    functions = []
    for signature, name, types, names, kind in rows:
        if kind != "f":
            continue
        arguments = [(names[i] if i < len(names) and names[i] else f"${i + 1}", t) for i, t in enumerate(types)]
        functions.append((signature, name, arguments))
    return functions


def function_call(name: str, arguments: list, args: list[Arg], hostile: Hostile, tenant: Tenant) -> tuple[str, tuple]:
    sql = f"SELECT * FROM billhook.{name}({', '.join(a.sql for a in args)})"
    params = tuple(p for a in args for p in hostile.resolve(a, tenant))
    return sql, params


def describe_call(name: str, arguments: list, args: list[Arg]) -> str:
    return f"billhook.{name}(" + ", ".join(f"{n} => {a!r}" for (n, _), a in zip(arguments, args)) + ")"


def test_every_function_the_app_may_execute_takes_hostile_arguments_safely(hostile):
    functions = executable_functions(hostile.su)
    assert any(f[1] == "update_webhook" for f in functions), "the catalog query finds the API"
    failures = []
    for signature, name, arguments in functions:
        @hostile_settings(6 if arguments else 1)
        @given(data=st.data())
        def call(data):
            ctx = hostile.context()
            args = [data.draw(values_for(t, id_refs(ctx, t), ctx), label=n)
                    for n, t in arguments]
            tenant = hostile.new_tenant()
            try:
                sql, params = function_call(name, arguments, args, hostile, tenant)
                hostile.attempt(hostile.app, sql, params, tenant, describe_call(name, arguments, args))
            finally:
                hostile.retire(tenant)

        try:
            call()
        except Exception as e:  # noqa: BLE001 — every function is tried; all failures are reported
            causes = "; ".join(str(c) for c in getattr(e, "exceptions", ()))
            failures.append(f"{signature}: {e} {causes}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Columns.

def writable_columns(conn) -> list[tuple]:
    """(table, column, type, privilege) for every column of a billhook table billhook_app may
    INSERT or UPDATE."""
    return conn.execute(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), p"
        " FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid,"
        " unnest('{INSERT,UPDATE}'::text[]) AS p"
        " WHERE c.relnamespace = 'billhook'::regnamespace AND c.relkind IN ('r', 'p')"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''"
        " AND has_column_privilege('billhook_app', c.oid, a.attnum, p) ORDER BY 1, 4, 2").fetchall()


def required_columns(conn, table: str) -> list[str]:
    """Columns an INSERT must name: NOT NULL, without default, not identity or generated."""
    return [r[0] for r in conn.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = '' ORDER BY attnum",
        (f"billhook.{table}",)).fetchall()]


def column_write(table: str, column: str, privilege: str, arg: Arg, required: list[str],
                 hostile: Hostile, tenant: Tenant) -> tuple[str, tuple]:
    value_params = hostile.resolve(arg, tenant)
    target = tenant.rows.get(table)
    if privilege == "UPDATE":
        return f"UPDATE billhook.{table} SET {column} = {arg.sql} WHERE id = %s", (*value_params, target)
    copied = [c for c in required if c != column]
    columns = ", ".join([*copied, column])
    values = ", ".join([*(f"t.{c}" for c in copied), arg.sql])
    return (f"INSERT INTO billhook.{table} AS n ({columns}) SELECT {values} FROM billhook.{table} AS t WHERE t.id = %s",
            (*value_params, target))


def test_every_column_the_app_may_write_takes_hostile_values_safely(hostile):
    columns = writable_columns(hostile.su)
    assert ("webhooks", "max_requests_per_second", "double precision", "UPDATE") in columns
    required = {table: required_columns(hostile.su, table) for table in {c[0] for c in columns}}

    @hostile_settings(80)
    @given(data=st.data())
    def write(data):
        ctx = hostile.context()
        table, column, type_, privilege = data.draw(st.sampled_from(columns), label="column")
        arg = data.draw(values_for(type_, id_refs(ctx, type_), ctx),
                        label="value")
        tenant = hostile.new_tenant()
        try:
            sql, params = column_write(table, column, privilege, arg, required[table], hostile, tenant)
            hostile.attempt(hostile.app, sql, params, tenant, f"{privilege} billhook.{table}.{column} = {arg!r}")
        finally:
            hostile.retire(tenant)

    write()


# ---------------------------------------------------------------------------------------------
# The contents of a tracked table.

PAYLOAD_FORMATS = ("billhook", "moneybird", "standard")


def tracked_row_strategy(ctx: Context):
    return st.fixed_dictionaries({
        "doc": values_for("jsonb", [], ctx),
        "note": values_for("text", [], ctx),
        "amount": values_for("numeric", [], ctx),
        "status": st.one_of(st.just(lit("done", "text")), values_for("text", [], ctx)),
    })


def tracked_insert(row: dict, hostile: Hostile, tenant: Tenant) -> tuple[str, tuple]:
    names = list(row)
    sql = (f"INSERT INTO {TRACKED} (tenant, {', '.join(names)}) VALUES (%s, "
           + ", ".join(f"coalesce({row[n].sql}, 'new')" if n == "status" else row[n].sql for n in names) + ")")
    params = (tenant.id, *(p for n in names for p in hostile.resolve(row[n], tenant)))
    return sql, params


def test_a_tracked_tables_contents_stop_no_webhook(hostile):
    @hostile_settings(30)
    @given(data=st.data())
    def insert(data):
        ctx = hostile.context()
        row = data.draw(tracked_row_strategy(ctx), label="row")
        update = data.draw(st.one_of(st.none(), tracked_row_strategy(ctx)), label="then updated to")
        tenant = hostile.new_tenant(payload_formats=PAYLOAD_FORMATS, events=("hostiledoc",))
        try:
            sql, params = tracked_insert(row, hostile, tenant)
            error = hostile.attempt(hostile.owner, sql + " RETURNING id", params, tenant, f"INSERT {row!r}")
            if error is None and update is not None:
                names = list(update)
                sets = ", ".join(f"{n} = coalesce({update[n].sql}, 'new')" if n == "status" else f"{n} = {update[n].sql}"
                                 for n in names)
                params = (*(p for n in names for p in hostile.resolve(update[n], tenant)), tenant.id)
                hostile.attempt(hostile.owner, f"UPDATE {TRACKED} SET {sets} WHERE tenant = %s", params, tenant,
                                f"UPDATE to {update!r}")
        finally:
            hostile.retire(tenant)

    insert()
