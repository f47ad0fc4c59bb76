"""The lifecycle every lab peer shares (`LabPeer`), on real child processes.

A half-started peer must leave nothing behind (its process, its files), and `stop()` must finish its
cleanup even when an earlier step of it fails: the tests of every service rely on that.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from lazaretto_lab.process import LabPeer, LabProcess, LabProcessError


class SleepPeer(LabPeer):
    """A Python child that writes a marker file when it is 'ready' and then sleeps."""

    ready_what = "writing its marker"
    start_timeout = 10.0

    def __init__(self, *, becomes_ready: bool = True, fail_launch: bool = False, fail_shutdown: bool = False):
        self.becomes_ready = becomes_ready
        self.fail_launch = fail_launch
        self.fail_shutdown = fail_shutdown
        self.dir: Path | None = None
        self.pid: int | None = None

    def _launch(self) -> LabProcess:
        self.dir = Path(tempfile.mkdtemp(prefix="lazaretto-peer-test-"))
        if self.fail_launch:
            raise RuntimeError("config rejected")
        marker = self.dir / "ready" if self.becomes_ready else self.dir / "never"
        code = (
            f"import pathlib, time; print('booting'); pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
        )
        process = LabProcess("sleeper", [sys.executable, "-c", code], self.dir / "sleeper.log")
        self.pid = process.pid
        return process

    def _ready(self) -> bool:
        assert self.dir is not None
        return (self.dir / "ready").exists()

    def _shutdown(self) -> None:
        if self.fail_shutdown:
            raise OSError("the peer's own stop command failed")

    def _cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_ready_peer_runs_inside_the_block_and_is_gone_after_it() -> None:
    with SleepPeer() as peer:
        assert peer.process is not None
        assert peer.process.alive()
        assert peer.dir is not None
        assert (peer.dir / "ready").exists()
        pid, folder = peer.pid, peer.dir
    assert pid is not None
    assert gone(pid)
    assert not folder.exists()
    assert peer.process is None


def test_a_peer_that_never_gets_ready_is_stopped_and_the_error_carries_its_log() -> None:
    peer = SleepPeer(becomes_ready=False)
    peer.start_timeout = 1.0
    with pytest.raises(LabProcessError, match=r"sleeper not writing its marker after 1.0s:\nbooting"):
        peer.start()
    assert peer.pid is not None
    assert gone(peer.pid)
    assert peer.dir is not None
    assert not peer.dir.exists()


def test_a_launch_that_fails_half_way_removes_what_it_made() -> None:
    peer = SleepPeer(fail_launch=True)
    with pytest.raises(RuntimeError, match="config rejected"):
        peer.start()
    assert peer.dir is not None
    assert not peer.dir.exists()
    assert peer.process is None


def test_stop_ends_the_process_and_cleans_up_even_when_shutdown_fails() -> None:
    peer = SleepPeer(fail_shutdown=True).start()
    with pytest.raises(OSError, match="own stop command"):
        peer.stop()
    assert peer.pid is not None
    assert gone(peer.pid)
    assert peer.dir is not None
    assert not peer.dir.exists()
    peer.fail_shutdown = False
    peer.stop()  # a second stop is harmless
