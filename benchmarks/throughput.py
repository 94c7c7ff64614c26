"""Throughput, latency and CPU: zcompute-proxy next to direct, a minimal aiohttp proxy and nginx.

    .venv/bin/python -m benchmarks.throughput             # 3 rounds of 5 s runs, about 5 min
    .venv/bin/python -m benchmarks.throughput --quick     # 1 round of 1 s runs, for CI

Everything runs on loopback and stops by itself. Layout on a 2-core machine: the proxy under
test (zcompute-proxy, the minimal proxy or nginx) alone on CPU 1; the load generator, the
upstream, the identity simulator and this script on CPU 0 (`taskset`; without it, or with
fewer than 2 CPUs, nothing is pinned and the report says so).

- upstream: a tiny aiohttp app (uvloop when installed) answering every request with the same
  small JSON body, whatever X-Auth-Token it gets;
- identity: the built-in simulator (`python -m proxy simulate`), which zcompute-proxy logs in to
  through `--identity-url`; the upstream stays the tiny app;
- variants, measured in interleaved rounds (A B C D ..., A B C D ...) at 32 and at 1 connection:
  direct to the upstream; zcompute-proxy with its defaults (access log on at INFO, JSON, written
  to a file) on each event loop; the minimal pass-through proxy below on each event loop;
  nginx with a static header (skipped when not installed); and zcompute-proxy against a
  simulator issuing 4 s tokens, so that it renews every ~2.4 s (renewal windows);
- load: `wrk` when installed, else the Python generator below (`--load` chooses);
- CPU: utime+stime of the proxy process from /proc/PID/stat before and after each run.

Afterwards: 1000 concurrent cold requests over three scopes against a fresh proxy and simulator
(logins per scope, statuses), `zcompute-proxy --help` wall time and `serve` time to ready.
Prints a table, then the whole report as one JSON line (also written to `--json FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

ROOT: Final = Path(__file__).resolve().parent.parent
PATH: Final = "/api/v2/compute/vms"
BODY: Final = json.dumps({"vms": [{"id": "4f9c2d7e", "name": "web-1", "status": "running"}]},
                         separators=(",", ":")).encode()
STATIC_TOKEN: Final = "benchmark-static-token"  # noqa: S105 - not a secret: the tiny upstream
LOAD_CPU: Final = 0
PROXY_CPU: Final = 1
CONNECTIONS: Final = (32, 1)
SHORT_TTL: Final = 4.0
COLD_BURST: Final = 1000
COLD_PATHS: Final = (("/api/v2/identity/projects", {}, "account"),
                     ("/api/v2/compute/vms", {}, "project:dev"),
                     ("/api/v2/compute/vms", {"X-Zcompute-Project": "prod"}, "project:prod"))
HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                               "transfer-encoding", "upgrade", "host"})
WRK_SCRIPT: Final = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %f, "errors": %d, "non_2xx": %d, '
    .. '"p50_ms": %f, "p99_ms": %f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""
NGINX_CONF: Final = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream tiny {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tiny;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Auth-Token "{token}";
        }}
    }}
}}
"""


# --- roles run as subprocesses: the upstream, the minimal proxy, the Python load generator ---

def event_loop_factory(loop: str) -> Any:
    """`uvloop.new_event_loop` for "uvloop" (or "auto" when installed), else None (asyncio)."""
    if loop == "asyncio" or (loop == "auto" and importlib.util.find_spec("uvloop") is None):
        return None
    import uvloop  # noqa: PLC0415 - optional

    return uvloop.new_event_loop


def run_app(app: web.Application, port: int, loop: str) -> None:
    """Serve `app` on 127.0.0.1:`port` until SIGTERM."""
    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        runner.run(serve())


def upstream_app() -> web.Application:
    """The tiny upstream: the same small JSON body for every request."""
    async def answer(request: web.Request) -> web.Response:
        if request.body_exists:
            await request.read()
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def minimal_app(upstream: str) -> web.Application:
    """The Python ceiling: one shared session, streaming both ways, a static header added."""
    base = upstream.rstrip("/")
    sessions: list[aiohttp.ClientSession] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in HOP_BY_HOP)
        headers["X-Auth-Token"] = STATIC_TOKEN
        async with sessions[0].request(
                request.method, URL(base + request.raw_path, encoded=True), headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=(
                (k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP))
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_context(_app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            sessions.append(session)
            yield

    app = web.Application()
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def python_load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """Closed-loop keep-alive GETs of `url` on `connections` connections for `seconds`."""
    target = URL(url)
    request = (f"GET {target.raw_path_qs} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
               "Accept: */*\r\n\r\n").encode()
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    end = started + seconds

    async def client() -> None:
        while time.perf_counter() < end:  # a new connection when the server closed one
            reader, writer = await asyncio.open_connection(target.host, target.port)
            try:
                keep_alive = True
                while keep_alive and time.perf_counter() < end:
                    sent = time.perf_counter()
                    writer.write(request)
                    status, keep_alive = await read_response(reader)
                    latencies.append(time.perf_counter() - sent)
                    counts["ok" if 200 <= status < 400 else "non_2xx"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counts["errors"] += 1
                return
            finally:
                writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies) or [0.0]
    return {"requests": len(latencies), "seconds": elapsed, "errors": counts["errors"],
            "non_2xx": counts["non_2xx"], "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99)}


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response (Content-Length or chunked); its status and whether the
    connection stays open."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    if "transfer-encoding: chunked" in head:
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        for line in head.split("\r\n"):
            if line.startswith("content-length:"):
                await reader.readexactly(int(line.partition(":")[2]))
    return status, "\r\nconnection: close\r\n" not in head


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def role_main(argv: list[str]) -> int:
    """`upstream PORT LOOP`, `minimal PORT LOOP UPSTREAM`, `load URL CONNECTIONS SECONDS`."""
    role = argv[0]
    if role == "upstream":
        run_app(upstream_app(), int(argv[1]), argv[2])
    elif role == "minimal":
        run_app(minimal_app(argv[3]), int(argv[1]), argv[2])
    else:
        loop = event_loop_factory("auto")
        with asyncio.Runner(loop_factory=loop) as runner:
            result = runner.run(python_load(argv[1], int(argv[2]), float(argv[3])))
        print("LOAD_JSON " + json.dumps(result), flush=True)
    return 0


# --- the orchestration ---

def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_pin() -> bool:
    """`taskset` is there and this process may use CPUs 0 and 1."""
    return shutil.which("taskset") is not None and {LOAD_CPU, PROXY_CPU} <= os.sched_getaffinity(0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_env(password: str = "alice-pass") -> dict[str, str]:  # noqa: S107 - simulator demo user
    """The environment for `python -m proxy`: no ZCOMPUTE_* of the caller, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}
    return env | {"ZCOMPUTE_PASSWORD": password, "HOME": str(ROOT / ".cache")}


@dataclass
class Server:
    """A process of ours listening on `url`; `pid` is the one whose CPU is measured."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id (taskset execs, so it is the server's own)."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Rig:
    """Every process of a run, and where to put their logs."""

    workdir: Path
    pin: bool
    servers: list[Server] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], *, cpu: int | None, ready_path: str,
              env: dict[str, str] | None = None, port: int | None = None) -> Server:
        """Start `argv` (pinned to `cpu`) and wait until GET `ready_path` answers 200."""
        port = port or free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        if self.pin and cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env or os.environ.copy(),  # noqa: S603
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        server = Server(name, f"http://127.0.0.1:{port}", proc, log)
        self.servers.append(server)
        wait_ready(server, ready_path)
        return server

    def upstream(self) -> Server:
        """The tiny upstream, on the load generator's CPU."""
        return self.spawn("upstream", [sys.executable, "-m", "benchmarks.throughput",
                                       "upstream", "{port}", "auto"],
                          cpu=LOAD_CPU, ready_path="/")

    def simulator(self, name: str, ttl: float) -> Server:
        """`python -m proxy simulate` issuing `ttl`-second tokens."""
        return self.spawn(name, [sys.executable, "-m", "proxy", "simulate", "--listen",
                                 "127.0.0.1:{port}", "--token-ttl", str(ttl)],
                          cpu=LOAD_CPU, ready_path="/_sim/stats", env=proxy_env())

    def zcompute(self, name: str, upstream: Server, identity: Server, loop: str) -> Server:
        """`python -m proxy serve` with its defaults: access log at INFO, JSON, to a file."""
        return self.spawn(name, [sys.executable, "-m", "proxy", "serve", "--listen",
                                 "127.0.0.1:{port}", "--upstream", upstream.url,
                                 "--identity-url", f"{identity.url}/api/v2/identity/auth",
                                 "--username", "alice", "--account", "demo", "--project", "dev",
                                 "--log-format", "json", "--loop", loop],
                          cpu=PROXY_CPU, ready_path="/_proxy/ready", env=proxy_env())

    def minimal(self, name: str, upstream: Server, loop: str) -> Server:
        """The minimal aiohttp proxy of this file."""
        return self.spawn(name, [sys.executable, "-m", "benchmarks.throughput", "minimal",
                                 "{port}", loop, upstream.url],
                          cpu=PROXY_CPU, ready_path="/")

    def nginx(self, upstream: Server) -> Server | None:
        """nginx with one worker process and a static header; None when not installed."""
        binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
        if binary is None:
            return None
        prefix, port = self.workdir / "nginx", free_port()
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, token=STATIC_TOKEN,
                                          upstream=URL(upstream.url).port))
        return self.spawn("nginx", [binary, "-p", str(prefix), "-c", str(conf),
                                    "-e", str(prefix / "error.log")],
                          cpu=PROXY_CPU, ready_path="/", port=port)

    def stop(self) -> None:
        """Stop everything, proxies first."""
        for server in reversed(self.servers):
            server.stop()


def wait_ready(server: Server, path: str, limit: float = 20.0) -> float:
    """Poll GET `path` until it answers 200; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-1500:]}")
        if http_status(server.url + path) == 200:
            return time.monotonic() - started
        time.sleep(0.002)
    raise TimeoutError(f"{server.name}: {path} did not answer 200 within {limit} s")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of one GET over a fresh connection, None if it cannot be had."""
    target = URL(url)
    try:
        with socket.create_connection((target.host or "", target.port or 80), timeout) as sock:
            sock.sendall(f"GET {target.raw_path_qs} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Connection: close\r\n\r\n".encode())
            first = sock.recv(64).split(b" ", 2)
            return int(first[1]) if len(first) > 1 else None
    except (OSError, ValueError):
        return None


@dataclass
class Run:
    """One load run against one variant."""

    variant: str
    connections: int
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    cpu_ms: float | None

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def load(url: str, connections: int, seconds: float, tool: str) -> dict[str, Any]:
    """One run of `wrk` or of the Python generator, on this process's CPU."""
    if tool == "wrk":
        script = Path(tempfile.gettempdir()) / "zcompute-proxy-bench.lua"
        script.write_text(WRK_SCRIPT)
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
                "-s", str(script), url]
        marker = "WRK_JSON "
    else:
        argv = [sys.executable, "-m", "benchmarks.throughput", "load", url, str(connections),
                str(seconds)]
        marker = "LOAD_JSON "
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,  # noqa: S603
                          timeout=seconds + 30, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(marker):
            result: dict[str, Any] = json.loads(line[len(marker):])
            return result
    raise RuntimeError(f"{argv[0]} printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")


@dataclass(frozen=True)
class Variant:
    """What is measured: `server`, and the process whose CPU counts (None: direct)."""

    name: str
    server: Server
    cpu_pid: int | None


def measure(variant: Variant, connections: int, seconds: float, tool: str) -> Run:
    """Load the variant for `seconds`; the proxy's CPU time from /proc around the run."""
    pid = variant.cpu_pid
    before = cpu_seconds(pid) if pid else 0.0
    result = load(variant.server.url + PATH, connections, seconds, tool)
    cpu = 1000 * (cpu_seconds(pid) - before) if pid else None
    return Run(variant.name, connections, result["requests"], result["seconds"], result["errors"],
               result["non_2xx"], result["p50_ms"], result["p99_ms"], cpu)


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians over rounds; CPU per 1000 requests over all of them."""
    requests = sum(r.requests for r in runs)
    cpu = [r.cpu_ms for r in runs if r.cpu_ms is not None]
    return {
        "rps": round(statistics.median(r.rps for r in runs)),
        "rps_range": [round(min(r.rps for r in runs)), round(max(r.rps for r in runs))],
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
        "p99_ms_range": [round(min(r.p99_ms for r in runs), 3),
                         round(max(r.p99_ms for r in runs), 3)],
        "cpu_ms_per_1000": round(1000 * sum(cpu) / requests, 1) if cpu and requests else None,
        "requests": requests, "failed": sum(r.errors + r.non_2xx for r in runs),
    }


def ratios(table: dict[str, dict[int, dict[str, Any]]], loop: str) -> dict[str, Any]:
    """zcompute-proxy against the minimal proxy on the same event loop, with the targets."""
    ours, best = table.get(f"zcompute-proxy/{loop}"), table.get(f"minimal/{loop}")
    if ours is None or best is None:
        return {}
    rps = ours[32]["rps"] / best[32]["rps"]
    cpu_ours, cpu_best = ours[32]["cpu_ms_per_1000"], best[32]["cpu_ms_per_1000"]
    cpu = cpu_ours / cpu_best if cpu_ours and cpu_best else None
    p50 = ours[1]["p50_ms"] - best[1]["p50_ms"]
    return {"rps_ratio_32": round(rps, 3), "rps_ratio_1": round(ours[1]["rps"] / best[1]["rps"], 3),
            "cpu_ratio_32": round(cpu, 3) if cpu else None,
            "p50_delta_ms_1": round(p50, 3),
            "targets": {"rps >= 0.9x": rps >= 0.9, "cpu <= 1.15x": bool(cpu and cpu <= 1.15),
                        "p50 <= +0.05 ms": p50 <= 0.05}}


def loops_to_measure(choice: str) -> list[str]:
    """`both`: asyncio and uvloop (uvloop only when installed)."""
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if choice == "both":
        return ["asyncio", "uvloop"] if has_uvloop else ["asyncio"]
    if choice == "uvloop" and not has_uvloop:
        raise SystemExit("uvloop is not installed: pip install -e '.[speed]'")
    return [choice]


def load_tool(choice: str) -> str:
    """`wrk` when asked for or found, else `python`."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    return choice


def throughput(rig: Rig, args: argparse.Namespace, tool: str) -> dict[str, Any]:
    """The interleaved rounds over every variant at each connection count."""
    upstream = rig.upstream()
    identity = rig.simulator("simulator", 3600.0)
    renewing_identity = rig.simulator("simulator-short-ttl", SHORT_TTL)
    loops = loops_to_measure(args.loop)
    variants = [Variant("direct", upstream, None)]
    for loop in loops:
        ours = rig.zcompute(f"zcompute-proxy-{loop}", upstream, identity, loop)
        best = rig.minimal(f"minimal-{loop}", upstream, loop)
        variants += [Variant(f"zcompute-proxy/{loop}", ours, ours.pid),
                     Variant(f"minimal/{loop}", best, best.pid)]
    nginx = rig.nginx(upstream) if not args.no_nginx else None
    if nginx is not None:
        variants.append(Variant("nginx", nginx, nginx.pid))
    renewing = rig.zcompute("zcompute-proxy-renewing", upstream, renewing_identity, loops[-1])
    variants.append(Variant(f"renewing/{loops[-1]}", renewing, renewing.pid))
    for variant in variants:  # warm up: logins, connection pools, code paths
        measure(variant, 32, min(1.0, args.seconds), tool)
    issued_before = sim_stats(renewing_identity)["identity"]["issued"]
    runs: list[Run] = []
    for _ in range(args.rounds):
        for variant in variants:
            for connections in CONNECTIONS:
                run = measure(variant, connections, args.seconds, tool)
                runs.append(run)
                print(f"  {variant.name:<24} c={connections:<3} {run.rps:9.0f} req/s  p50 "
                      f"{run.p50_ms:6.3f} ms  p99 {run.p99_ms:6.3f} ms", file=sys.stderr)
    table = {v.name: {c: summarize([r for r in runs if r.variant == v.name
                                    and r.connections == c]) for c in CONNECTIONS}
             for v in variants}
    renewals = sim_stats(renewing_identity)["identity"]["issued"] - issued_before
    return {"loops": loops, "nginx": nginx is not None, "table": table,
            "ratios": {loop: ratios(table, loop) for loop in loops},
            "renewal": renewal_report(table, loops[-1], renewals),
            "access_log_lines": {s.name: count_lines(s.log) for s in rig.servers
                                 if s.name.startswith("zcompute-proxy")}}


def renewal_report(table: dict[str, dict[int, dict[str, Any]]], loop: str,
                   tokens_issued: int) -> dict[str, Any]:
    """p99 of the proxy renewing every few seconds against the same proxy with 1 h tokens."""
    steady, renewing = table[f"zcompute-proxy/{loop}"], table[f"renewing/{loop}"]
    return {"token_ttl_s": SHORT_TTL, "tokens_issued_during_rounds": tokens_issued,
            **{f"p99_ms_{c}": {"steady": steady[c]["p99_ms"], "renewing": renewing[c]["p99_ms"],
                               "steady_range": steady[c]["p99_ms_range"],
                               "renewing_range": renewing[c]["p99_ms_range"]}
               for c in CONNECTIONS}}


def count_lines(path: Path) -> int:
    """Lines in a file."""
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def sim_stats(server: Server) -> dict[str, Any]:
    """The simulator's counters."""
    with socket.create_connection(("127.0.0.1", URL(server.url).port or 80), 5) as sock:
        sock.sendall(b"GET /_sim/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    stats: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
    return stats


def cold_burst(rig: Rig, requests: int) -> dict[str, Any]:
    """`requests` concurrent requests over three scopes against a proxy that has no token."""
    upstream = next(s for s in rig.servers if s.name == "upstream")
    identity = rig.simulator("simulator-cold", 3600.0)
    proxy = rig.zcompute("zcompute-proxy-cold", upstream, identity, "auto")
    started = time.perf_counter()
    statuses = asyncio.run(burst(proxy.url, requests))
    seconds = time.perf_counter() - started
    events = [json.loads(line) for line in proxy.log.read_text().splitlines()
              if line.startswith("{")]
    issued = Counter(e["scope"] for e in events if e.get("event") == "token_issued")
    stats = sim_stats(identity)
    return {"requests": requests, "seconds": round(seconds, 3),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "tokens_issued_by_scope": dict(sorted(issued.items())),
            "simulator_password_logins": stats["identity"]["password"],
            "simulator_rescopes": stats["identity"]["token"]}


async def burst(base: str, requests: int) -> Counter[int]:
    """All `requests` at once, each on its own connection."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(index: int) -> None:
            path, headers, _ = COLD_PATHS[index % len(COLD_PATHS)]
            try:
                async with session.get(base + path, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[599] += 1

        await asyncio.gather(*(one(i) for i in range(requests)))
    return statuses


def startup(rig: Rig, repeats: int) -> dict[str, Any]:
    """`zcompute-proxy --help` wall time, and `serve` from exec to /_proxy/ready = 200."""
    script = Path(sys.executable).parent / "zcompute-proxy"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]
    helps = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, check=True,  # noqa: S603
                       timeout=30, env=proxy_env())
        helps.append(time.perf_counter() - started)
    upstream = next(s for s in rig.servers if s.name == "upstream")
    identity = next(s for s in rig.servers if s.name.startswith("simulator"))
    ready = {}
    for loop in ("asyncio", "uvloop") if importlib.util.find_spec("uvloop") else ("asyncio",):
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            server = rig.zcompute(f"zcompute-proxy-start-{loop}-{i}", upstream, identity, loop)
            times.append(time.perf_counter() - started)
            server.stop()
        ready[loop] = round(1000 * statistics.median(times))
    return {"help_command": " ".join(Path(c).name for c in command) + " --help",
            "help_ms": round(1000 * statistics.median(helps)),
            "serve_ready_ms": ready}


def print_table(report: dict[str, Any]) -> None:
    """The human-readable summary."""
    bench = report["throughput"]
    print(f"\nload: {report['load']}, {report['rounds']} rounds x {report['seconds']} s per run; "
          f"layout: {report['layout']}")
    print(f"{'variant':<24} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms/1000':>11}")
    for name, by_conns in bench["table"].items():
        for connections, row in by_conns.items():
            cpu = "-" if row["cpu_ms_per_1000"] is None else f"{row['cpu_ms_per_1000']:.1f}"
            print(f"{name:<24} {connections:>5} {row['rps']:>8} {row['p50_ms']:>8.3f} "
                  f"{row['p99_ms']:>8.3f} {cpu:>11}")
    for loop, ratio in bench["ratios"].items():
        print(f"zcompute-proxy vs minimal ({loop}): {json.dumps(ratio)}")
    print(f"renewal windows: {json.dumps(bench['renewal'])}")
    print(f"cold burst: {json.dumps(report['cold_burst'])}")
    print(f"startup: {json.dumps(report['startup'])}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run everything; print the table and the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s runs")
    parser.add_argument("--loop", choices=("both", "asyncio", "uvloop"), default="both")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--cold", type=int, default=COLD_BURST, help="cold burst size")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    pin = can_pin()
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})  # children inherit it; proxies get taskset -c 1
    tool = load_tool(args.load)
    report: dict[str, Any] = {
        "load": tool, "rounds": args.rounds, "seconds": args.seconds,
        "layout": (f"proxy under test on CPU {PROXY_CPU}; load, upstream, simulator on "
                   f"CPU {LOAD_CPU}") if pin else "not pinned (no taskset or < 2 CPUs)",
        "access_log": "zcompute-proxy: JSON at INFO to a file (stderr redirected)",
    }
    with tempfile.TemporaryDirectory(prefix="zcp-bench-") as tmp:
        rig = Rig(Path(tmp), pin)
        try:
            report["throughput"] = throughput(rig, args, tool)
            report["cold_burst"] = cold_burst(rig, args.cold)
            report["startup"] = startup(rig, 1 if args.quick else 5)
        finally:
            rig.stop()
    print_table(report)
    line = json.dumps(report)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("upstream", "minimal", "load"):
        sys.exit(role_main(sys.argv[1:]))
    main()
