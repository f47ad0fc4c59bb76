"""deploy/bin/install-deps and backports-source: the machine's own apt sources, no mirror written in,
and the global policy-rc.d gone afterwards (unless it was there before).

install-deps runs for real with apt replaced by recording stand-ins, in a private mount namespace whose
/usr/sbin and /etc/apt are empty tmpfs, so the host's own files are never touched. `make test-fresh`
runs it with the real apt on a fresh Debian 12.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BIN = ROOT / "deploy" / "bin"
UV_VERSION = re.search(r"^UV_VERSION=(\S+)$", (BIN / "install-deps").read_text(), re.MULTILINE)


def backports(apt_etc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "backports-source", "bookworm", str(apt_etc)], capture_output=True, text=True, check=False
    )


def test_one_line_sources_give_the_same_archive_for_backports(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/mirror.gpg] http://mirror.example/debian"
        " bookworm main contrib\n"
    )
    result = backports(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "deb [arch=amd64 signed-by=/usr/share/keyrings/mirror.gpg] http://mirror.example/debian"
        " bookworm-backports main\n"
    )


def test_deb822_sources_give_the_same_archive_for_backports(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "# the archive\nTypes: deb deb-src\nURIs: https://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    result = backports(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] https://mirror.example/debian"
        " bookworm-backports main\n"
    )


def test_no_debian_archive_in_the_sources_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
    )
    result = backports(tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "bookworm-backports' cannot be derived" in result.stderr
    assert str(tmp_path) in result.stderr


def test_no_mirror_host_is_written_in_the_install_scripts() -> None:
    for script in BIN.iterdir():
        text = script.read_text()
        assert not re.search(r"https?://[a-z0-9]", text), f"{script.name} names a host"
        assert "deb.debian.org" not in text


STUBS = {
    # Nothing installed yet: every package is "missing".
    "dpkg-query": "#!/bin/sh\nexit 1\n",
    # apt-get records its arguments and whether daemons were blocked while it ran.
    "apt-get": "#!/bin/sh\nblocked=$(test -x /usr/sbin/policy-rc.d && echo yes || echo no)\n"
    'echo "apt-get $* policy-rc.d=$blocked" >> "$STUB_LOG"\n',
    "apt-cache": "#!/bin/sh\necho ' release a=oldstable-backports,n=bookworm-backports,c=main'\n",
    "debconf-set-selections": "#!/bin/sh\ncat >/dev/null\n",
}


def run_install_deps(tmp_path: Path, prepare: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """install-deps with stand-in apt, in a mount namespace with empty /usr/sbin and /etc/apt."""
    assert UV_VERSION is not None
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    uv_home = tmp_path / "uv"
    (uv_home / "bin").mkdir(parents=True)
    (uv_home / "bin" / "uv").write_text(f"#!/bin/sh\necho 'uv {UV_VERSION.group(1)} (stand-in)'\n")
    (uv_home / "bin" / "uv").chmod(0o755)
    log = tmp_path / "apt.log"
    log.touch()
    script = f"""
        set -e
        mount -t tmpfs tmpfs /usr/sbin
        mount -t tmpfs tmpfs /etc/apt
        mkdir /etc/apt/sources.list.d
        {prepare}
        status=0
        PATH={stubs}:$PATH STUB_LOG={log} LAZARETTO_UV_HOME={uv_home} {BIN / "install-deps"} || status=$?
        echo "after: policy-rc.d=$(tail -n1 /usr/sbin/policy-rc.d 2>/dev/null || echo none)"
        cat /etc/apt/sources.list.d/lazaretto-backports.list 2>/dev/null || true
        exit $status
    """
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result, log.read_text()


DEBIAN_SOURCES = "echo 'deb http://mirror.example/debian bookworm main' > /etc/apt/sources.list"


def test_policy_rc_d_blocks_daemons_while_installing_and_is_removed_after(tmp_path: Path) -> None:
    result, apt_log = run_install_deps(tmp_path, DEBIAN_SOURCES)
    assert result.returncode == 0, result.stderr
    installs = [line for line in apt_log.splitlines() if " install " in line]
    assert len(installs) == 2  # the packages, then Suricata from backports
    assert all(line.endswith("policy-rc.d=yes") for line in installs)
    assert "-t bookworm-backports suricata" in installs[1]
    assert "after: policy-rc.d=none" in result.stdout
    # The backports line comes from the machine's own mirror.
    assert "deb http://mirror.example/debian bookworm-backports main" in result.stdout


def test_a_policy_rc_d_that_was_there_before_stays(tmp_path: Path) -> None:
    prepare = (
        DEBIAN_SOURCES
        + "; printf '#!/bin/sh\\nexit 0\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d"
    )
    result, _ = run_install_deps(tmp_path, prepare)
    assert result.returncode == 0, result.stderr
    assert "after: policy-rc.d=exit 0" in result.stdout


def test_install_fails_clearly_without_a_debian_archive(tmp_path: Path) -> None:
    result, apt_log = run_install_deps(
        tmp_path, "echo 'deb http://elsewhere.example/x stable main' > /etc/apt/sources.list"
    )
    assert result.returncode != 0
    assert "bookworm-backports' cannot be derived" in result.stderr
    assert " install " not in apt_log
    assert "after: policy-rc.d=none" in result.stdout


@pytest.mark.parametrize("target", ["deps", "run", "lint"])
def test_the_makefile_uses_the_private_uv(target: str) -> None:
    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "/opt/lazaretto/uv/bin/uv " in dry
    assert "python3 -m uv" not in dry
    assert "pip install" not in dry
