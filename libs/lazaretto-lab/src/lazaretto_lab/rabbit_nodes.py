"""Lab RabbitMQ cluster: 1..3 private broker nodes on loopback, beside the shared `rabbit@localhost`.

`with LabRabbitNodes(3) as nodes: nodes.urls` gives one AMQP URL per node (all in the cluster's own
vhost and user); `kill(i)` SIGKILLs node i's VM, `stop_node(i)` stops it cleanly, `restart(i)` boots it
again on its data (it rejoins the cluster by itself). Facts from /work/shared/reference/
lab-rabbitmq-cluster.md: every node gets its own name, AMQP and distribution ports, data, log and pid
files under one temp dir, a HOME of ours (so a cookie of ours: a CLI call that missed its `-n` can never
reach the shared node), and `RABBITMQ_CONF_ENV_FILE` so /etc/rabbitmq/rabbitmq-env.conf (the shared
node's name and port) is never read. The programs run from /usr/lib/rabbitmq/bin: Debian's
/usr/sbin wrappers switch to the shared node's user, HOME and cookie.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from lazaretto_lab.process import LabProcess, LabProcessError, free_port, tcp_open

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
MAX_NODES = 3
# Each CLI call starts an Erlang VM: slow on a busy 2-core machine, so generous.
CLI_TIMEOUT = 180.0
BOOT_TIMEOUT = 180.0


class LabRabbitError(LabProcessError):
    """A lab node did not start, join or answer; the message carries the CLI's output or the log tail."""


@dataclass
class LabRabbitNode:
    """One node: its name, ports and directory; `process` while it runs."""

    index: int
    name: str  # e.g. lazaretto-1a2b3c4d-1@localhost
    amqp_port: int
    dist_port: int
    directory: Path
    process: LabProcess | None = field(default=None, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.directory / "node.pid"

    def beam_pid(self) -> int | None:
        """The Erlang VM's PID as the node wrote it (the wrapper shell is its parent)."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None


class LabRabbitNodes:
    """`count` RabbitMQ nodes clustered together, with one vhost and one user of their own."""

    def __init__(self, count: int = 3, vhost: str = "lazaretto", user: str = "lazaretto") -> None:
        if not 1 <= count <= MAX_NODES:
            raise ValueError(f"1..{MAX_NODES} nodes, not {count}")
        self.count = count
        self.vhost = vhost
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.tag = secrets.token_hex(4)
        self.root: Path | None = None
        self.nodes: list[LabRabbitNode] = []

    # --- addresses -------------------------------------------------------------------------------

    def url(self, index: int, user: str | None = None, password: str | None = None) -> str:
        node = self.nodes[index]
        who = f"{quote(user or self.user, safe='')}:{quote(password or self.password, safe='')}"
        return f"amqp://{who}@127.0.0.1:{node.amqp_port}/{quote(self.vhost, safe='')}"

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(len(self.nodes))]

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self.root = Path(tempfile.mkdtemp(prefix=f"lazaretto-rabbit-{self.tag}-"))
            home = self.root / "home"
            home.mkdir()
            cookie = home / ".erlang.cookie"
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
            for index in range(self.count):
                self.nodes.append(self._make_node(index))
            for node in self.nodes:
                self._boot(node)
            for node in self.nodes[1:]:
                self._join(node, self.nodes[0])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after 30 s) and remove all their data; safe to repeat."""
        try:
            for node in self.nodes:
                self._end(node)
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            self.nodes = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- faults ----------------------------------------------------------------------------------

    def kill(self, index: int) -> None:
        """SIGKILL node `index`'s VM (a crash: no goodbye to clients or peers)."""
        node = self.nodes[index]
        pid = node.beam_pid()
        if pid is not None and self._is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._end(node)

    def stop_node(self, index: int) -> None:
        """Stop node `index` cleanly (SIGTERM: it leaves its queues' leadership before going)."""
        self._end(self.nodes[index])

    def restart(self, index: int) -> None:
        """Boot a stopped or killed node again on its own data; it rejoins its cluster."""
        node = self.nodes[index]
        self._end(node)
        self._boot(node)

    def running(self, index: int) -> bool:
        process = self.nodes[index].process
        return process is not None and process.alive()

    # --- CLI -------------------------------------------------------------------------------------

    def ctl(self, index: int, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """`rabbitmqctl -n <node i> args...` with our cookie; returns stdout, raises on failure."""
        return self._cli("rabbitmqctl", self.nodes[index], *args, timeout=timeout)

    def queues(self, index: int, *args: str) -> str:
        """`rabbitmq-queues -n <node i> args...` (quorum membership, leaders)."""
        return self._cli("rabbitmq-queues", self.nodes[index], *args)

    def cluster_running_nodes(self, index: int = 0) -> set[str]:
        out = self.ctl(index, "eval", "rabbit_nodes:all_running().")
        return {part.strip(" []'\n") for part in out.split(",") if part.strip(" []'\n")}

    # --- internals -------------------------------------------------------------------------------

    def _make_node(self, index: int) -> LabRabbitNode:
        assert self.root is not None
        directory = self.root / f"node{index + 1}"
        directory.mkdir()
        node = LabRabbitNode(
            index=index,
            name=f"lazaretto-{self.tag}-{index + 1}@localhost",
            amqp_port=free_port(),
            dist_port=free_port(),
            directory=directory,
        )
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "advanced.config").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
                    # The first boot of the first node makes the cluster's vhost and user; joiners
                    # reset and take the cluster's.
                    f"default_vhost = {self.vhost}",
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    "default_permissions.configure = .*",
                    "default_permissions.read = .*",
                    "default_permissions.write = .*",
                    "default_user_tags.administrator = true",
                    "log.file.level = info",
                    "log.console = false",
                    "",
                ]
            )
        )
        return node

    def _env(self, node: LabRabbitNode) -> dict[str, str]:
        assert self.root is not None
        d = node.directory
        return {
            "HOME": str(self.root / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            # Distribution on loopback only; no busy-waiting schedulers on a shared 2-core machine.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
            ),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SCHEDULER_BIND_TYPE": "u",
        }

    def _boot(self, node: LabRabbitNode) -> None:
        # A pid file left by a SIGKILL would make `wait` watch a dead PID.
        node.pid_file.unlink(missing_ok=True)
        node.process = LabProcess(
            f"rabbitmq {node.name}",
            [str(RABBIT_BIN / "rabbitmq-server")],
            node.directory / "console.log",
            env=self._env(node),
            cwd=node.directory,
        )
        # `wait <pidfile>` returns once the app runs (the exit code of a detached start means nothing).
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not node.pid_file.exists():
            if not node.process.alive() or time.monotonic() > deadline:
                raise LabRabbitError(f"{node.name} wrote no pid file:\n{self._log_tail(node)}")
            time.sleep(0.1)
        self._cli("rabbitmqctl", node, "wait", str(node.pid_file), "--timeout", str(int(BOOT_TIMEOUT)))
        if not tcp_open(node.amqp_port):
            raise LabRabbitError(f"{node.name} runs but does not listen on {node.amqp_port}")

    def _join(self, node: LabRabbitNode, seed: LabRabbitNode) -> None:
        self._cli("rabbitmqctl", node, "stop_app")
        self._cli("rabbitmqctl", node, "reset")
        self._cli("rabbitmqctl", node, "join_cluster", seed.name)
        self._cli("rabbitmqctl", node, "start_app")
        self._cli("rabbitmqctl", node, "await_startup")

    def _end(self, node: LabRabbitNode) -> None:
        process, node.process = node.process, None
        if process is not None:
            process.stop(timeout=30.0)
        # The VM is in the wrapper's process group; a VM that somehow outlived it still is ours.
        pid = node.beam_pid()
        if pid is not None and self._is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _is_ours(self, pid: int) -> bool:
        """Only a process whose command line names our HOME (the shared node's is /var/lib/rabbitmq)."""
        if self.root is None:
            return False
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            return str(self.root / "home").encode() in cmdline
        return False

    def _cli(self, tool: str, node: LabRabbitNode, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        env = dict(os.environ)
        env.update(self._env(node))
        argv = [str(RABBIT_BIN / tool), "-q", "-n", node.name, *args]
        try:
            result = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LabRabbitError(f"{tool} {' '.join(args)} on {node.name}: no answer in {timeout}s") from exc
        if result.returncode != 0:
            raise LabRabbitError(
                f"{tool} {' '.join(args)} on {node.name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{self._log_tail(node)}"
            )
        return result.stdout

    @staticmethod
    def _log_tail(node: LabRabbitNode, lines: int = 30) -> str:
        tails = []
        for path in [node.directory / "console.log", *sorted((node.directory / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)
