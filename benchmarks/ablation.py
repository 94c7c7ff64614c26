"""Where zcompute-proxy's CPU goes: the same proxy with one feature switched off at a time.

    .venv/bin/python -m benchmarks.ablation            # 3 rounds of 3 s at 32 connections
    .venv/bin/python -m benchmarks.ablation --loop uvloop

A diagnostic, not a configuration: each variant is `python -m proxy serve` started through
this file with a feature replaced by a no-op (the access log line, the metrics, the guard);
`all-off` switches off all three and so leaves the forwarder itself. Next to them the
minimal aiohttp proxy of benchmarks/throughput.py. Same rig and layout as throughput.py
(proxy alone on CPU 1, wrk or the Python generator on CPU 0), interleaved rounds; prints CPU
ms per 1000 requests and req/s per variant, and the difference to the full proxy.
"""

from __future__ import annotations

import argparse
import os
import runpy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from benchmarks import throughput as bench

VARIANTS: Final = {
    "full": (), "no-access-log": ("log",), "no-metrics": ("metrics",),
    "no-guard": ("guard",), "all-off": ("log", "metrics", "guard"),
}


def switch_off(features: list[str]) -> None:
    """Replace `features` of the proxy by no-ops (before `proxy.cli` runs)."""
    from proxy import forward, guard, metrics  # noqa: PLC0415

    if "log" in features:
        forward._access_log = lambda *_args, **_kw: None
    if "metrics" in features:
        metrics.Metrics.request = lambda *_args, **_kw: None
    if "guard" in features:
        guard.Guard.install = lambda *_args: None


def serve(rig: bench.Rig, name: str, features: tuple[str, ...], *, upstream: bench.Server,
          identity: bench.Server, loop: str) -> bench.Server:
    """`python -m benchmarks.ablation proxy FEATURES serve ...` with the defaults of the
    zcompute-proxy variant of throughput.py."""
    return rig.spawn(name, [sys.executable, "-m", "benchmarks.ablation", "proxy",
                            ",".join(features) or "-", "serve", "--listen", "127.0.0.1:{port}",
                            "--upstream", upstream.url, "--identity-url",
                            f"{identity.url}/api/v2/identity/auth", "--username", "alice",
                            "--account", "demo", "--project", "dev", "--log-format", "json",
                            "--loop", loop],
                     cpu=bench.PROXY_CPU, ready_path="/_proxy/ready", env=bench.proxy_env())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the rounds; print and return CPU ms per 1000 requests and req/s per variant."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    pin, tool = bench.can_pin(), bench.load_tool(args.load)
    if pin:
        os.sched_setaffinity(0, {bench.LOAD_CPU})
    runs: list[bench.Run] = []
    with tempfile.TemporaryDirectory(prefix="zcp-ablation-") as tmp:
        rig = bench.Rig(Path(tmp), pin)
        try:
            upstream = rig.upstream()
            identity = rig.simulator("simulator", 3600.0)
            variants = [bench.Variant(name, server, server.pid) for name, server in (
                *((name, serve(rig, name, off, upstream=upstream, identity=identity,
                                     loop=args.loop))
                  for name, off in VARIANTS.items()),
                ("minimal", rig.minimal("minimal", upstream, args.loop)))]
            for variant in variants:
                bench.measure(variant, 32, 1.0, tool)  # warm up, log in
            for _ in range(args.rounds):
                runs += [bench.measure(variant, 32, args.seconds, tool) for variant in variants]
        finally:
            rig.stop()
    report = {}
    for variant in variants:
        mine = [r for r in runs if r.variant == variant.name]
        cpu = sum(r.cpu_ms or 0.0 for r in mine) / sum(r.requests for r in mine) * 1000
        report[variant.name] = {"cpu_ms_per_1000": round(cpu, 1),
                                "rps": round(statistics.median(r.rps for r in mine))}
    full = report["full"]["cpu_ms_per_1000"]
    print(f"{args.loop}, 32 connections, {tool}, {args.rounds} x {args.seconds:g} s")
    for name, row in report.items():
        print(f"{name:<14} {row['cpu_ms_per_1000']:7.1f} CPU ms/1000 "
              f"({row['cpu_ms_per_1000'] - full:+6.1f})  {row['rps']:6d} req/s")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "proxy":  # a variant: python -m ... proxy OFF ARGS
        switch_off([] if sys.argv[2] == "-" else sys.argv[2].split(","))
        sys.argv = ["zcompute-proxy", *sys.argv[3:]]
        runpy.run_module("proxy", run_name="__main__")
    else:
        main()
