"""A throwaway PostgreSQL 15 cluster with billhook preloaded, shared by the whole test session.

Two databases: `billhook_test` (fixture `db`), where nothing is delivered, for what the emitter and
the SQL functions write; and `billhook_worker` (fixture `worker_db`), the one the delivery worker
serves, with a real HTTP receiver (fixture `receiver`). Tests isolate themselves by working in an
administration of their own (fixtures `admin`, `worker_admin`); tests that need a database of their
own create one from `cluster`.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = ROOT / "scripts" / "pg-cluster.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, directory: str, port: int):
        self.directory = directory
        self.port = port

    def dsn(self, dbname: str = "billhook_test", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname: str = "billhook_test", user: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname, user), autocommit=True, **kwargs)

    def create_database(self, name: str, with_extension: bool = True) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        if with_extension:
            with self.connect(name) as conn:
                conn.execute("CREATE EXTENSION billhook")

    def server_log(self) -> str:
        return Path(self.directory, "server.log").read_text(errors="replace")

    def configure(self, **settings) -> None:
        """ALTER SYSTEM SET billhook.<name> for each setting (None resets it), then reload and give
        the worker a moment to apply the new configuration."""
        with self.connect("postgres") as conn:
            for name, value in settings.items():
                if value is None:
                    conn.execute(f"ALTER SYSTEM RESET billhook.{name}")
                else:
                    conn.execute(f"ALTER SYSTEM SET billhook.{name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)

    def worker_pid(self) -> int | None:
        with self.connect("postgres") as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'billhook delivery worker'").fetchone()
        return row[0] if row else None


@pytest.fixture(scope="session")
def cluster():
    directory = tempfile.mkdtemp(prefix="billhook-test-", dir="/tmp")
    os.chmod(directory, 0o755)
    data = os.path.join(directory, "data")
    port = free_port()
    subprocess.run([str(CLUSTER_SCRIPT), "start", data, str(port),
                    "billhook.database = 'billhook_worker'",
                    "billhook.allow_private_targets = on",
                    "billhook.poll_interval = '60s'",
                    "log_min_messages = log"], check=True)
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
