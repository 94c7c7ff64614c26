"""What the per-request shortcuts (issue 8) must keep: remembered route decisions follow a
reload, log lines are batched per loop step but never lost or reordered, the redactor's one
pass still finds every secret, metrics count as before."""

from __future__ import annotations

import asyncio
import io
import json

import structlog

from proxy import log
from proxy.config import parse_route_flag
from proxy.errors import BadRequest
from proxy.metrics import Metrics
from proxy.routes import CACHE_SIZE, CACHED_TARGET_LENGTH, RouteTable


def test_route_decisions_are_remembered_and_follow_a_reload() -> None:
    """Same request line, same decision; `adopt` (a reload) forgets them all."""
    table = RouteTable([], default_project="dev")
    first = table.resolve("GET", "/api/v2/engines?x=1")
    assert table.resolve("GET", "/api/v2/engines?x=1") is first
    assert str(table.resolve("GET", "/api/v2/engines", "prod").scope) == "project:prod"
    table.adopt(RouteTable([parse_route_flag("/api/v2/engines=account")], default_project="ops"))
    assert str(table.resolve("GET", "/api/v2/engines?x=1").scope) == "account"
    assert str(table.resolve("GET", "/api/v2/compute/vms").scope) == "project:ops"


def test_refusals_and_long_targets_are_decided_each_time() -> None:
    """A refused target raises every time; long targets are not kept; the memory is bounded."""
    table = RouteTable([], default_project="dev")
    for _ in range(2):
        try:
            table.resolve("GET", "/api/v2/../secret")
        except BadRequest:
            pass
        else:
            raise AssertionError("dot segments must be refused")
    long_target = "/api/v2/vms/" + "a" * CACHED_TARGET_LENGTH
    assert table.resolve("GET", long_target) is not table.resolve("GET", long_target)
    for i in range(CACHE_SIZE + 10):
        table.resolve("GET", f"/api/v2/vms/{i}")
    assert len(table._decided) <= CACHE_SIZE


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_lines_of_one_loop_step_are_written_together_in_order() -> None:
    """Inside a loop: written at the end of the step, in order; `flush` writes at once."""
    stream = io.StringIO()
    log.configure("info", "json", stream)
    try:
        logger = structlog.get_logger("test.hot_path")
        logger.info("first", n=1)
        logger.warning("second", n=2)
        assert stream.getvalue() == ""
        await asyncio.sleep(0)
        assert [e["event"] for e in _events(stream)] == ["first", "second"]
        logger.info("third")
        log.flush()
        assert _events(stream)[-1]["event"] == "third"
    finally:
        structlog.reset_defaults()


def test_outside_a_loop_lines_are_written_at_once() -> None:
    """No running loop (start-up, one-shot commands): nothing waits."""
    stream = io.StringIO()
    log.configure("info", "json", stream)
    try:
        structlog.get_logger("test.hot_path").info("now", secret_free=True)
        (event,) = _events(stream)
        assert (event["event"], event["level"]) == ("now", "info")
        assert event["timestamp"].endswith("Z")
    finally:
        structlog.reset_defaults()


def test_redactor_finds_a_secret_in_any_string_value() -> None:
    """The joined search finds a secret in the last value as well as the first, and only
    the values holding one change."""
    redactor = log.Redactor()
    redactor.add("hunter2-password")
    event = {"event": "x", "a": "clean", "n": 3, "b": "url?p=hunter2-password"}
    out = redactor(None, "info", dict(event))
    assert "hunter2-password" not in json.dumps(out)
    assert out["a"] == "clean"
    assert out["b"].startswith("url?p=<sha256:")
    assert out["n"] == 3
    assert redactor(None, "info", {"event": "y", "e": ValueError("hunter2-password")})["e"] \
        .startswith("ValueError('<sha256:")


def test_metrics_count_the_same_with_remembered_counters() -> None:
    """Repeated and unknown methods land on the same labelled counters as before."""
    metrics = Metrics(list)
    for method in ("GET", "GET", "BREW", "PURGE"):
        metrics.request("project", method, 200, total=0.001, upstream=0.0005, body_bytes=10,
                        upload_bytes=0)
    text = metrics.render().decode()
    assert 'zcompute_proxy_requests_total{method="GET",scope="project",status="200"} 2.0' in text
    assert 'zcompute_proxy_requests_total{method="OTHER",scope="project",status="200"} 2.0' \
        in text
    assert 'zcompute_proxy_request_seconds_count{part="total"} 4.0' in text
