"""billhook benchmarks: throughput, latency, emit overhead, isolation, backlog and fan-out, measured in
one run on a throwaway cluster against the bench receiver on loopback. Writes bench/results.md.

Run through `make bench` (which installs the release build and builds the receiver first).
Sizes can be lowered for a quick look: BENCH_SCALE=0.1 make bench; BENCH_ONLY=p1,p1e,p1https,p1o,p1x2,p1w,p2,p3,
p4,fanout,rounds,p5,instructions,p6 runs some parts
(results.md is only written by a full run; P6, the outbox at 20 million deliveries, runs only when named:
BENCH_ONLY=p6). BENCH_PG_EXTRA adds postgresql.conf lines, ';'-separated, for
profiling: BENCH_PG_EXTRA="shared_preload_libraries = 'billhook,auto_explain';auto_explain.log_min_duration = 10;
auto_explain.log_analyze = on;auto_explain.log_nested_statements = on" shows the worker's slow plans in the
server log (keep the cluster with BILLHOOK_KEEP_CLUSTER=1). BENCH_PERF=DIR records the worker through each of
P6's drains with `perf record -g` into DIR (p6-empty-N.data, p6-full-N.data), to compare with `perf report`.
BENCH_STATEMENTS=DIR writes, for each of P6's drains, pg_stat_statements' figures of every statement the
cluster ran during it into DIR (p6-empty-N.tsv, ...): run with BENCH_PG_EXTRA="shared_preload_libraries =
'billhook,pg_stat_statements';pg_stat_statements.track = 'all';pg_stat_statements.track_planning = on".
"""

import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tls import TestCA  # noqa: E402  the tests' CA, for the HTTPS receiver of P1 over TLS
CLUSTER = ROOT / "scripts" / "pg-cluster.sh"
RECEIVER = ROOT / "bench" / "receiver" / "target" / "release" / "billhook-bench-receiver"
PG_BIN = Path(os.environ["PG_BIN"])  # set by scripts/pg-config.sh
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
PERF_DIR = os.environ.get("BENCH_PERF")
STATEMENTS_DIR = os.environ.get("BENCH_STATEMENTS")
PORT, RECEIVER_PORT, TLS_RECEIVER_PORT = 55471, 18471, 18472
RECEIVER_URL = f"http://127.0.0.1:{RECEIVER_PORT}"
TLS_RECEIVER_URL = f"https://127.0.0.1:{TLS_RECEIVER_PORT}"
CA = TestCA("billhook bench CA")


def scaled(n):
    return max(100, int(n * SCALE))


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, directory):
        self.data = os.path.join(directory, "data")
        self.directory = directory
        self.rows = []

    def dsn(self, dbname="bench"):
        return f"host=127.0.0.1 port={PORT} user=postgres dbname={dbname}"

    def connect(self, dbname="bench"):
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def configure(self, **settings):
        with self.connect("postgres") as conn:
            for name, value in settings.items():
                conn.execute(f"ALTER SYSTEM SET billhook.{name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")

    def worker_pid(self, database="bench"):
        with self.connect("postgres") as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'"
                               " AND datname = %s", (database,)).fetchone()
        return row[0] if row else None

    def cluster_pids(self):
        """The postmaster's children: every backend, worker and auxiliary process of the cluster."""
        postmaster = Path(self.data, "postmaster.pid").read_text().split()[0]
        return [int(p) for p in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()]

    def worker_database(self):
        with self.connect("postgres") as conn:
            row = conn.execute("SELECT datname FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'").fetchone()
        return row[0] if row else None

    def pause_worker(self):
        """Points the worker at a database without billhook, so deliveries pile up untouched."""
        self.configure(database="postgres")
        self.wait(lambda: self.worker_database() in (None, "postgres"), "worker to leave the bench databases")

    def resume_worker(self, database="bench"):
        self.configure(database=database)
        self.wait(lambda: self.worker_database() == database, "worker to return")

    def wait(self, check, what, timeout=900):
        deadline = time.time() + timeout
        while not check():
            if time.time() > deadline:
                raise TimeoutError(what)
            time.sleep(0.2)

    def result(self, measurement, value, target="", note=""):
        self.rows.append((measurement, value, target, note))
        log(f"{measurement}: {value} {note}")


def receiver_get(path, base=RECEIVER_URL):
    context = ssl.create_default_context(cafile=CA.pem_path)
    with urllib.request.urlopen(base + path, timeout=30, context=context) as response:
        return response.read().decode()


def reset(conn):
    # The worker's round reads these tables in its own order; a TRUNCATE that meets it half-way is
    # a deadlock, of which it is the victim: try again.
    for attempt in range(10):
        try:
            conn.execute("TRUNCATE billhook.delivery_attempts, billhook.deliveries, billhook.events,"
                         " billhook.fan_out_owed, billhook.restored_events,"
                         " billhook.webhooks, billhook.invoice_lines, billhook.invoices CASCADE")
            break
        except psycopg.errors.DeadlockDetected:
            if attempt == 9:
                raise
            time.sleep(0.1)
    receiver_get("/dump")


def webhook(conn, path, events, base=RECEIVER_URL, ordering="none"):
    return conn.execute("SELECT id FROM billhook.create_webhook(%s, %s, verify => false, ordering => %s)",
                        (base + path, events, ordering)).fetchone()[0]


# Invoices of about 1.5 kB of entity JSON: a customer and three lines.
FILL_INVOICES = """
    WITH i AS (
        INSERT INTO billhook.invoices (customer_id, reference, due_date, payment_conditions)
        SELECT %(customer)s, 'Benchmark ' || n, current_date + 14,
               'Please pay within 14 days quoting the invoice number.'
        FROM generate_series(1, %(count)s) AS n RETURNING id)
    INSERT INTO billhook.invoice_lines (invoice_id, description, amount, price, tax_rate, row_order)
    SELECT i.id, d.description, d.amount, d.price, 21, d.row_order
    FROM i, (VALUES ('Consultancy: architecture review and workshop', 8, 95.00, 1),
                    ('Managed hosting, premium tier, monthly', 1, 249.00, 2),
                    ('Support hours (business days)', 4, 65.00, 3)) AS d(description, amount, price, row_order)"""


def fill_invoices(conn, customer, total, batch=5000):
    """Invoices with their events, fanned out into pending deliveries (run while the worker is away)."""
    left = total
    while left > 0:
        conn.execute(FILL_INVOICES, {"customer": customer, "count": min(batch, left)})
        left -= batch
    fan_out_all(conn)


def fan_out_all(conn):
    """Runs billhook.fan_out, as the worker does each round, until every event has its deliveries."""
    created = 0
    while True:
        events, deliveries = conn.execute("SELECT events, deliveries FROM billhook.fan_out(1000)").fetchone()
        created += deliveries
        if events < 1000:
            return created


def drain_rate(conn, webhook_id=None):
    """Deliveries per second between the first attempt and the last acknowledgement."""
    count, seconds = conn.execute(
        "SELECT count(DISTINCT d.id), extract(epoch FROM max(d.delivered_at) - min(a.attempted_at))"
        " FROM billhook.deliveries d JOIN billhook.delivery_attempts a ON a.delivery_id = d.id"
        " WHERE d.status = 'succeeded' AND (%(hook)s::bigint IS NULL OR d.webhook_id = %(hook)s)",
        {"hook": webhook_id}).fetchone()
    return count / float(seconds)


def fanned_out(conn):
    """Every event has its delivery (for runs where one webhook subscribes to every event)."""
    return not conn.execute("SELECT EXISTS (SELECT 1 FROM billhook.events e"
                            " WHERE NOT EXISTS (SELECT 1 FROM billhook.deliveries d WHERE d.event_id = e.id))").fetchone()[0]


def drained(conn, webhook_id=None):
    """Nothing pending (any more) for the webhook, or at all; cheap: reads the partial due index."""
    return not conn.execute(
        "SELECT EXISTS (SELECT 1 FROM billhook.deliveries WHERE status = 'pending'"
        " AND (%(hook)s::bigint IS NULL OR webhook_id = %(hook)s))", {"hook": webhook_id}).fetchone()[0]


def pgbench(script, clients, seconds, rate=None, log_dir=None):
    """Runs script; returns the transactions per second. log_dir: where pgbench writes its
    per-transaction log (-l)."""
    path = Path(tempfile.mkstemp(suffix=".sql")[1])
    path.write_text(script)
    command = [str(PG_BIN / "pgbench"), "-n", "-f", str(path), "-c", str(clients), "-j", str(min(clients, 2)),
               "-T", str(seconds), "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "bench"]
    if rate:
        command += ["-R", str(rate)]
    if log_dir:
        command += ["-l"]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=log_dir).stdout
    path.unlink()
    tps = [line for line in output.splitlines() if line.startswith("tps")][0]
    return float(tps.split("=")[1].split()[0])


def receiver_ceiling(bench, conn, customer):
    hook = webhook(conn, "/sample", ["invoice.created"])
    bench.resume_worker()
    fill_invoices(conn, customer, 1)
    bench.wait(lambda: drained(conn), "sample push")
    body = conn.execute(
        "SELECT json_build_object('administration_id', '1', 'webhook_id', %s::text, 'webhook_token', w.token,"
        " 'entity_type', e.entity_type, 'entity_id', e.entity_id::text, 'state', e.state, 'action', e.event_type,"
        " 'event_id', e.id::text, 'occurred_at', billhook.json_time(e.occurred_at), 'entity', e.entity)::text"
        " FROM billhook.events e, billhook.webhooks w WHERE w.id = %s ORDER BY e.id DESC LIMIT 1",
        (hook, hook)).fetchone()[0]
    entity_bytes = conn.execute("SELECT octet_length(entity::text) FROM billhook.events ORDER BY id DESC LIMIT 1").fetchone()[0]
    payload = Path(bench.directory, "payload.json")
    payload.write_text(body)
    threads = int(conn.execute("SHOW billhook.max_in_flight_per_webhook").fetchone()[0])
    rate = float(subprocess.run([str(RECEIVER), "blast", RECEIVER_URL + "/ceiling", str(payload), str(threads), "5"],
                                check=True, capture_output=True, text=True).stdout)
    bench.result("Receiver ceiling (same payload, keep-alive, "
                 f"{threads} connections = the per-webhook cap)", f"{rate:,.0f} req/s", "",
                 f"push body {len(body)} B, entity {entity_bytes} B")
    reset(conn)
    return rate


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User and system CPU time of a process and its threads so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU time per delivery, a figure a shared, noisy machine blurs less than a rate: the worker
    process (its SPI statements run in it: it uses no other backend), and all of the cluster's
    processes (with the WAL writer, checkpointer and autovacuum its writes cause)."""

    def __init__(self, bench, worker_pid):
        self.bench, self.worker_pid = bench, worker_pid
        self.worker = cpu_seconds(worker_pid)
        self.cluster = {pid: cpu_seconds(pid) for pid in bench.cluster_pids()}

    def per_delivery_us(self, deliveries):
        worker = cpu_seconds(self.worker_pid) - self.worker
        cluster = sum(cpu_seconds(pid) - self.cluster.get(pid, 0.0) for pid in self.bench.cluster_pids())
        return worker * 1e6 / deliveries, cluster * 1e6 / deliveries


def p1_drain(bench, conn, customer, ceiling, base=RECEIVER_URL):
    """P1 to the plain HTTP receiver, or with base=TLS_RECEIVER_URL to the same receiver over TLS."""
    count = scaled(50_000)
    over_tls = base == TLS_RECEIVER_URL
    hook = webhook(conn, "/p1", ["invoice.created"], base)
    bench.pause_worker()
    log(f"P1: filling {count} deliveries")
    fill_invoices(conn, customer, count)
    started = time.time()
    bench.resume_worker()
    meter = CpuMeter(bench, bench.worker_pid())
    bench.wait(lambda: drained(conn), "P1 drain")
    wall = time.time() - started
    worker_us, cluster_us = meter.per_delivery_us(count)
    lost = count - int(conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'").fetchone()[0])
    arrived = len({line.split(",")[0] for line in receiver_get("/dump", base).splitlines()})
    rate = drain_rate(conn, hook)
    name = f"P1 drain{' over HTTPS (TLS 1.3, keep-alive)' if over_tls else ''}: {count:,} pending deliveries to one endpoint"
    bench.result(name, f"{rate:,.0f} deliveries/s", "reported" if over_tls else "≥ 25,000/s, ≤ 40 µs per delivery in the cluster",
                 f"{rate / ceiling:.0%} of the receiver's ceiling; CPU per delivery {worker_us:.0f} µs in the worker, "
                 f"{cluster_us:.0f} µs in the whole cluster; {wall:.1f} s wall incl. worker restart; "
                 f"lost {lost}, distinct events received {arrived:,}")
    reset(conn)
    return rate


def p1_two_workers(bench, conn, customer, p1_rate):
    """P1 split over two worker processes: half the deliveries in a second database, both databases in
    billhook.databases, so each worker drains its own half (disjoint by construction). The rate is
    all deliveries over the span from the first attempt in either to the last acknowledgement."""
    half = scaled(50_000) // 2
    with bench.connect("postgres") as admin:
        admin.execute("CREATE DATABASE bench2")
    bench.pause_worker()
    with bench.connect("bench2") as other:
        other.execute("CREATE EXTENSION billhook")
        other_customer = other.execute("INSERT INTO billhook.customers (company_name) VALUES ('Second B.V.')"
                                       " RETURNING id").fetchone()[0]
        halves = [(conn, webhook(conn, "/x2a", ["invoice.created"]), customer),
                  (other, webhook(other, "/x2b", ["invoice.created"]), other_customer)]
        log(f"P1 with two workers: filling {half} deliveries in each of two databases")
        for database, _, owner in halves:
            fill_invoices(database, owner, half)
        meter = CpuMeter(bench, worker_pid=None)  # both workers start after this: only the cluster's figure counts
        bench.configure(databases="bench, bench2")
        bench.wait(lambda: all(drained(database) for database, _, _ in halves), "P1 drain by two workers")
        _, cluster_us = meter.per_delivery_us(2 * half)
        spans = [database.execute(
            "SELECT extract(epoch FROM min(a.attempted_at))::float8, extract(epoch FROM max(d.delivered_at))::float8,"
            " count(DISTINCT d.id) FILTER (WHERE d.status = 'succeeded')"
            " FROM billhook.deliveries d JOIN billhook.delivery_attempts a ON a.delivery_id = d.id").fetchone()
            for database, _, _ in halves]
        delivered = sum(count for _, _, count in spans)
        rate = delivered / (max(last for _, last, _ in spans) - min(first for first, _, _ in spans))
        with bench.connect("postgres") as admin:
            admin.execute("ALTER SYSTEM RESET billhook.databases")
            admin.execute("SELECT pg_reload_conf()")
    bench.resume_worker()
    with bench.connect("postgres") as admin:
        admin.execute("DROP DATABASE bench2 WITH (FORCE)")
    bench.result(f"P1 with two workers: {2 * half:,} pending deliveries, half in each of two databases",
                 f"{rate:,.0f} deliveries/s", "1 vs 2 workers",
                 f"{rate / p1_rate:.2f} of P1 (one worker) in this run; lost {2 * half - delivered}; CPU per delivery "
                 f"{cluster_us:.0f} µs in the whole cluster (both workers)")
    reset(conn)


def p1_workers(bench, conn, customer):
    """billhook.workers = 1 against 2 in one database: 50,000 pending deliveries to two webhooks (with two
    workers, one each: a webhook's pushes go through the worker its id modulo 2 names), drained once
    with each setting in the same run."""
    count = scaled(50_000)
    drains = {}
    for workers in (1, 2):
        hooks = [webhook(conn, f"/p1w{n}", ["invoice.created"]) for n in range(2)]
        assert {hook % 2 for hook in hooks} == {0, 1}
        bench.pause_worker()
        log(f"P1 with billhook.workers = {workers}: filling {count} deliveries to two webhooks")
        fill_invoices(conn, customer, count // 2)
        bench.configure(workers=workers)
        meter = CpuMeter(bench, worker_pid=None)  # the workers start after this: only the cluster's figure counts
        bench.resume_worker()
        bench.wait(lambda: drained(conn), f"P1 drain by {workers} workers")
        _, cluster_us = meter.per_delivery_us(count)
        delivered = conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'").fetchone()[0]
        drains[workers] = (drain_rate(conn), cluster_us, count - delivered)
        reset(conn)
    bench.configure(workers=1)
    (one, one_us, one_lost), (two, two_us, two_lost) = drains[1], drains[2]
    bench.result(f"P1 with billhook.workers = 2: {count:,} pending deliveries to two webhooks in one database",
                 f"{two:,.0f} deliveries/s", "1 vs 2 workers",
                 f"{two / one:.2f} of the same with one worker ({one:,.0f}/s) in this run; CPU per delivery in the "
                 f"whole cluster {two_us:.0f} µs with two, {one_us:.0f} µs with one; lost {two_lost} and {one_lost}")


def p1_end_to_end(bench, conn, customer):
    """P1e: what a user importing invoices sees. One INSERT commits 30,000 invoices (one event each,
    1.5 kB of entity) while the worker runs; timed from the statement's start and from its commit
    to the last acknowledgement, with the fan-out's end in between (all from the database's clock)."""
    count = scaled(30_000)
    clock = "SELECT extract(epoch FROM clock_timestamp())::float8"
    # The same statement with billhook's triggers off, for the commit's ratio to plain Postgres.
    conn.execute("ALTER TABLE billhook.invoices DISABLE TRIGGER USER")
    conn.execute("ALTER TABLE billhook.invoice_lines DISABLE TRIGGER USER")
    try:
        plain_start = conn.execute(clock).fetchone()[0]
        conn.execute(FILL_INVOICES, {"customer": customer, "count": count})
        plain_seconds = conn.execute(clock).fetchone()[0] - plain_start
    finally:
        conn.execute("ALTER TABLE billhook.invoices ENABLE TRIGGER USER")
        conn.execute("ALTER TABLE billhook.invoice_lines ENABLE TRIGGER USER")
    reset(conn)
    webhook(conn, "/p1e", ["invoice.created"])
    worker = bench.worker_pid()
    meter = CpuMeter(bench, worker)
    start = conn.execute(clock).fetchone()[0]
    conn.execute(FILL_INVOICES, {"customer": customer, "count": count})
    committed = conn.execute(clock).fetchone()[0]
    bench.wait(lambda: conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'")
               .fetchone()[0] == count, "P1e deliveries")
    fanned_out, acknowledged = conn.execute(
        "SELECT extract(epoch FROM max(created_at))::float8, extract(epoch FROM max(delivered_at))::float8"
        " FROM billhook.deliveries").fetchone()
    worker_us, cluster_us = meter.per_delivery_us(count)
    assert bench.worker_pid() == worker, "the worker ran throughout"
    from_commit = count / (acknowledged - committed)
    bench.result(f"P1e end to end: {count:,} events committed in one INSERT, one subscribed webhook",
                 f"{from_commit:,.0f} deliveries/s from the commit; commit {plain_seconds / (committed - start):.2f}"
                 " of plain", "≥ 15,000/s from the statement's start; commit ≥ 0.6 of plain",
                 f"commit {count / (committed - start):,.0f} events/s ({committed - start:.2f} s; the same INSERT "
                 f"without billhook's triggers {plain_seconds:.2f} s); fan-out done "
                 f"{fanned_out - committed:.2f} s and last push acknowledged {acknowledged - committed:.2f} s after "
                 f"the commit; {count / (acknowledged - start):,.0f}/s from the statement's start; CPU per "
                 f"delivery (commit included) {worker_us:.0f} µs in the worker, {cluster_us:.0f} µs in the cluster")
    reset(conn)


def p1_ordered(bench, conn, customer, p1_rate):
    """P1 with ordering by entity: 1,000 invoices with 50 events each (created, then 49 updates, one
    transaction per round of updates, so the entities' events interleave)."""
    entities, rounds = scaled(1_000), 50
    count = entities * rounds
    hook = webhook(conn, "/p1o", ["invoice.created", "invoice.updated"], ordering="entity")
    bench.pause_worker()
    log(f"P1 ordered: filling {count} deliveries about {entities} invoices")
    conn.execute(FILL_INVOICES, {"customer": customer, "count": entities})
    for n in range(rounds - 1):
        conn.execute("UPDATE billhook.invoices SET reference = 'Benchmark, round ' || %s", (n,))
    fan_out_all(conn)
    started = time.time()
    bench.resume_worker()
    bench.wait(lambda: drained(conn), "P1 ordered drain")
    wall = time.time() - started
    lost = count - int(conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'").fetchone()[0])
    # By arrival time, each invoice's event ids must be increasing.
    entity_of = dict(conn.execute("SELECT e.id, e.entity_id FROM billhook.events e").fetchall())
    arrivals = sorted((int(at), int(event)) for event, at in
                      (line.split(",") for line in receiver_get("/dump").splitlines()))
    last_seen, out_of_order = {}, 0
    for _, event in arrivals:
        entity = entity_of.get(event)
        if entity is not None:
            out_of_order += last_seen.get(entity, -1) > event
            last_seen[entity] = event
    rate = drain_rate(conn, hook)
    bench.result(f"P1 ordered by entity: {count:,} pending deliveries about {entities:,} invoices, one endpoint",
                 f"{rate:,.0f} deliveries/s", "≥ 0.8 of P1",
                 f"{rate / p1_rate:.2f} of P1; {wall:.1f} s wall incl. worker restart; lost {lost}, "
                 f"pushes out of order {out_of_order}")
    reset(conn)
    return rate


def committed_at_rate(customer, rate, seconds, tag, clients=4):
    """Single-row invoice INSERTs, each its own transaction, by pgbench at `rate` per second (Poisson
    arrivals), each invoice's reference `tag` and its client. Returns the commits per second achieved,
    per (client, n) the moment (µs since the epoch) pgbench had the acknowledgement of that client's
    n-th committed transaction (from its per-transaction log; a client's transactions run one after
    another, so its n-th invoice by id is its n-th committed one), and how many transactions failed."""
    with tempfile.TemporaryDirectory() as logs:
        script = f"INSERT INTO billhook.invoices (customer_id, reference) VALUES ({customer}, '{tag} :client_id');\n"
        achieved = pgbench(script, clients=clients, seconds=seconds, rate=rate, log_dir=logs)
        lines = [line.split() for log_file in Path(logs).iterdir() for line in log_file.read_text().splitlines()]
    acknowledged, committed, failed = {}, {}, 0
    for client, transaction, elapsed, _, epoch, micros in sorted((l[:6] for l in lines), key=lambda l: (int(l[0]), int(l[1]))):
        if not elapsed.isdigit():  # "failed" or "skipped": no invoice
            failed += 1
            continue
        n = committed[client] = committed.get(client, 0) + 1
        acknowledged[(int(client), n)] = int(epoch) * 1_000_000 + int(micros)
    return achieved, acknowledged, failed


def p2_latency(bench, conn, customer):
    """Commit → receipt. Measured from the commit's acknowledgement to the application (what a user
    sees: COMMIT returned, how long until the receiver has the push) and, as before, from the event's
    write at commit, before the commit's WAL flush."""
    webhook(conn, "/p2", ["invoice.created"])
    bench.resume_worker()
    seconds = max(5, int(10 * SCALE))
    for rate in (200, 1000):
        receiver_get("/dump")
        conn.execute("TRUNCATE billhook.delivery_attempts, billhook.deliveries, billhook.events CASCADE")
        achieved, acknowledged, failed = committed_at_rate(customer, rate, seconds, f"p2-{rate}")
        invoices = conn.execute("SELECT id, split_part(reference, ' ', 2)::int,"
                                " row_number() OVER (PARTITION BY reference ORDER BY id)"
                                " FROM billhook.invoices WHERE reference LIKE %s", (f"p2-{rate} %",)).fetchall()
        bench.wait(lambda: fanned_out(conn) and drained(conn), "P2 drain")
        time.sleep(0.5)
        arrivals = receiver_get("/dump")
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS arrivals (event_id bigint, at_us bigint)")
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS acknowledged (invoice_id bigint, at_us bigint)")
            cur.execute("TRUNCATE arrivals, acknowledged")
            with cur.copy("COPY arrivals FROM STDIN (FORMAT csv)") as copy:
                copy.write(arrivals)
            with cur.copy("COPY acknowledged FROM STDIN") as copy:
                # pgbench does not log the transactions still running when its time is up.
                for invoice, client, transaction in invoices:
                    if (client, transaction) in acknowledged:
                        copy.write_row((invoice, acknowledged[(client, transaction)]))
        # A commit is acknowledged after its event was written: anything else is a mismatched log.
        assert conn.execute("SELECT count(*) FROM acknowledged k JOIN billhook.events e ON e.entity_id = k.invoice_id"
                            " AND e.event_type = 'invoice.created'"
                            " WHERE k.at_us < extract(epoch FROM e.occurred_at) * 1e6").fetchone()[0] == 0
        p50, p95, p99, n, written_p50, written_p99 = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY from_ack)"
            "       || count(*)::float8"
            "       || percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY from_write)"
            " FROM (SELECT (a.at_us - k.at_us) / 1000.0 AS from_ack,"
            "              (a.at_us - extract(epoch FROM e.occurred_at) * 1e6) / 1000 AS from_write"
            "       FROM arrivals a JOIN billhook.events e ON e.id = a.event_id"
            "       JOIN acknowledged k ON k.invoice_id = e.entity_id) x").fetchone()[0]
        # Where the time goes, as medians: the event's write at commit → the worker round that
        # fanned it out (its transaction's start) → the sender's request → the receiver.
        to_round, in_round, on_wire = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM d.created_at - e.occurred_at)),"
            "       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t.attempted_at - d.created_at)),"
            "       percentile_cont(0.5) WITHIN GROUP (ORDER BY a.at_us / 1e6 - extract(epoch FROM t.attempted_at))"
            " FROM arrivals a JOIN billhook.events e ON e.id = a.event_id"
            " JOIN billhook.deliveries d ON d.event_id = e.id"
            " JOIN billhook.delivery_attempts t ON t.delivery_id = d.id AND t.attempt = 1").fetchone()
        target = "p50 ≤ 1 ms, p99 ≤ 5 ms" if rate == 1000 else ""
        bench.result(f"P2 latency commit → received at {rate}/s", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms",
                     target, f"from the commit's acknowledgement to the application; {int(n):,} pushes at "
                     f"{achieved:,.0f} commits/s (pgbench, 4 clients, {failed} failed); from the event's write at commit, "
                     f"before its WAL flush: p50 {written_p50:.1f} ms, p99 {written_p99:.1f} ms; medians: event "
                     f"written → worker round {float(to_round) * 1000:.2f} ms (the commit's WAL flush, the "
                     f"wake-up), round → request {float(in_round) * 1000:.2f} ms, request → received "
                     f"{float(on_wire) * 1000:.2f} ms")
    reset(conn)


def p3_emit_overhead(bench, conn, customer):
    webhook(conn, "/p3", ["invoice.created"])
    bench.pause_worker()
    seconds = max(4, int(5 * SCALE))
    single = f"INSERT INTO billhook.invoices (customer_id, reference) VALUES ({customer}, 'pgbench');\n"
    ten_lines = (f"BEGIN;\nINSERT INTO billhook.invoices (customer_id, reference) VALUES ({customer}, 'pgbench');\n"
                 + "".join("INSERT INTO billhook.invoice_lines (invoice_id, description, price, tax_rate)"
                           f" VALUES (currval('billhook.invoices_id_seq'), 'line {n}', 10, 21);\n" for n in range(10))
                 + "COMMIT;\n")
    conn.execute((ROOT / "bench" / "peers" / "hasura_event_trigger.sql").read_text())
    # The machine is shared: interleave runs with billhook's triggers, with none, and with the peer's
    # (a Hasura event trigger on the same tables), compare medians.
    for name, script, tables in (("single-row INSERT", single, ["invoices"]),
                                 ("10-line invoice transaction", ten_lines, ["invoices", "invoice_lines"])):
        runs = {"billhook": [], "plain": [], "hasura": []}
        modes = list(runs)
        for round_number in range(3):
            # Each mode takes each place in the order once, so a drift of the machine favours none.
            for mode in modes[round_number:] + modes[:round_number]:
                for table in tables:
                    # One statement: ENABLE TRIGGER USER enables the peer's trigger too.
                    conn.execute(f"ALTER TABLE billhook.{table} {'ENABLE' if mode == 'billhook' else 'DISABLE'}"
                                 f" TRIGGER USER, {'ENABLE' if mode == 'hasura' else 'DISABLE'} TRIGGER hasura_peer_insert")
                runs[mode].append(pgbench(script, clients=4, seconds=seconds))
        for table in tables:
            conn.execute(f"ALTER TABLE billhook.{table} ENABLE TRIGGER USER, DISABLE TRIGGER hasura_peer_insert")
        billhook, plain, hasura = (statistics.median(runs[mode]) for mode in ("billhook", "plain", "hasura"))
        target = "≥ 0.8, above the peer" if name == "single-row INSERT" else "≥ 0.9"
        bench.result(f"P3 emit overhead, {name} (4 clients, one subscribed webhook)",
                     f"{billhook / plain:.2f} of plain; Hasura-style event trigger {hasura / plain:.2f}", target,
                     f"median of 3 interleaved runs each: {billhook:,.0f} tps with billhook, {plain:,.0f} tps with"
                     f" no trigger, {hasura:,.0f} tps with the peer's (bench/peers/hasura_event_trigger.sql)"
                     " instead of billhook's")
        conn.execute("TRUNCATE billhook.delivery_attempts, billhook.deliveries, billhook.events,"
                     " billhook.invoice_lines, billhook.invoices, hasura_peer.event_log CASCADE")
    conn.execute("DROP SCHEMA hasura_peer CASCADE")
    reset(conn)


def p4_isolation(bench, conn, customer, p1_rate):
    count = scaled(50_000)
    dead = webhook(conn, "/blackhole", ["customer.created"])
    healthy = webhook(conn, "/p4", ["invoice.created"])
    bench.pause_worker()
    conn.execute("INSERT INTO billhook.customers (company_name) SELECT 'dead ' || n FROM generate_series(1, %s) n",
                 (scaled(10_000),))
    fill_invoices(conn, customer, count)
    bench.resume_worker()
    bench.wait(lambda: drained(conn, healthy), "P4 healthy drain")
    rate = drain_rate(conn, healthy)
    bench.result(f"P4 isolation: healthy endpoint ({count:,}) next to one that never answers ({scaled(10_000):,} backlog)",
                 f"{rate / p1_rate:.2f} of P1", "≥ 0.95", f"{rate:,.0f} deliveries/s")
    conn.execute("SELECT billhook.delete_webhook(%s)", (dead,))
    reset(conn)


def p5_backlog(bench, conn, customer):
    invoices = scaled(100_000)
    hooks = [webhook(conn, f"/p5-{n}", ["invoice.created"]) for n in range(10)]
    bench.pause_worker()
    log(f"P5: filling {invoices * len(hooks):,} deliveries")
    fill_invoices(conn, customer, invoices)
    conn.execute("ANALYZE billhook.events, billhook.deliveries")
    stats_pending = query_ms(conn, "SELECT count(*) FROM billhook.webhook_stats()")
    bench.resume_worker()
    pid = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'").fetchone()[0]
    # The worker's own memory is its anonymous RSS; VmHWM also counts every shared buffer it touched.
    peak_private = 0

    def done():
        nonlocal peak_private
        peak_private = max(peak_private, memory_kib(pid, "RssAnon"))
        return drained(conn)

    bench.wait(done, "P5 drain", timeout=1800)
    high_water = memory_kib(pid, "VmHWM")
    tenths = conn.execute(
        "WITH ranked AS (SELECT delivered_at, ntile(10) OVER (ORDER BY delivered_at) AS tenth FROM billhook.deliveries)"
        " SELECT tenth, count(*) / extract(epoch FROM max(delivered_at) - min(delivered_at))"
        " FROM ranked GROUP BY tenth ORDER BY tenth").fetchall()
    first, last = float(tenths[0][1]), float(tenths[-1][1])
    total = invoices * len(hooks)
    bench.result(f"P5 backlog: {total:,} pending deliveries (10 webhooks)", f"last/first tenth {last / first:.2f}",
                 "≥ 0.9", f"first tenth {first:,.0f}/s, last {last:,.0f}/s, overall {drain_rate(conn):,.0f}/s")
    bench.result("P5 worker peak RSS (private)", f"{peak_private / 1024:.0f} MiB", "≤ 64 MiB",
                 f"largest RssAnon seen while draining; VmHWM {high_water / 1024:.0f} MiB includes the shared buffers it read")
    conn.execute("ANALYZE billhook.events, billhook.deliveries, billhook.delivery_attempts")
    window = conn.execute("SELECT min(occurred_at), now() FROM billhook.events").fetchone()
    stats_all = query_ms(conn, "SELECT count(*) FROM billhook.webhook_stats(%s, %s)", window)
    stats_recent = query_ms(conn, "SELECT count(*) FROM billhook.webhook_stats(now() - interval '1 minute')")
    report_all = query_ms(conn, "SELECT count(*) FROM billhook.delivery_report(%s, %s, '10 seconds')", window)
    report_one = query_ms(conn, "SELECT count(*) FROM billhook.delivery_report(%s, %s, '10 seconds', %s)",
                          (*window, hooks[0]))
    bench.result(f"Reporting at {total:,} deliveries (after P5)", f"webhook_stats {stats_all:,.0f} ms",
                 "reported",
                 f"webhook_stats over the window holding all of them {stats_all:,.0f} ms, over the last minute "
                 f"{stats_recent:,.0f} ms, while all were pending (the backlog part) "
                 f"{stats_pending:,.0f} ms; delivery_report in 10 s buckets over all {report_all:,.0f} ms, "
                 f"for one webhook {report_one:,.0f} ms")
    del hooks
    reset(conn)


# One day of the outbox at scale, written set-based as a day of the worker would have left it: each
# window's events (old: transaction id 0, which the fan-out never takes again) and their succeeded
# deliveries to every webhook, with one attempt each.
P6_WINDOW = """
    WITH e AS (
        INSERT INTO billhook.events (id, administration_id, event_type, entity_type, entity_id, state, entity,
                                     occurred_at, transaction_id)
        SELECT billhook.window_start(%(window)s) + n, 1, 'invoice.created', 'Invoice', n, 'draft', %(entity)s::jsonb,
               now() - make_interval(days => %(days_ago)s) + make_interval(secs => n * 86000.0 / %(events)s), '0'
        FROM generate_series(1, %(events)s) AS n
        RETURNING id, occurred_at),
    d AS (
        INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key, status, attempts, next_attempt_at,
                                         last_attempt_at, last_http_status, last_duration_ms, delivered_at, created_at)
        SELECT e.id, w.id, gen_random_uuid(), 'succeeded', 1, e.occurred_at, e.occurred_at + interval '5 ms', 200,
               2, e.occurred_at + interval '7 ms', e.occurred_at
        FROM e CROSS JOIN unnest(%(hooks)s::bigint[]) AS w(id)
        RETURNING id, event_id, webhook_id, last_attempt_at)
    INSERT INTO billhook.delivery_attempts (delivery_id, event_id, webhook_id, attempt, attempted_at, duration_ms,
                                            http_status, succeeded)
    SELECT d.id, d.event_id, d.webhook_id, 1, d.last_attempt_at, 2, 200, true FROM d"""


def wal_bytes(conn, since):
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (since,)).fetchone()[0])


def outbox_bytes(conn):
    return int(conn.execute(
        "SELECT sum(pg_total_relation_size(t.relid)) FROM unnest('{billhook.events, billhook.deliveries,"
        " billhook.delivery_attempts}'::regclass[]) AS p(parent), pg_partition_tree(p.parent) AS t"
        " WHERE t.isleaf").fetchone()[0])


def once_ms(conn, sql, params=()):
    """How long a statement that changes something takes, run once, in milliseconds."""
    started = time.perf_counter()
    conn.execute(sql, params)
    return (time.perf_counter() - started) * 1000


def timed_drain(bench, conn, customer, count, path, database="bench"):
    """Fills count pending deliveries to a webhook of their own while the worker is away, drains them
    (conn is a connection to database); returns the rate, the CPU per delivery in the worker and in
    the cluster, and what was lost."""
    hook = webhook(conn, path, ["invoice.created"])
    bench.pause_worker()
    log(f"{path}: filling {count} deliveries")
    fill_invoices(conn, customer, count)
    # What was written before is on disk, as a history long since written would be: the drain does
    # not pay for flushing it.
    conn.execute("CHECKPOINT")
    if STATEMENTS_DIR:
        Path(STATEMENTS_DIR).mkdir(parents=True, exist_ok=True)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    bench.resume_worker(database)
    meter = CpuMeter(bench, bench.worker_pid(database))
    perf = None
    if PERF_DIR:
        perf = subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(bench.worker_pid(database)),
                                 "-o", str(Path(PERF_DIR) / f"{path.strip('/')}.data")])
    try:
        bench.wait(lambda: drained(conn, hook), f"{path} drain")
        worker_us, cluster_us = meter.per_delivery_us(count)
    finally:
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
    delivered = conn.execute("SELECT count(*) FROM billhook.deliveries WHERE webhook_id = %s AND status = 'succeeded'",
                             (hook,)).fetchone()[0]
    if STATEMENTS_DIR:
        rows = conn.execute(
            "SELECT calls, round(total_plan_time::numeric, 1), round(total_exec_time::numeric, 1),"
            " round(((total_plan_time + total_exec_time) * 1000 / %s)::numeric, 2) AS us_per_delivery,"
            " regexp_replace(left(query, 160), '\\s+', ' ', 'g') FROM pg_stat_statements"
            " ORDER BY total_plan_time + total_exec_time DESC", (count,)).fetchall()
        Path(STATEMENTS_DIR, f"{path.strip('/')}.tsv").write_text(
            "calls\tplan ms\texec ms\tµs per delivery\tstatement\n"
            + "".join("\t".join(str(v) for v in row) + "\n" for row in rows))
    rate = drain_rate(conn, hook)
    # A drain after this one delivers its own invoices alone.
    conn.execute("SELECT billhook.disable_webhook(%s)", (hook,))
    return rate, worker_us, cluster_us, count - delivered


# Each side of P6's comparison drains this many times and is judged by its median drain: one drain
# of a few seconds on this shared machine can be off by more than the difference measured.
P6_DRAINS = 3


def median_drain(drains):
    """The drain of median rate among timed_drain results, with its own CPU figures."""
    return sorted(drains, key=lambda d: d[0])[len(drains) // 2]


def p6_partitioned(bench, conn, customer):
    """P6: the outbox at 20 million deliveries (2 million events to 10 webhooks, an attempt each) over
    30 daily windows: P1 on a fresh 50,000 against P1 on an empty outbox in another database of the
    same cluster, the drains of either alternated (the median of three each), one day dropped as a
    window against the same rows of another day deleted, and autovacuum at the end."""
    days, hooks_count, count = 30, 10, scaled(50_000)
    bench.configure(retention=0)  # the drops below are the bench's, not the worker's
    with bench.connect("postgres") as admin:
        admin.execute("CREATE DATABASE bench_p6_empty")
    empty_conn = bench.connect("bench_p6_empty")
    empty_conn.execute("CREATE EXTENSION billhook")
    columns = "company_name, email, address1, zipcode, city, country, phone"
    empty_customer = empty_conn.execute(
        f"INSERT INTO billhook.customers ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        conn.execute(f"SELECT {columns} FROM billhook.customers WHERE id = %s", (customer,)).fetchone()).fetchone()[0]
    # The written events carry the entity P1's invoices do.
    webhook(conn, "/p6-entity", ["invoice.created"])
    bench.pause_worker()
    fill_invoices(conn, customer, 1)
    entity = conn.execute("SELECT entity::text FROM billhook.events WHERE event_type = 'invoice.created'"
                          " LIMIT 1").fetchone()[0]
    reset(conn)
    # The history's webhooks listen to an event the drain below never emits: it delivers its 50,000 to
    # one webhook, as the empty run does.
    hooks = [webhook(conn, f"/p6-{n}", ["invoice.paid"]) for n in range(hooks_count)]
    events = -(-scaled(2_000_000) // days)  # at least 2 million in all: 20,000,100 deliveries at scale 1
    bench.pause_worker()
    log(f"P6: writing {events * days * hooks_count:,} deliveries over {days} windows")
    started = time.time()
    # The replica trigger that judges restored events is not the bench's: the rows are written as old.
    conn.execute("ALTER TABLE billhook.events DISABLE TRIGGER mark_event_restored")
    first = conn.execute("SELECT billhook.current_window()").fetchone()[0] + 1
    for k in range(first, first + days):
        days_ago = first + days - k
        with conn.transaction():
            conn.execute("SELECT billhook.add_outbox_window(%s)", (k,))
            conn.execute(P6_WINDOW, {"window": k, "entity": entity, "days_ago": days_ago, "events": events,
                                     "hooks": hooks})
            # The last move an hour ago: the claims read the windows current within the last
            # minute too (billhook.pending_from), which a day's outbox would not hold.
            conn.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - make_interval(days => %s, hours => 1),"
                         " closed_at = now() - make_interval(days => %s, hours => 1) WHERE window_number = %s",
                         (days_ago, days_ago - 1, k))
    conn.execute("ALTER TABLE billhook.events ENABLE REPLICA TRIGGER mark_event_restored")
    current = first + days
    conn.execute("SELECT billhook.add_outbox_window(%s)", (current,))
    conn.execute("SELECT setval('billhook.events_id_seq', billhook.window_start(%s), false)", (current,))
    conn.execute("UPDATE billhook.outbox_partitions SET opened_at = now() - interval '1 hour' WHERE window_number = %s",
                 (current,))
    # The window the setup wrote into (its rows are gone) left as the history's first window
    # opened: the worker would otherwise close it at its first upkeep after the ids' jump above, and
    # for the minute after that the claims would read every window from it on (billhook.pending_from),
    # as a day's outbox never has them do.
    conn.execute("UPDATE billhook.outbox_partitions SET opened_at = least(opened_at, now() - make_interval(days => %s, hours => 1)),"
                 " closed_at = now() - make_interval(days => %s, hours => 1) WHERE window_number < %s",
                 (days + 1, days, first))
    conn.execute("VACUUM (ANALYZE) billhook.events, billhook.deliveries, billhook.delivery_attempts")
    written = time.time() - started
    windows, deliveries = conn.execute(
        "SELECT (SELECT count(*) FROM billhook.outbox_partitions), (SELECT count(*) FROM billhook.deliveries)"
    ).fetchone()
    floor = conn.execute("SELECT billhook.pending_from() = billhook.window_start(%s)", (current,)).fetchone()[0]
    assert floor, "the claims read the current window alone, as on a day's outbox"
    # Alternated, so that the machine's drift over the run weighs on both sides alike.
    empties, fulls = [], []
    for n in range(1, P6_DRAINS + 1):
        empties.append(timed_drain(bench, empty_conn, empty_customer, count, f"/p6-empty-{n}", "bench_p6_empty"))
        fulls.append(timed_drain(bench, conn, customer, count, f"/p6-full-{n}"))
    bench.pause_worker()
    empty_conn.close()
    with bench.connect("postgres") as admin:
        admin.execute("DROP DATABASE bench_p6_empty WITH (FORCE)")
    bench.resume_worker()
    empty, full = median_drain(empties), median_drain(fulls)

    def rates(drains):
        return ", ".join(f"{d[0]:,.0f}" for d in drains)

    bench.result(f"P6 drain with {deliveries:,} deliveries in {windows} windows: {count:,} pending deliveries",
                 f"{full[0] / empty[0]:.2f} of the same on an empty outbox", "≥ 0.9",
                 f"medians of {P6_DRAINS} drains each: {full[0]:,.0f}/s ({rates(fulls)}) against {empty[0]:,.0f}/s "
                 f"({rates(empties)}) in this run, alternated; CPU per delivery in the worker "
                 f"{full[1]:.0f} µs against {empty[1]:.0f} µs, in the cluster {full[2]:.0f} µs against "
                 f"{empty[2]:.0f} µs; lost {sum(d[3] for d in fulls)} and {sum(d[3] for d in empties)}; the rows "
                 f"written set-based in {written:,.0f} s (vacuum and analyze included)")

    # One day goes as a window; the same rows of the next day are deleted row by row, then vacuumed.
    # Window 0, closed before the history's first and empty since the setup, goes first, untimed.
    assert conn.execute("SELECT billhook.drop_outbox_window('1 day')").fetchone()[0] == 0, "window 0 dropped first"
    before_size, lsn = outbox_bytes(conn), conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    day_rows = conn.execute("SELECT count(*) FROM billhook.deliveries WHERE event_id >= billhook.window_start(%s)"
                            " AND event_id < billhook.window_start(%s)", (first, first + 1)).fetchone()[0]
    dropped_ms = once_ms(conn, "SELECT billhook.drop_outbox_window('1 day')")
    assert not conn.execute("SELECT EXISTS (SELECT FROM billhook.outbox_partitions WHERE window_number = %s)",
                            (first,)).fetchone()[0], "the oldest window was dropped"
    dropped_wal, after_drop = wal_bytes(conn, lsn), outbox_bytes(conn)
    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    bounds = (first + 1, first + 2)
    deleted_ms = once_ms(conn, "WITH d AS (DELETE FROM billhook.deliveries WHERE event_id >= billhook.window_start(%s)"
                                " AND event_id < billhook.window_start(%s) RETURNING 1) SELECT count(*) FROM d", bounds)
    deleted_ms += once_ms(conn, "WITH e AS (DELETE FROM billhook.events WHERE id >= billhook.window_start(%s)"
                                 " AND id < billhook.window_start(%s) RETURNING 1) SELECT count(*) FROM e", bounds)
    deleted_wal, after_delete = wal_bytes(conn, lsn), outbox_bytes(conn)
    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    vacuum_ms = once_ms(conn, "VACUUM billhook.events, billhook.deliveries, billhook.delivery_attempts")
    vacuum_wal, after_vacuum = wal_bytes(conn, lsn), outbox_bytes(conn)
    mib = 1024 * 1024
    bench.result(f"P6 retention: one day of {day_rows:,} deliveries with their events and attempts",
                 f"window dropped in {dropped_ms:,.0f} ms; rows deleted in {deleted_ms:,.0f} ms", "reported",
                 f"dropped: {dropped_wal / mib:,.1f} MiB of WAL, outbox {before_size / mib:,.0f} -> "
                 f"{after_drop / mib:,.0f} MiB; deleted (the next day, the same rows): {deleted_wal / mib:,.0f} MiB "
                 f"of WAL, outbox {after_drop / mib:,.0f} -> {after_delete / mib:,.0f} MiB, then VACUUM "
                 f"{vacuum_ms:,.0f} ms and {vacuum_wal / mib:,.0f} MiB of WAL, outbox {after_vacuum / mib:,.0f} MiB")
    # Autovacuum's own thresholds, table by table (the partitions are vacuumed apart).
    # A table can be past its threshold for a moment (rows a running autoanalyze's snapshot still
    # sees are not removable yet): behind is what autovacuum has not caught up on within three of
    # its naps.
    def behind():
        return conn.execute(
            "SELECT count(*), coalesce(string_agg(format('%s %s', s.relname, s.n_dead_tup), ', '), 'none')"
            " FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid"
            " WHERE s.schemaname = 'billhook' AND s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::int"
            "   + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0)").fetchone()
    at_end, started = behind(), time.time()
    naptime = conn.execute("SELECT extract(epoch FROM current_setting('autovacuum_naptime')::interval)").fetchone()[0]
    while (late := behind())[0] and time.time() - started < 3 * float(naptime):
        time.sleep(1)
    bench.result("P6 autovacuum at the end", f"{late[0]} tables past their threshold after {time.time() - started:.0f} s",
                 "none behind", f"past it at the end of the retention: {at_end[0]} ({at_end[1]}); still past it: {late[1]}")
    bench.configure(retention="7d")
    del hooks
    reset(conn)


def instructions_per_event(bench, customer):
    """Instructions billhook adds to the commit path per emitted event, counted by callgrind in a
    single-user backend (the cluster stopped): the same INSERT of 1,000 invoices with three lines
    each, once with billhook's triggers and once with them disabled; both runs alter the tables'
    triggers first, so that only the triggers' own work differs. Deterministic where timings are
    not."""
    count = 1000
    subprocess.run([str(CLUSTER), "stop", bench.data], check=True)
    insert = " ".join((FILL_INVOICES % {"customer": customer, "count": count}).split())
    instructions = {}
    for state in ("ENABLE", "DISABLE"):
        out = Path(bench.data, f"callgrind.{state.lower()}")
        script = "".join(f"ALTER TABLE billhook.{t} {state} TRIGGER USER\n" for t in ("invoices", "invoice_lines"))
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   str(PG_BIN / "postgres"), "--single", "-D", bench.data, "bench"]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--"] + command
        subprocess.run(command, input=script + insert + "\n", text=True, check=True, capture_output=True)
        summary = [line for line in out.read_text().splitlines() if line.startswith("summary:")][0]
        instructions[state] = int(summary.split()[1])
    per_event = (instructions["ENABLE"] - instructions["DISABLE"]) / count
    bench.result("Instructions per emitted event (callgrind, single-user backend)", f"{per_event:,.0f}", "reported",
                 f"one INSERT of {count:,} invoices with 3 lines each: {instructions['ENABLE']:,} instructions with "
                 f"billhook's triggers, {instructions['DISABLE']:,} without")


def query_ms(conn, sql, params=()):
    """How long a query takes, in milliseconds: the best of three runs."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def memory_kib(pid, field):
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])


def fan_out(bench, conn, customer):
    """Commits cost the same however many webhooks subscribe; the worker's fan-out is timed apart."""
    seconds = max(5, int(8 * SCALE))
    deliveries_timed = scaled(20_000)
    bench.pause_worker()
    script = f"INSERT INTO billhook.invoices (customer_id, reference) VALUES ({customer}, 'fan-out');\n"
    baseline = pgbench(script, clients=4, seconds=seconds)
    costs = []
    for n in (1, 10, 100):
        conn.execute("TRUNCATE billhook.webhooks CASCADE")
        for k in range(n):
            webhook(conn, f"/fan-{k}", ["invoice.created"])
        tps = pgbench(script, clients=4, seconds=seconds)
        conn.execute("TRUNCATE billhook.delivery_attempts, billhook.deliveries, billhook.events CASCADE")
        conn.execute("INSERT INTO billhook.invoices (customer_id, reference)"
                     " SELECT %s, 'fan-out ' || k FROM generate_series(1, %s) AS k", (customer, deliveries_timed // n))
        started = time.perf_counter()
        created = fan_out_all(conn)
        per_delivery_us = (time.perf_counter() - started) / created * 1e6
        costs.append(f"{n}: {tps:,.0f} tps, fan-out {per_delivery_us:.1f} µs/delivery")
    bench.result("Fan-out: one event to 1 / 10 / 100 webhooks (single-row INSERT, 4 clients)", "; ".join(costs), "",
                 f"commits: {baseline:,.0f} tps with no webhook; fan-out: billhook.fan_out (as the worker runs it) "
                 f"timed over {deliveries_timed:,} deliveries each")
    reset(conn)
    bench.resume_worker()


def fan_out_rounds(bench, conn, customer):
    """The worker's rounds while one commit fans out to 100 webhooks: each round is one transaction
    of the worker, so its length is sampled from pg_stat_activity (xact_start) every millisecond or
    so while the deliveries are made and sent."""
    invoices, hooks = scaled(500), 100
    webhooks = [webhook(conn, f"/rounds-{n}", ["invoice.created"]) for n in range(hooks)]
    longest, rounds, stop = {}, set(), threading.Event()

    def sample():
        with bench.connect() as watcher:
            while not stop.is_set():
                row = watcher.execute(
                    "SELECT xact_start, extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity"
                    " WHERE backend_type = 'billhook delivery worker' AND datname = 'bench'"
                    " AND xact_start IS NOT NULL").fetchone()
                if row:
                    rounds.add(row[0])
                    longest[row[0]] = max(longest.get(row[0], 0.0), row[1])
                time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    conn.execute(FILL_INVOICES, {"customer": customer, "count": invoices})
    bench.wait(lambda: conn.execute("SELECT count(*) FROM billhook.deliveries WHERE status = 'succeeded'")
               .fetchone()[0] == invoices * hooks, "fan-out rounds drain")
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    worst = sorted(longest.values())[-1] * 1000
    bench.result(f"Fan-out rounds: {invoices:,} events committed at once to {hooks} webhooks", f"longest round {worst:.0f} ms",
                 "≤ 50 ms", f"{len(rounds):,} rounds seen (worker transactions sampled about every millisecond); "
                 f"{invoices * hooks:,} deliveries sent in {seconds:.1f} s from the commit")
    for hook in webhooks:
        conn.execute("SELECT billhook.delete_webhook(%s)", (hook,))
    reset(conn)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    memory = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 1024 / 1024
    postgres = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.platform()}, {postgres}"


def write_results(bench, started):
    lines = [
        "# billhook benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench` in {time.time() - started:.0f} s"
        f" (BENCH_SCALE={SCALE:g}) on {machine()}.",
        "Release build, loopback only, default settings (fsync and synchronous_commit on); the receiver is",
        "`bench/receiver` (Rust, std only). Ratios are measured within this one run.",
        "",
        "| measurement | result | target | notes |",
        "|---|---|---|---|",
        *[f"| {m} | {v} | {t} | {n} |" for m, v, t, n in bench.rows],
        "",
    ]
    text = "\n".join(lines)
    previous = ROOT / "bench" / "results.md"
    history = ""
    if previous.exists():
        old = previous.read_text()
        marker = "## Notes"
        history = old[old.index(marker):] if marker in old else ""
    Path(previous).write_text(text + ("\n" + history if history else ""))
    print("\n" + text)


def main():
    started = time.time()
    directory = tempfile.mkdtemp(prefix="billhook-bench-", dir="/tmp")
    os.chmod(directory, 0o755)
    bench = Bench(directory)
    subprocess.run([str(CLUSTER), "start", bench.data, str(PORT), "billhook.database = 'bench'",
                    "billhook.allow_private_targets = on", "shared_buffers = '512MB'", "max_wal_size = '4GB'",
                    "checkpoint_timeout = '15min'", f"billhook.tls_ca_file = '{CA.pem_path}'", *filter(None, os.environ.get("BENCH_PG_EXTRA", "").split(";"))], check=True)
    receiver = subprocess.Popen([str(RECEIVER), "serve", str(RECEIVER_PORT)])
    tls_receiver = subprocess.Popen([str(RECEIVER), "serve", str(TLS_RECEIVER_PORT), CA.server_pem()])
    try:
        time.sleep(0.3)
        with bench.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench")
        with bench.connect() as conn:
            conn.execute("CREATE EXTENSION billhook")
            customer = conn.execute(
                "INSERT INTO billhook.customers (company_name, email, address1, zipcode, city, country, phone)"
                " VALUES ('Foobar Holding B.V.', 'accounts@foobar.example', 'Hoofdstraat 12', '1234AB', 'Amsterdam',"
                " 'NL', '+31 20 123 4567') RETURNING id").fetchone()[0]
            bench.wait(lambda: bench.worker_database() == "bench", "worker")
            wanted = lambda part: not ONLY or part in ONLY
            ceiling = receiver_ceiling(bench, conn, customer)
            p1 = p1_drain(bench, conn, customer, ceiling) if wanted("p1") or wanted("p4") or wanted("p1o") or wanted("p1x2") else None
            if wanted("p1o"):
                p1_ordered(bench, conn, customer, p1)
            if wanted("p1x2"):
                p1_two_workers(bench, conn, customer, p1)
            if wanted("p1w"):
                p1_workers(bench, conn, customer)
            if wanted("p1e"):
                p1_end_to_end(bench, conn, customer)
            if wanted("p1https"):
                p1_drain(bench, conn, customer, ceiling, base=TLS_RECEIVER_URL)
            if wanted("p2"):
                p2_latency(bench, conn, customer)
            if wanted("p3"):
                p3_emit_overhead(bench, conn, customer)
            if wanted("p4"):
                p4_isolation(bench, conn, customer, p1)
            if wanted("fanout"):
                fan_out(bench, conn, customer)
            if wanted("rounds"):
                fan_out_rounds(bench, conn, customer)
            if wanted("p5"):
                p5_backlog(bench, conn, customer)
            if "p6" in ONLY:
                p6_partitioned(bench, conn, customer)
        if wanted("instructions"):
            instructions_per_event(bench, customer)
        if not ONLY:
            write_results(bench, started)
    finally:
        receiver.terminate()
        tls_receiver.terminate()
        shutil.rmtree(CA.directory, ignore_errors=True)
        subprocess.run([str(CLUSTER), "stop", bench.data], check=False)
        if not os.environ.get("BILLHOOK_KEEP_CLUSTER"):
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
