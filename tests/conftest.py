"""A throwaway PostgreSQL 15 cluster with billhook preloaded, shared by the whole test session.

Two databases: `billhook_test` (fixture `db`), where nothing is delivered, for what the emitter and
the SQL functions write; and `billhook_worker` (fixture `worker_db`), the one the delivery worker
serves, with a real HTTP receiver (fixture `receiver`). Tests isolate themselves by working in an
administration of their own (fixtures `admin`, `worker_admin`); tests that need a database of their
own create one from `cluster`.
"""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from cluster import CLUSTER_SCRIPT, Cluster, free_port
from receiver import Receiver
from tls import TestCA


# The server logs of the clusters this session started, and how far each had grown when the running
# test's call began: a failing test's report shows what its clusters logged meanwhile (WARNING and
# above), which a CI run keeps no other trace of.
SERVER_LOGS = []
LOG_OFFSETS = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        LOG_OFFSETS.clear()
        LOG_OFFSETS.update({log: os.path.getsize(log) for log in SERVER_LOGS if os.path.exists(log)})
    report = (yield).get_result()
    if call.when == "call" and report.failed:
        for log in SERVER_LOGS:
            if os.path.exists(log):
                with open(log, errors="replace") as text:
                    text.seek(LOG_OFFSETS.get(log, 0))
                    lines = text.read().splitlines()[-200:]
                if lines:
                    report.sections.append((f"server log {log}", "\n".join(lines)))


def pytest_configure(config):
    config.addinivalue_line("markers", "after_everything: runs after every other test of the session "
                                       "(it checks what they left behind)")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("after_everything") is not None)


@pytest.fixture(scope="session")
def test_ca():
    """The certificate authority of the tests' HTTPS receivers, trusted by the test cluster."""
    ca = TestCA()
    yield ca
    shutil.rmtree(ca.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(test_ca):
    directory = tempfile.mkdtemp(prefix="billhook-test-", dir="/tmp")
    os.chmod(directory, 0o755)
    data = os.path.join(directory, "data")
    port = free_port()
    SERVER_LOGS.append(os.path.join(data, "server.log"))
    subprocess.run([str(CLUSTER_SCRIPT), "start", data, str(port),
                    "billhook.database = 'billhook_worker'",
                    "billhook.allow_private_targets = on",
                    f"billhook.tls_ca_file = '{test_ca.pem_path}'",
                    "billhook.poll_interval = '60s'"], check=True)
    c = Cluster(data, port)
    try:
        c.create_database("billhook_test")
        c.create_database("billhook_worker")
        yield c
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", data], check=False)
        if os.environ.get("BILLHOOK_KEEP_CLUSTER"):
            print(f"\ncluster kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def db(cluster):
    with cluster.connect() as conn:
        yield conn


def new_administration(conn) -> int:
    return conn.execute("INSERT INTO billhook.administrations (name) VALUES ('test') RETURNING id").fetchone()[0]


@pytest.fixture
def admin(db):
    """A fresh administration: the test's own tenant, so tests never see each other's events."""
    return new_administration(db)


@pytest.fixture
def worker_db(cluster):
    with cluster.connect("billhook_worker") as conn:
        # Right after the cluster starts, the worker restarts once to connect to the database it
        # waited for; tests that time deliveries start when it runs there.
        deadline = time.time() + 30
        while not conn.execute("SELECT running FROM billhook.worker_status()").fetchone()[0]:
            assert time.time() < deadline, "the worker runs in billhook_worker"
            time.sleep(0.05)
        yield conn


@pytest.fixture
def worker_admin(worker_db):
    return new_administration(worker_db)


@pytest.fixture
def own_cluster():
    """Starts clusters of a test's own: own_cluster(*settings, env=None) appends the settings to
    postgresql.conf and starts the server with extra environment variables; all are stopped and
    removed afterwards."""
    started = []

    def start(*settings, env=None):
        directory = tempfile.mkdtemp(prefix="billhook-test-own-", dir="/tmp")
        os.chmod(directory, 0o755)
        data = os.path.join(directory, "data")
        port = free_port()
        SERVER_LOGS.append(os.path.join(data, "server.log"))
        subprocess.run([str(CLUSTER_SCRIPT), "start", data, str(port), *settings], check=True,
                       env={**os.environ, **(env or {})})
        started.append((directory, data))
        return Cluster(data, port)

    yield start
    for directory, data in started:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", data], check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def https_receiver(test_ca):
    """A receiver answering HTTPS with a certificate of the test CA, which the cluster trusts."""
    r = Receiver(tls=test_ca.server_context())
    yield r
    r.close()
