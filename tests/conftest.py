"""A throwaway PostgreSQL 15 cluster with billhook preloaded, shared by the whole test session.

Tests isolate themselves by working in an administration of their own (the `admin` fixture);
tests that need a database of their own create one from `cluster`.
"""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

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


@pytest.fixture(scope="session")
def cluster():
    directory = tempfile.mkdtemp(prefix="billhook-test-", dir="/tmp")
    os.chmod(directory, 0o755)
    data = os.path.join(directory, "data")
    port = free_port()
    subprocess.run([str(CLUSTER_SCRIPT), "start", data, str(port)], check=True)
    c = Cluster(data, port)
    try:
        c.create_database("billhook_test")
        yield c
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", data], check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def db(cluster):
    with cluster.connect() as conn:
        yield conn


@pytest.fixture
def admin(db):
    """A fresh administration: the test's own tenant, so tests never see each other's events."""
    return db.execute(
        "INSERT INTO billhook.administrations (name) VALUES ('test') RETURNING id"
    ).fetchone()[0]
