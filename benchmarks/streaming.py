"""Streaming benchmark: SIZE bytes up and SIZE bytes down through a real proxy process.

    .venv/bin/python -m benchmarks.streaming              # 1 GiB each way
    .venv/bin/python -m benchmarks.streaming --size 100MiB --upstream-rate 50

Starts an upstream and the built-in simulator (for logins) in this process and
`python -m proxy serve` as a subprocess. The upload is chunked, generated on the fly and hashed
on both ends; the download is hashed as it arrives. Prints throughput and the proxy's peak
RSS growth over its warmed-up baseline, measured from /proc (Linux only) by resetting the
peak (`clear_refs`) and by sampling `VmRSS` every 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import aiohttp
from aiohttp import web

from proxy import simulator

ROOT: Final = Path(__file__).resolve().parent.parent
MIB: Final = 1024 * 1024
BLOCK: Final = bytes(range(256)) * 1024  # 256 KiB of a recognisable pattern
UNITS: Final = {"": 1, "b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB,
                "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(text: str) -> int:
    """`1GiB`, `100MiB`, `500MB` or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1GiB or 100MiB)")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


@dataclass
class Direction:
    """One transfer's figures."""

    size: int
    seconds: float = 0.0
    hashes_match: bool = False
    rss_growth: int = 0
    first_byte_after: float | None = None  # upload: when the upstream saw its first byte
    client_done_after: float | None = None  # upload: when the client had sent the last byte

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes)."""
        return self.size / self.seconds / 1e6 if self.seconds else 0.0


@dataclass
class Upstream:
    """U: `POST /v1/upload` hashes what arrives (at most `rate` bytes/s when set);
    `GET /v1/download?size=N` sends N pattern bytes with a Content-Length."""

    rate: float = 0.0
    started: float = 0.0
    first_byte_at: float | None = None
    upload_digest: str = ""
    sent_digest: str = ""

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=0)
        app.router.add_post("/v1/upload", self.upload)
        app.router.add_get("/v1/download", self.download)
        return app

    async def upload(self, request: web.Request) -> web.Response:
        """Read the body chunk by chunk, throttled, and answer its sha256 and size."""
        digest, received = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            if self.first_byte_at is None:
                self.first_byte_at = time.monotonic()
            digest.update(chunk)
            received += len(chunk)
            if self.rate:
                await asyncio.sleep(len(chunk) / self.rate)
        self.upload_digest = digest.hexdigest()
        return web.json_response({"sha256": self.upload_digest, "bytes": received})

    async def download(self, request: web.Request) -> web.StreamResponse:
        """Stream `size` bytes of the pattern."""
        size = int(request.query.get("size", "0"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        digest = hashlib.sha256()
        for piece in pattern(size):
            digest.update(piece)
            await response.write(piece)
        self.sent_digest = digest.hexdigest()
        await response.write_eof()
        return response


def pattern(size: int) -> Iterator[bytes]:
    """`size` bytes of BLOCK repeated, in BLOCK-sized pieces."""
    for offset in range(0, size, len(BLOCK)):
        yield BLOCK[:min(len(BLOCK), size - offset)]


@dataclass
class RssWatch:
    """Peak resident memory of a process above a baseline, from /proc/PID/status."""

    pid: int
    baseline: int = 0
    sampled_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def field_kib(self, name: str) -> int:
        """A `VmXXX:` field of /proc/PID/status in bytes."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else 0

    def start(self) -> None:
        """Take the baseline, reset the kernel's peak counter and start sampling."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM
        self.baseline = self.sampled_peak = self.field_kib("VmRSS")
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(OSError):
                self.sampled_peak = max(self.sampled_peak, self.field_kib("VmRSS"))

    def stop(self) -> int:
        """Stop sampling; the peak growth in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = max(self.sampled_peak, self.field_kib("VmHWM"))
        return max(0, peak - self.baseline)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def proxy_process(upstream: str, identity: str) -> AsyncIterator[tuple[str, int]]:
    """`python -m proxy serve` in front of `upstream`; yields its URL and pid."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}
    env |= {"ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD, "HOME": str(ROOT / ".cache")}
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
            "--identity-url", identity, "--username", simulator.ALICE,
            "--account", simulator.DEFAULT_ACCOUNT, "--project", simulator.DEV_PROJECT,
            "--log-level", "warning"]
    with tempfile.TemporaryFile() as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(f"{base}/_proxy/health", proc, stderr)
            yield base, proc.pid
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


async def wait_healthy(url: str, proc: asyncio.subprocess.Process, stderr: IO[bytes],
                       limit_s: float = 20) -> None:
    """Poll `url` until it answers 200; fail at once if the process exits."""
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                stderr.seek(0)
                err = stderr.read().decode(errors="replace")
                raise RuntimeError(f"the proxy exited with {proc.returncode}: {err[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {limit_s} s")


async def push_up(session: aiohttp.ClientSession, base: str, size: int,
                  upstream: Upstream, watch: RssWatch) -> Direction:
    """Upload `size` generated bytes chunked; compare the upstream's sha256 with ours."""
    result, digest = Direction(size), hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for piece in pattern(size):
            digest.update(piece)
            yield piece
        result.client_done_after = time.monotonic() - upstream.started

    upstream.first_byte_at = None
    watch.start()
    upstream.started = started = time.monotonic()
    async with session.post(f"{base}/v1/upload", data=body()) as resp:
        answer = await resp.json()
    result.seconds = time.monotonic() - started
    result.rss_growth = watch.stop()
    result.hashes_match = answer["sha256"] == digest.hexdigest() and answer["bytes"] == size
    if upstream.first_byte_at is not None:
        result.first_byte_after = upstream.first_byte_at - started
    return result


async def pull_down(session: aiohttp.ClientSession, base: str, size: int,
                    upstream: Upstream, watch: RssWatch) -> Direction:
    """Download `size` bytes, hashing as they arrive; compare with what the upstream sent."""
    result, digest, received = Direction(size), hashlib.sha256(), 0
    watch.start()
    started = time.monotonic()
    async with session.get(f"{base}/v1/download", params={"size": str(size)}) as resp:
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    result.seconds = time.monotonic() - started
    result.rss_growth = watch.stop()
    result.hashes_match = received == size and digest.hexdigest() == upstream.sent_digest
    return result


async def run(size: int, upstream_rate: float = 0.0) -> tuple[Direction, Direction]:
    """Start everything, warm the proxy up, then measure the upload and the download."""
    upstream = Upstream(rate=upstream_rate)
    sim = simulator.create_app(simulator.SimulatorOptions())
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with served(upstream.app()) as up_url, served(sim) as sim_url, \
            proxy_process(up_url, f"{sim_url}/api/v2/identity/auth") as (base, pid), \
            aiohttp.ClientSession(timeout=timeout) as session:
        await pull_down(session, base, 1024, upstream, RssWatch(pid))  # login, warm caches
        await push_up(session, base, 1024, upstream, RssWatch(pid))
        up = await push_up(session, base, size, upstream, RssWatch(pid))
        down = await pull_down(session, base, size, upstream, RssWatch(pid))
    return up, down


def report(name: str, result: Direction) -> str:
    """One line of figures."""
    line = (f"{name:<8} {result.size / MIB:8.1f} MiB in {result.seconds:6.2f} s = "
            f"{result.mb_per_s:7.1f} MB/s  sha256 {'ok' if result.hashes_match else 'MISMATCH'}"
            f"  proxy peak RSS growth {result.rss_growth / MIB:5.1f} MiB")
    if result.first_byte_after is not None and result.client_done_after is not None:
        line += (f"  (upstream's first byte after {result.first_byte_after:.3f} s, "
                 f"client done after {result.client_done_after:.2f} s)")
    return line


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit 1 if a hash differs or RSS growth passes --max-rss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=1024 * MIB,
                        help="bytes each way, e.g. 1GiB (default), 100MiB")
    parser.add_argument("--upstream-rate", type=float, default=0.0, metavar="MB_PER_S",
                        help="throttle the upstream's reading of the upload (default: no)")
    parser.add_argument("--max-rss", type=parse_size, default=64 * MIB,
                        help="fail above this peak RSS growth (default 64MiB)")
    args = parser.parse_args(argv)
    up, down = asyncio.run(run(args.size, args.upstream_rate * 1e6))
    print(report("upload", up))
    print(report("download", down))
    ok = all(r.hashes_match and r.rss_growth < args.max_rss for r in (up, down))
    print("PASS" if ok else f"FAIL (limit {args.max_rss / MIB:.0f} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
