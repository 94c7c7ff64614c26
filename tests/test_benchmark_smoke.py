"""benchmarks/throughput.py --quick runs end to end: figures for every variant, no failed
request, and one login per scope for 1000 concurrent cold requests. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_benchmark_produces_figures_and_one_login_per_scope(tmp_path: Path) -> None:
    """The Python load generator (wrk may be missing); nginx only when installed."""
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--quick", "--load", "python",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=220, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    table = report["throughput"]["table"]
    loops = report["throughput"]["loops"]
    expected = {"direct", *(f"{kind}/{loop}" for kind in ("zcompute-proxy", "minimal")
                            for loop in loops), f"renewing/{loops[-1]}"}
    assert expected <= set(table)
    assert ("nginx" in table) == report["throughput"]["nginx"]
    for name, by_connections in table.items():
        for connections in ("32", "1"):
            row = by_connections[connections]
            assert row["rps"] > 0, name
            assert 0 < row["p50_ms"] <= row["p99_ms"], name
            assert row["failed"] == 0, (name, connections, row)
            assert (row["cpu_ms_per_1000"] is None) == (name == "direct"), name
    for ratio in report["throughput"]["ratios"].values():
        assert ratio["rps_ratio_32"] > 0
        assert ratio["cpu_ratio_32"] > 0
    for name, lines in report["throughput"]["access_log_lines"].items():
        assert lines > 100, name  # access logging was on
    cold = report["cold_burst"]
    assert cold["statuses"] == {"200": 1000}
    assert cold["tokens_issued_by_scope"] == {"account": 1, "project:dev": 1, "project:prod": 1}
    assert (cold["simulator_password_logins"], cold["simulator_rescopes"]) == (1, 2)
    startup = report["startup"]
    assert startup["help_ms"] > 0
    assert all(ms > 0 for ms in startup["serve_ready_ms"].values())
