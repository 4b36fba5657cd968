"""The Debian package (make package, which make test builds first): its metadata, that apt would
install it here, and a scratch root — this machine's PostgreSQL 15 copied without billhook, the
package unpacked over it — where CREATE EXTENSION works and a push arrives."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster import ROOT, Cluster, CLUSTER_SCRIPT, free_port
from helpers import VERSION, create_webhook, customer

DEB = ROOT / "target" / "package" / f"postgresql-15-billhook_{VERSION}_amd64.deb"


def field(name):
    return subprocess.run(["dpkg-deb", "--field", str(DEB), name], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_package_is_named_versioned_and_depends_on_postgresql_15():
    assert DEB.exists(), "make package builds it"
    assert (field("Package"), field("Version"), field("Architecture")) == ("postgresql-15-billhook", VERSION, "amd64")
    assert field("Depends").startswith("postgresql-15")
    files = subprocess.run(["dpkg-deb", "--contents", str(DEB)], check=True, capture_output=True, text=True).stdout
    extension = "./usr/share/postgresql/15/extension/"
    upgrades = [f"{extension}{script.name}" for script in (ROOT / "sql").glob("billhook--*--*.sql")]
    assert len(upgrades) >= 11
    for path in ["./usr/lib/postgresql/15/lib/billhook.so", f"{extension}billhook.control",
                 f"{extension}billhook--{VERSION}.sql", *upgrades]:
        assert path in files, path
    # apt resolves it on this machine (postgresql-15 is installed): what `apt install ./….deb` does.
    simulated = subprocess.run(["apt-get", "-s", "install", str(DEB)], capture_output=True, text=True)
    assert simulated.returncode == 0, simulated.stderr
    assert f"Inst postgresql-15-billhook ({VERSION}" in simulated.stdout


@pytest.fixture
def scratch_root():
    """/usr/lib/postgresql/15 and /usr/share/postgresql/15 copied into a scratch root without any
    billhook file, then the package unpacked into it. PostgreSQL finds its share and lib
    directories relative to its binaries, so the copy uses only what is in the scratch root."""
    root = Path(tempfile.mkdtemp(prefix="billhook-deb-", dir="/tmp"))
    os.chmod(root, 0o755)
    for part in ["lib", "share"]:
        (root / "usr" / part / "postgresql").mkdir(parents=True)
        shutil.copytree(f"/usr/{part}/postgresql/15", root / "usr" / part / "postgresql" / "15", symlinks=True)
    for leftover in [*root.glob("usr/share/postgresql/15/extension/billhook*"), *root.glob("usr/lib/postgresql/15/lib/billhook*")]:
        leftover.unlink()
    subprocess.run(["dpkg-deb", "--extract", str(DEB), str(root)], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_unpacked_package_creates_the_extension_and_delivers(scratch_root, receiver):
    pg_config = scratch_root / "usr/lib/postgresql/15/bin/pg_config"
    env = {**os.environ, "PG_CONFIG": str(pg_config)}
    data = scratch_root / "data"
    port = free_port()
    subprocess.run([str(CLUSTER_SCRIPT), "start", str(data), str(port), "billhook.database = 'shop'",
                    "billhook.allow_private_targets = on"], check=True, env=env)
    try:
        cluster = Cluster(str(data), port)
        cluster.create_database("shop")
        with cluster.connect("shop") as conn:
            dirs = dict(conn.execute("SELECT name, setting FROM pg_config WHERE name IN ('SHAREDIR', 'PKGLIBDIR')"))
            assert dirs == {"SHAREDIR": str(scratch_root / "usr/share/postgresql/15"),
                            "PKGLIBDIR": str(scratch_root / "usr/lib/postgresql/15/lib")}, "the server runs from the scratch root"
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'billhook'").fetchone()[0] == VERSION
            create_webhook(conn, 1, receiver.url("/from-deb"), ["customer.created"])
            customer(conn, 1, company_name="Packaged B.V.")
            [push] = receiver.wait_for("/from-deb", 1)
            assert json.loads(push.body)["entity"]["company_name"] == "Packaged B.V."
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(data)], check=False, env=env)


def test_the_pgxn_meta_json_has_the_required_fields_and_this_version():
    meta = json.loads((ROOT / "META.json").read_text())
    for required in ["name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"]:
        assert meta.get(required), required
    assert meta["name"] == "billhook" and meta["version"] == VERSION
    assert meta["provides"]["billhook"]["version"] == VERSION
    assert (ROOT / meta["provides"]["billhook"]["file"]).exists()
    assert meta["meta-spec"]["version"] == "1.0.0"
    assert meta["license"] == "apache_2_0", "Cargo.toml's Apache-2.0 in PGXN's name"
    assert meta["prereqs"]["runtime"]["requires"]["PostgreSQL"] == "15.0.0"
