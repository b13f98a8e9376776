"""Test harness: a real berthd on the real Docker engine.

The session fixture ``daemon`` builds nothing: it finds ``berthd`` at ``$BERTHD_BIN`` or
``<repo>/target/debug/berthd`` (build it with ``cargo build --bin berthd``), builds the
test image with ``tests/image/build.sh`` if it is missing, starts berthd on a temp
socket, config and state dir (as the Rust harness ``tests/common/mod.rs`` does), and
at the end stops it and removes every container whose ``vega.project`` label starts
with this session's unique prefix, and every snapshot image labelled with its state dir
(``berth.state-dir=<dir>``) — also when tests failed.

Without a Docker engine every test that needs the daemon is skipped, unless
``REQUIRE_DOCKER=1``, which makes that a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

import berth

REPO = Path(__file__).resolve().parents[3]
IMAGE = "berth-test/busybox:latest"
LABEL = "vega.project"
# A small max_output so that read_file of a few MiB needs several pieces, as writing
# them needs several lines under max_line.
CONFIG = f'[docker]\ndefault_image = "{IMAGE}"\n\n[exec]\nmax_output = "2MiB"\n'
#: A config whose engine never answers: projects stay ``created``, with no container.
OFFLINE_CONFIG = f'[docker]\nhost = "unix:///nonexistent/berth-py-test.sock"\ndefault_image = "{IMAGE}"\n'


def _docker_answers() -> bool:
    try:
        r = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _ensure_image() -> None:
    have = subprocess.run(["docker", "image", "inspect", IMAGE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if have.returncode == 0:
        return
    built = subprocess.run([str(REPO / "tests/image/build.sh"), IMAGE])
    if built.returncode != 0:
        pytest.fail(f"building the test image {IMAGE} failed: tests/image/build.sh said why above")


def remove_containers(prefix: str) -> None:
    """Removes every container whose project label starts with ``prefix``."""
    try:
        out = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", '{{.ID}} {{.Label "%s"}}' % LABEL],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    ids = [i for i, _, p in (line.partition(" ") for line in out.splitlines()) if p.startswith(prefix)]
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def remove_snapshot_images(state: Path) -> None:
    """Removes every image labelled ``berth.state-dir=<state>``: the snapshots (and fork
    images) the daemon with that state dir committed.

    Newest first, as the engine lists them: a fork of a project running on a snapshot's
    image commits a child of it, and the engine removes no parent (even with ``-f``)
    before its children. A second pass takes whatever the first could not."""
    for _ in range(2):
        try:
            out = subprocess.run(
                ["docker", "images", "-q", "--filter", f"label=berth.state-dir={state}"],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return
        ids = list(dict.fromkeys(out.split()))
        if not ids:
            return
        subprocess.run(["docker", "rmi", "-f", *ids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


class Daemon:
    """One berthd on a temp socket, config and state dir."""

    def __init__(self, binary: str, extra_config: str = "", *, config: str = CONFIG) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="berth-py-"))
        # Traversable, not listable, like /var/lib (as the Rust harness does).
        os.chmod(self.dir, 0o711)
        self.socket = str(self.dir / "run" / "berth.sock")
        self.state = self.dir / "state"
        self.config = self.dir / "berth.toml"
        self.config.write_text(config + extra_config)
        self.log = self.dir / "berthd.log"
        #: Every project name of this session starts with it (and so do the labels).
        self.prefix = "py" + secrets.token_hex(4)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._names = 0

    def start(self) -> None:
        env = dict(os.environ, BERTH_LOG="info,berth=debug")
        env.pop("BERTH_SOCKET", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(self.config), "--socket", self.socket, "--state-dir", str(self.state)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Polls until the socket answers ``daemon.info`` (or berthd dies): readiness is
        the daemon answering, as in the Rust harness."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"berthd exited early with {self.proc.returncode}; log:\n{self.log_text()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"berthd not ready in 30 s; log:\n{self.log_text()}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(self.socket)
                s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.info"}\n')
                line = s.makefile("rb").readline()
            return "result" in json.loads(line)
        except (OSError, ValueError):
            return False

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            remove_containers(self.prefix)
            remove_snapshot_images(self.state)
            shutil.rmtree(self.dir, ignore_errors=True)

    def name(self, what: str) -> str:
        """A project name unique to this session (and so to its cleanup)."""
        self._names += 1
        slug = "".join(ch if ch.isalnum() else "-" for ch in what.lower()).strip("-") or "p"
        return f"{self.prefix}-{self._names}-{slug}"[:63].rstrip("-._")


def berthd_binary() -> str:
    """berthd as the tests find it, having checked that an engine answers (else the test
    is skipped, or failed with REQUIRE_DOCKER=1) and that the test image is there."""
    if not _docker_answers():
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("REQUIRE_DOCKER=1 but no Docker engine answers")
        pytest.skip("no Docker engine (set REQUIRE_DOCKER=1 to make this a failure)")
    binary = os.environ.get("BERTHD_BIN") or str(REPO / "target" / "debug" / "berthd")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no berthd at {binary}: build it with `cargo build --bin berthd` or set BERTHD_BIN")
    _ensure_image()
    return binary


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    binary = berthd_binary()
    # A SIGTERM (a CI timeout, `timeout`) becomes an interrupt, so that pytest still
    # tears down: the daemon stops and this session's containers go.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    d = Daemon(binary)
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def client(daemon: Daemon) -> Iterator[berth.Client]:
    # A bound on silence, so that a wedged daemon fails a test instead of hanging it.
    with berth.Client(daemon.socket, timeout=120) as c:
        yield c


@pytest.fixture
def name(daemon: Daemon, request: pytest.FixtureRequest) -> str:
    """A fresh project name for this test."""
    return daemon.name(request.node.name)


def _cleanup(socket_path: str, names: List[str]) -> None:
    """Deletes the projects; a daemon already gone (an interrupted session) left their
    containers to the session's label sweep."""
    with berth.Client(socket_path) as c:
        for n in names:
            try:
                c.delete(n, purge=True)
            except (berth.NotFound, berth.BerthConnectionError):
                pass


@pytest.fixture
def cleanup(daemon: Daemon) -> Iterator[List[str]]:
    """Project names to delete (purged, with their snapshots) after the test, whatever
    its outcome."""
    names: List[str] = []
    try:
        yield names
    finally:
        _cleanup(daemon.socket, names)


@pytest.fixture(scope="module")
def project(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[str]:
    """A running project shared by a module's tests; deleted (purged) after them."""
    n = daemon.name(request.module.__name__.rsplit(".", 1)[-1])
    with berth.Client(daemon.socket) as c:
        c.create(n)
    try:
        yield n
    finally:
        _cleanup(daemon.socket, [n])


@pytest.fixture
def idle_daemon(daemon: Daemon) -> Iterator[Daemon]:
    """A second berthd that closes connections after 1 s with nothing in flight."""
    d = Daemon(daemon.binary, '\n[server]\nidle_timeout = "1s"\n')
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
def offline_daemon(daemon: Daemon) -> Iterator[Daemon]:
    """A second berthd that finds no engine (and does not run commands on the host)."""
    d = Daemon(daemon.binary, config=OFFLINE_CONFIG)
    try:
        d.start()
        yield d
    finally:
        d.stop()
