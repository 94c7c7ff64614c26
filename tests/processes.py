"""Run the real `zcompute-proxy` command as a subprocess, with bounded waits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "proxy"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process environment without any ZCOMPUTE_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}
    env["HOME"] = str(ROOT / ".cache" / "test-home")  # no user config file leaks in
    env.update(extra or {})
    return env


def run(args: Sequence[str], env: Mapping[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `zcompute-proxy ARGS` to completion."""
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=ROOT,
                          env=clean_env(env), timeout=timeout, check=False)


def wait_http(url: str, handle: Running, deadline: float = 15) -> None:
    """Poll `url` until it answers 200; fail fast if the process dies."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if handle.proc.poll() is not None:
            raise RuntimeError(f"exited with {handle.returncode}: {handle.stderr()[-2000:]}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError), \
                urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {deadline} s")


@dataclass
class Running:
    """A started command; its stdout and stderr go to files, read them after it stops."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def returncode(self) -> int | None:
        """Exit code once stopped."""
        return self.proc.returncode

    def stdout(self) -> str:
        """Everything written to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send `sig` and wait; kill after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def running(args: Sequence[str], ready_url: str, env: Mapping[str, str] | None = None,
            ) -> Iterator[Running]:
    """Start `zcompute-proxy ARGS`, wait for `ready_url`, and stop it with SIGTERM after."""
    logs = Path(tempfile.mkdtemp(prefix="zcompute-proxy-test-"))
    out, err = logs / "stdout", logs / "stderr"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen([*COMMAND, *args], cwd=ROOT, env=clean_env(env),
                                stdout=out_file, stderr=err_file)
    handle = Running(proc, out, err)
    try:
        wait_http(ready_url, handle)
        yield handle
    finally:
        handle.stop()
