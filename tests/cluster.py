"""A PostgreSQL 15 cluster started by scripts/pg-cluster.sh, as the tests drive it."""

import socket
import time
from pathlib import Path

import psycopg

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

    def worker_backend(self) -> tuple[int, str | None] | None:
        """The worker's pid and the database it is connected to (None while it waits for one)."""
        with self.connect("postgres") as conn:
            return conn.execute("SELECT pid, datname FROM pg_stat_activity"
                                " WHERE backend_type = 'billhook delivery worker'").fetchone()

    def worker_pid(self) -> int | None:
        backend = self.worker_backend()
        return backend[0] if backend else None

    def worker_database(self) -> str | None:
        backend = self.worker_backend()
        return backend[1] if backend else None
