"""`serve --loop` (ZCOMPUTE_LOOP): uvloop when installed, asyncio on request, clear errors."""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest

from proxy import cli, simulator
from proxy.errors import ConfigError
from tests.processes import free_port, run, running

ENV = {"ZCOMPUTE_USERNAME": simulator.ALICE, "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
       "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT, "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD}


def test_asyncio_is_asyncios_own_loop() -> None:
    """`asyncio`: no factory, asyncio.Runner's default loop."""
    assert cli.event_loop_factory("asyncio") is None


def test_auto_is_uvloop_when_installed() -> None:
    """`auto` (the default) and `uvloop` run on uvloop when it can be imported."""
    uvloop = pytest.importorskip("uvloop")
    assert cli.event_loop_factory("auto") is uvloop.new_event_loop
    assert cli.event_loop_factory("uvloop") is uvloop.new_event_loop


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not installed: `auto` quietly means asyncio; asking for uvloop says how to get it."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # importing it raises ImportError
    assert cli.event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match=r"zcompute-proxy\[speed\]"):
        cli.event_loop_factory("uvloop")


def test_an_unknown_environment_value_is_exit_2() -> None:
    """ZCOMPUTE_LOOP is checked like any setting: one `Error:` line, exit 2."""
    result = run(["serve", "--upstream", "http://127.0.0.1:9"],
                 env={**ENV, "ZCOMPUTE_LOOP": "trio"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("Error: ZCOMPUTE_LOOP must be one of auto, asyncio, uvloop, "
                                     "not 'trio'")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_runs_on_the_chosen_loop_and_says_so(loop: str) -> None:
    """The start line names the loop; the proxy serves on it."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    sim_port, port = free_port(), free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    target = f"http://127.0.0.1:{port}/api/v2/compute/vms"
    with running(["simulate", "--listen", f"127.0.0.1:{sim_port}"], f"{sim}/_sim/stats"), \
            running(["serve", "--listen", f"127.0.0.1:{port}", "--upstream", sim, "--loop", loop,
                     "--log-format", "json"], f"http://127.0.0.1:{port}/_proxy/ready",
                    ENV) as proxy, \
            urllib.request.urlopen(target, timeout=10) as response:
        assert response.status == 200
    events = [json.loads(line) for line in proxy.stderr().splitlines() if line.startswith("{")]
    (listening,) = [e for e in events if e["event"] == "proxy_listening"]
    assert listening["loop"] == loop
