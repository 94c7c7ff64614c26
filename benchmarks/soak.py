"""Soak the token lifecycle: short-lived tokens, concurrent clients, outages, revocation, lockout.

Starts the built-in simulator and the proxy as subprocesses on loopback, drives them with
concurrent aiohttp clients for a bounded time, and prints what a user would ask:

    python benchmarks/soak.py                   # all scenarios, 60 s soaks (about 3.5 minutes)
    python benchmarks/soak.py --duration 8      # the short version CI runs
    python benchmarks/soak.py --scenario outage

Scenarios:
  steady    5 s tokens (re-scoped project tokens too), 32 clients: failures, logins, and p99
            latency inside renewal windows vs outside
  outage    the same with identity down for 10 s in the middle
  revoke    every token revoked at once in the middle: client-visible 401s for GETs
  lockout   simulator locks after 3 failures; wrong password; 1000 requests over 10 s

Every loop is bounded in count and time and the script stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
OUTAGE_SECONDS = 10.0
PATHS = (("/api/v2/compute/vms", {}),
         ("/api/v2/compute/vms", {"X-Zcompute-Project": "prod"}),
         ("/api/v2/identity/users", {}))


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A subprocess of ours with its stderr in a file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def start(args: list[str], env: dict[str, str], workdir: Path, name: str) -> Process:
    """Start `python -m proxy ARGS` with its log in `workdir/name.log`."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], cwd=ROOT,  # noqa: S603
                                env={**os.environ, **env}, stdout=out, stderr=out)
    return Process(proc, log)


async def wait_ready(url: str, process: Process, deadline: float = 15) -> None:
    """Poll until `url` answers 200 (bounded)."""
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < end:
            if process.proc.poll() is not None:
                raise RuntimeError(f"{process.log.name} exited: {process.log.read_text()[-800:]}")
            try:
                async with client.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(url)


@dataclass
class Rig:
    """Simulator + proxy."""

    sim_url: str
    proxy_url: str
    sim: Process
    proxy: Process

    def stop(self) -> None:
        """Stop both."""
        self.proxy.stop()
        self.sim.stop()


async def start_rig(workdir: Path, *, token_ttl: float, lockout: int = 0,
                    password: str = "alice-pass") -> Rig:  # noqa: S107 - the demo user
    """Start the simulator and a proxy logging JSON at INFO."""
    sim_port, proxy_port = free_port(), free_port()
    sim_args = ["simulate", "--listen", f"127.0.0.1:{sim_port}", "--token-ttl", str(token_ttl)]
    if lockout:
        sim_args += ["--lockout", str(lockout)]
    sim = start(sim_args, {}, workdir, "simulator")
    sim_url = f"http://127.0.0.1:{sim_port}"
    await wait_ready(f"{sim_url}/_sim/stats", sim)
    env = {"ZCOMPUTE_URL": sim_url, "ZCOMPUTE_USERNAME": "alice", "ZCOMPUTE_ACCOUNT": "demo",
           "ZCOMPUTE_PROJECT": "dev", "ZCOMPUTE_PASSWORD": password,
           "ZCOMPUTE_LOG_FORMAT": "json"}
    proxy = start(["serve", "--listen", f"127.0.0.1:{proxy_port}"], env, workdir, "proxy")
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    await wait_ready(f"{proxy_url}/_proxy/health", proxy)
    return Rig(sim_url, proxy_url, sim, proxy)


@dataclass
class Sample:
    """One client request."""

    started: float
    seconds: float
    status: int


@dataclass
class Load:
    """Samples of a load run."""

    samples: list[Sample] = field(default_factory=list)

    def failures(self) -> int:
        """Requests that did not get 200."""
        return sum(s.status != 200 for s in self.samples)

    def statuses(self) -> dict[int, int]:
        """Count by status."""
        counts: dict[int, int] = {}
        for sample in self.samples:
            counts[sample.status] = counts.get(sample.status, 0) + 1
        return dict(sorted(counts.items()))


async def drive(url: str, clients: int, duration: float, load: Load) -> None:
    """`clients` loops of GETs over PATHS until `duration` has passed."""
    end = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(index: int) -> None:
            n = index
            while time.monotonic() < end:
                path, headers = PATHS[n % len(PATHS)]
                n += 1
                started = time.monotonic()
                try:
                    async with session.get(url + path, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    status = 599
                load.samples.append(Sample(started, time.monotonic() - started, status))

        await asyncio.gather(*(client(i) for i in range(clients)))


def p99(values: list[float]) -> float:
    """99th percentile in milliseconds (0 for no values)."""
    if len(values) < 2:
        return 1000 * (values[0] if values else 0.0)
    return 1000 * statistics.quantiles(values, n=100)[98]


def renewal_split(load: Load, events: list[dict[str, Any]], t0_wall: float,
                  t0_mono: float) -> tuple[list[float], list[float]]:
    """Latencies of requests within 0.25 s of a token issue (renewal windows) vs the rest."""
    issued = [_epoch(e["timestamp"]) - t0_wall + t0_mono for e in events
              if e.get("event") == "token_issued"]
    inside, outside = [], []
    for sample in load.samples:
        near = any(abs(sample.started - t) < 0.25 for t in issued)
        (inside if near else outside).append(sample.seconds)
    return inside, outside


def _epoch(text: str) -> float:
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def event_timing(load: Load, event_at: float, outage: float) -> dict[str, float | None]:
    """Seconds from the mid-soak event to the first failure, and from its end to recovery."""
    failures = [s.started for s in load.samples if s.status != 200 and s.started >= event_at]
    first = round(min(failures) - event_at, 2) if failures else None
    end = event_at + outage
    later = [s for s in load.samples if s.started >= max(end, max(failures, default=end))]
    recovered = round(min(s.started for s in later) - end, 2) if failures and later else None
    return {"first_failure_s_after_event": first, "recovered_s_after_event_end": recovered}


async def sim_post(rig: Rig, path: str) -> None:
    """POST to a simulator control endpoint."""
    async with aiohttp.ClientSession() as client, client.post(rig.sim_url + path) as resp:
        await resp.read()


async def sim_stats(rig: Rig) -> dict[str, Any]:
    """The simulator's counters."""
    async with aiohttp.ClientSession() as client, client.get(rig.sim_url + "/_sim/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


async def soak(workdir: Path, duration: float, clients: int, event: str | None) -> dict[str, Any]:
    """One soak with 5 s tokens; `event` (outage/revoke) happens in the middle."""
    rig = await start_rig(workdir, token_ttl=5.0)
    try:
        load = Load()
        t0_wall, t0_mono = time.time(), time.monotonic()
        driving = asyncio.create_task(drive(rig.proxy_url, clients, duration, load))
        await asyncio.sleep(duration / 2)
        event_at = time.monotonic()
        if event == "outage":
            await sim_post(rig, f"/_sim/outage?seconds={OUTAGE_SECONDS:g}")
        elif event == "revoke":
            await sim_post(rig, "/_sim/revoke")
        await driving
        stats = await sim_stats(rig)
        inside, outside = renewal_split(load, rig.proxy.events(), t0_wall, t0_mono)
    finally:
        rig.stop()
    return {"requests": len(load.samples), "statuses": load.statuses(),
            **event_timing(load, event_at, OUTAGE_SECONDS if event == "outage" else 0.0),
            "failed": load.failures(), "logins": stats["identity"]["password"],
            "rescopes": stats["identity"]["token"], "identity_during_outage":
            stats["identity"]["outage"], "scopes_issued": stats["scopes"],
            "p99_ms_renewal_windows": round(p99(inside), 2), "p99_ms_elsewhere":
            round(p99(outside), 2), "requests_in_windows": len(inside)}


async def lockout(workdir: Path, requests: int, seconds: float) -> dict[str, Any]:
    """Wrong password against a simulator that locks after 3 failures."""
    rig = await start_rig(workdir, token_ttl=3600, lockout=3,
                          password="wrong-password")  # noqa: S106 - a wrong one on purpose
    statuses: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession() as client:
            for i in range(requests):
                async with client.get(rig.proxy_url + PATHS[i % 3][0]) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                await asyncio.sleep(seconds / requests)
            stats = await sim_stats(rig)
            body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "domain": {"name": "demo"}, "password": "alice-pass"}}},
                "scope": {"domain": {"name": "demo"}}}}
            async with client.post(rig.sim_url + "/api/v2/identity/auth", json=body) as resp:
                still_usable = resp.status == 201
    finally:
        rig.stop()
    return {"requests": requests, "statuses": statuses,
            "login_attempts": stats["identity"]["password"],
            "failed_logins": stats["identity"]["failures"], "account_usable_after": still_usable}


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen scenarios and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per soak")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--lockout-requests", type=int, default=1000)
    parser.add_argument("--lockout-seconds", type=float, default=10.0)
    parser.add_argument("--scenario", action="append",
                        choices=("steady", "outage", "revoke", "lockout"))
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["steady", "outage", "revoke", "lockout"]
    report: dict[str, Any] = {"duration_s": args.duration, "clients": args.clients,
                              "token_ttl_s": 5.0}
    with tempfile.TemporaryDirectory() as tmp:
        for name in scenarios:
            workdir = Path(tmp) / name
            workdir.mkdir()
            if name == "lockout":
                report[name] = await lockout(workdir, args.lockout_requests,
                                             args.lockout_seconds)
            else:
                event = None if name == "steady" else name
                report[name] = await soak(workdir, args.duration, args.clients, event)
            print(json.dumps({name: report[name]}), flush=True)
    return report


if __name__ == "__main__":
    asyncio.run(main())
