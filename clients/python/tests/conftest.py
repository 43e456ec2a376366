"""Throwaway services for the Python suites: a Postgres cluster (initdb) and a
redis-server on free ports in a temporary directory, and a real `jobrunner run`
(the binary in $JOBRUNNER_BIN, which scripts/test.sh points at the debug build)
serving the default queue and the arq queue `arq:queue`."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import pytest


@dataclass
class Stack:
    dir: str
    pg_port: int
    redis_port: int
    admin_url: str
    dsn: str
    daemon: subprocess.Popen
    log: str

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if not found:
        pytest.fail(f"{name} not found (install postgresql)")
    return found


def as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def wait_for(what: str, check, timeout: float = 20.0, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    tail = ""
    if log and os.path.exists(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
    pytest.fail(f"{what} did not come up within {timeout}s\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


CONFIG = """
[database]
url = "{dsn}"
[redis]
url = "redis://127.0.0.1:{redis_port}/0"
[runtime]
lease = "2s"
reap_interval = "200ms"
poll_interval = "100ms"
drain_timeout = "2s"
[admin]
listen = "127.0.0.1:{admin_port}"
[queues.default]
concurrency = 8
[kinds.fail]
max_attempts = 2
[kinds.fail.backoff]
base = "20ms"
max = "50ms"
[arq]
queues = ["arq:queue"]
poll_interval = "50ms"
keep_result = "1h"
[arq.functions.generate_campaign]
kind = "noop"
args = ["campaign_id"]
"""


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    binary = os.environ.get("JOBRUNNER_BIN")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail("set JOBRUNNER_BIN to the jobrunner binary (scripts/test.sh does)")
    root = tempfile.mkdtemp(prefix="jobrunner-pytest-")
    os.chmod(root, 0o755)
    procs: list[subprocess.Popen] = []
    try:
        data = os.path.join(root, "pg")
        os.mkdir(data)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(as_postgres([pg_bin("initdb"), "-D", data, "--no-sync", "-A", "trust",
                                    "-U", "postgres", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True)
        pg_port = free_port()
        pg_log = open(os.path.join(root, "postgres.log"), "w")
        procs.append(subprocess.Popen(
            as_postgres([pg_bin("postgres"), "-D", data, "-k", data, "-p", str(pg_port),
                         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
            stdout=pg_log, stderr=subprocess.STDOUT))
        wait_for("postgres", lambda: port_open(pg_port), log=pg_log.name)
        dsn_admin = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
        import psycopg

        def created() -> bool:
            try:
                with psycopg.connect(dsn_admin, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE jobrunner")
                return True
            except psycopg.OperationalError:
                return False

        wait_for("the jobrunner database", created)

        redis_port = free_port()
        redis_log = os.path.join(root, "redis.log")
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", root, "--logfile", redis_log]))
        wait_for("redis-server", lambda: port_open(redis_port), log=redis_log)

        admin_port = free_port()
        dsn = f"postgresql://postgres@127.0.0.1:{pg_port}/jobrunner"
        config = os.path.join(root, "jobrunner.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(dsn=dsn, redis_port=redis_port, admin_port=admin_port))
        log = os.path.join(root, "jobrunner.log")
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "JOBRUNNER_DATABASE_URL",
                            "JOBRUNNER_REDIS_URL", "JOBRUNNER_CONFIG")}
        env["RUST_LOG"] = env.get("RUST_LOG", "info")
        daemon = subprocess.Popen([binary, "--config", config, "run", "--migrate"],
                                  stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        procs.append(daemon)
        admin_url = f"http://127.0.0.1:{admin_port}"

        def ready() -> bool:
            if daemon.poll() is not None:
                pytest.fail(f"jobrunner exited {daemon.returncode}:\n{open(log).read()[-3000:]}")
            try:
                with urllib.request.urlopen(admin_url + "/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for("jobrunner run", ready, timeout=60, log=log)
        yield Stack(dir=root, pg_port=pg_port, redis_port=redis_port, admin_url=admin_url,
                    dsn=dsn, daemon=daemon, log=log)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)
