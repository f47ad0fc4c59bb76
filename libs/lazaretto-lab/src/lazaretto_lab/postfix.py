"""A private Postfix instance on 127.0.0.1:<free port> that asks a policy server about every message.

Own config, queue and data directories in a temp dir (the system's default instance is never
touched); XCLIENT allowed from loopback so a test can pose as any subscriber IP; every message is
discarded (nothing is delivered or relayed anywhere). `postfix start-fg` runs as a `LabProcess`;
the master it starts leads its own session, so `stop()` uses `postfix stop` and then, if needed,
kills the master's process group by the PID in its pid file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lazaretto_lab.process import LabPeer, LabProcess, LabProcessError, free_port, tcp_open

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"

# Every service chroot-free (column 5 = n), so the instance needs nothing copied into its queue dir.
MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def policy_check(policy_port: int, timeout: str = "2s") -> str:
    """`check_policy_service` that fails open: one try, short timeout, DUNNO when our server is down."""
    return (
        f"check_policy_service {{ inet:127.0.0.1:{policy_port}, timeout={timeout}, "
        f"default_action=DUNNO, try_limit=1 }}"
    )


class LabPostfix(LabPeer):
    """`with LabPostfix(policy_port=p) as mta:` then SMTP to 127.0.0.1:`mta.port`; log in `mta.maillog`.

    `policy_port=None` runs without a policy service. `mynetworks` may relay (to the discard
    transport); pose as a subscriber with `XCLIENT ADDR=100.64.0.10` from loopback. Recipients in
    `reject_domains` are refused (554) after the policy check, as a real MX refuses unknown users.
    """

    ready_what = "accepting SMTP"

    def __init__(
        self,
        policy_port: int | None = None,
        *,
        port: int | None = None,
        mynetworks: str = "127.0.0.0/8 100.64.0.0/10",
        policy_timeout: str = "2s",
        end_of_data_policy: bool = True,
        reject_domains: tuple[str, ...] = (),
        base_dir: Path | None = None,
        keep_dir: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        self.policy_port = policy_port
        self.port = port or free_port()
        self.mynetworks = mynetworks
        self.policy_timeout = policy_timeout
        self.end_of_data_policy = end_of_data_policy
        self.reject_domains = reject_domains
        self.keep_dir = keep_dir
        self.start_timeout = start_timeout
        # mkdtemp under /tmp (not pytest's 0700 tmp_path): unprivileged postfix daemons must traverse it.
        self.dir = Path(tempfile.mkdtemp(prefix="lazaretto-postfix-", dir=base_dir))
        self.dir.chmod(0o755)
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "spool"
        self.data_dir = self.dir / "data"
        self.maillog = self.dir / "maillog"

    def main_cf(self) -> str:
        recipient = ["permit_mynetworks", "reject_unauth_destination"]
        end_of_data = ""
        if self.policy_port is not None:
            check = policy_check(self.policy_port, self.policy_timeout)
            # Relay control lives in smtpd_relay_restrictions, so the policy check can come first
            # (mynetworks clients are exactly the subscribers we want to see) without opening a relay.
            recipient = [check]
            if self.end_of_data_policy:
                end_of_data = f"smtpd_end_of_data_restrictions = {check}\n"
        if self.reject_domains:
            # Refused after the policy check: the policy server sees these RCPTs, then the refusal.
            table = ", ".join(f"{d}=REJECT" for d in self.reject_domains)
            recipient.insert(
                1 if self.policy_port is not None else 0, f"check_recipient_access inline:{{{table}}}"
            )
        return f"""\
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.maillog}
maillog_file_prefixes = {self.dir}
myhostname = mx-lab.example.net
mydomain = example.net
myorigin = $myhostname
mydestination = $myhostname, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = {self.mynetworks}
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
default_transport = discard:lab-no-delivery
relay_transport = discard:lab-no-delivery
local_transport = discard:lab-no-delivery
virtual_transport = discard:lab-no-delivery
smtpd_banner = $myhostname ESMTP lab
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = {", ".join(recipient)}
{end_of_data}smtpd_policy_service_default_action = DUNNO
smtpd_policy_service_try_limit = 1
smtpd_policy_service_timeout = {self.policy_timeout}
"""

    def _launch(self) -> LabProcess:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix")  # Postfix insists
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        env = {"MAIL_CONFIG": str(self.config_dir)}
        # `check` creates the queue subdirectories and reports config errors on stdout/stderr
        # (the daemons' own fatal errors would go to syslog, which this box does not run).
        check = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "check"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
            check=False,
        )
        if check.returncode != 0:
            raise LabProcessError(f"postfix check failed:\n{check.stdout}{check.stderr}")
        if tcp_open(self.port):
            raise LabProcessError(f"port {self.port} is already taken")
        return LabProcess(
            "postfix", [POSTFIX, "-c", str(self.config_dir), "start-fg"], self.dir / "master.out", env=env
        )

    def _ready(self) -> bool:
        return self.master_pid() is not None and tcp_open(self.port)

    def master_pid(self) -> int | None:
        """The running master's PID (it starts its own session, so it is not in our process group)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        return None

    def _shutdown(self) -> None:
        # `start-fg` hands over to a master that leads its own session: stop it the Postfix way first.
        master = self.master_pid()
        if master is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [POSTFIX, "-c", str(self.config_dir), "stop"],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            if not _wait_gone(master, 10.0):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(master, signal.SIGKILL)  # the master leads its own group with its children
                _wait_gone(master, 10.0)

    def _cleanup(self) -> None:
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.maillog.read_text(errors="replace")
        return ""


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for `pid` to exit; a zombie counts as gone (no init here reaps re-parented children)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False
