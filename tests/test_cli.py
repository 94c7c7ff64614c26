"""The command line, run as real subprocesses against a real simulator."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import simulator
from tests.processes import ROOT, free_port, run, running

DEMO_ENV = {
    "ZCOMPUTE_USERNAME": simulator.ALICE,
    "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
    "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT,
    "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD,
}


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    """`zcompute-proxy simulate` running on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["simulate", "--listen", f"127.0.0.1:{port}"], f"{url}/_sim/stats"):
        yield url


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return resp.status, resp.read()


@pytest.mark.parametrize("command", ["serve", "simulate", "demo", "token", "check", "routes",
                                     "login", "reload", "totp"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    """`zcompute-proxy COMMAND --help` exits 0 and shows an example."""
    result = run([command, "--help"])
    assert result.returncode == 0
    assert "example" in result.stdout
    assert "zcompute-proxy" in result.stdout


def test_missing_setting_is_one_line_and_exit_2() -> None:
    """Without an upstream the proxy refuses to start with one clear line, exit code 2."""
    result = run(["serve"], env={"ZCOMPUTE_USERNAME": "me"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: upstream.url is not set; set ZCOMPUTE_URL=https://zcompute.example.com "
        "(or upstream.url in the config file)"]


def test_password_is_not_a_flag() -> None:
    """There is no --password flag (process lists are readable by other users)."""
    result = run(["serve", "--password", "x"])
    assert result.returncode == 2
    assert "unrecognized arguments: --password" in result.stderr


def test_routes_explains_each_path() -> None:
    """`routes` prints the scope and the rule that decided it, configured rules first."""
    result = run(["routes", "/api/v2/compute/vms", "/api/v2/identity/users",
                  "/api/v2/aws/ec2/", "/api/v2/engines", "--route", "/api/v2/engines=account"],
                 env={"ZCOMPUTE_URL": "https://zc.example.com", "ZCOMPUTE_PROJECT": "dev"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("GET /api/v2/compute/vms  ->  project:dev   (rule /**=project")
    assert lines[1].startswith("GET /api/v2/identity/users  ->  account")
    assert lines[2].startswith("GET /api/v2/aws/ec2/  ->  none")
    assert "--route '/api/v2/engines=account'" in lines[3]


def test_serve_proxies_and_stops_cleanly_on_sigterm(simulator_url: str) -> None:
    """`serve` proxies plain requests, logs JSON when not on a TTY, and exits 0 on SIGTERM."""
    port = free_port()
    env = {**DEMO_ENV, "ZCOMPUTE_URL": simulator_url}
    with running(["serve", "--listen", f"127.0.0.1:{port}"],
                 f"http://127.0.0.1:{port}/_proxy/health", env) as proc:
        status, body = _get(f"http://127.0.0.1:{port}/api/v2/compute/vms")
        assert status == 200
        assert {vm["project"]["name"] for vm in json.loads(body)} == {"dev"}
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stderr().splitlines() if line.startswith("{")]
    assert "proxy_listening" in {e["event"] for e in events}
    assert any(e["event"] == "request" and e["status"] == 200 for e in events)
    assert simulator.ALICE_PASSWORD not in json.dumps(events)


def test_token_prints_a_working_token(simulator_url: str) -> None:
    """`token --scope account` prints only a token, and the simulator accepts it."""
    result = run(["token", "--scope", "account"], env={**DEMO_ENV, "ZCOMPUTE_URL": simulator_url})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert re.fullmatch(r"gAAAA[\w-]+", token)
    status, _ = _get(f"{simulator_url}/api/v2/identity/users", {"X-Auth-Token": token})
    assert status == 200


def test_check_passes_and_fails_clearly(simulator_url: str) -> None:
    """`check` says ok per scope and exits 0; with a wrong password it names the scope, exit 1."""
    good = run(["check", "--route", "/api/v2/billing/**=project:prod"],
               env={**DEMO_ENV, "ZCOMPUTE_URL": simulator_url})
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert lines[0].startswith("ok    configuration (no config file, upstream http://127.0.0.1")
    assert lines[1] == f"ok    upstream {simulator_url}/ reachable (plain HTTP on loopback)"
    assert lines[2].startswith("ok    login account: token sha256:")
    assert lines[3].startswith("ok    login project:dev: token sha256:")
    assert lines[4].startswith("ok    login project:prod: token sha256:")
    assert re.fullmatch(r"ok    clock skew [+-]\d+ s against identity", lines[5])
    assert "\033[" not in good.stdout  # no colour codes when not on a terminal
    bad = run(["check"], env={**DEMO_ENV, "ZCOMPUTE_URL": simulator_url,
                              "ZCOMPUTE_PASSWORD": "wrong-pass-123"})
    assert bad.returncode == 1
    assert "FAIL  login account: login for account was rejected by identity (401)" in bad.stdout
    assert "wrong-pass-123" not in bad.stdout + bad.stderr


def _readme_curl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- demo-curl -->", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("curl ")]


def test_readme_curl_lines_work_verbatim_against_the_demo(tmp_path: Path) -> None:
    """Every curl line of README's demo block, run as written, succeeds against `demo`."""
    import subprocess  # noqa: PLC0415

    lines = _readme_curl_lines()
    assert len(lines) >= 4
    with running(["demo"], "http://127.0.0.1:8080/_proxy/health") as proc:
        for line in lines:
            result = subprocess.run(  # noqa: S602 - the README's own lines, run as a user would
                f"{line} --fail --silent --show-error", shell=True, capture_output=True,
                text=True, timeout=30, cwd=tmp_path, check=False)
            assert result.returncode == 0, f"{line}: {result.stderr}"
    printed = proc.stdout()
    assert "curl http://127.0.0.1:8080/api/v2/compute/vms" in printed


def test_check_colours_on_a_terminal() -> None:
    """On a terminal the checklist marks ok green and FAIL red."""
    import io  # noqa: PLC0415

    from proxy.checklist import Checklist  # noqa: PLC0415

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    checks = Checklist(out)
    checks.line("ok", "fine")
    checks.line("FAIL", "broken")
    assert out.getvalue() == "\033[32mok   \033[0m fine\n\033[31mFAIL \033[0m broken\n"
    assert checks.failed


def test_port_in_use_is_one_line_and_exit_2() -> None:
    """A busy listen port is one `Error:` line naming --listen, exit 2, no traceback."""
    import socket  # noqa: PLC0415

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(["serve", "--listen", f"127.0.0.1:{port}"], env={
            "ZCOMPUTE_URL": "http://127.0.0.1:9", "ZCOMPUTE_USERNAME": "u",
            "ZCOMPUTE_ACCOUNT": "a", "ZCOMPUTE_PASSWORD": "p"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert errors == [f"Error: --listen 127.0.0.1:{port}: cannot listen there ("
                      + errors[0].split("(", 1)[1]]
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr


def test_malformed_client_requests_log_one_json_line_each(simulator_url: str) -> None:
    """A malformed request from any local client is one JSON log line, never a traceback."""
    import socket  # noqa: PLC0415

    port = free_port()
    env = {**DEMO_ENV, "ZCOMPUTE_URL": simulator_url, "ZCOMPUTE_LOG_FORMAT": "json"}
    with running(["serve", "--listen", f"127.0.0.1:{port}"],
                 f"http://127.0.0.1:{port}/_proxy/health", env) as proxy:
        for data in (b"GET api/v2 HTTP/1.1\r\nHost: localhost\r\n\r\n",
                     b"GET /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
                     b"Content-Length: 2\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(data)
                assert sock.recv(100).startswith(b"HTTP/1.0 400")
    lines = proxy.stderr().splitlines()
    assert lines
    assert all(line.startswith("{") for line in lines), lines
    bad = [json.loads(line) for line in lines if "aiohttp.server" in line]
    assert len(bad) == 2
    assert {event["level"] for event in bad} == {"info"}


def test_every_flag_names_its_environment_variable() -> None:
    """`serve --help` names the environment variable of every flag that has one."""
    from proxy.config import ENVIRONMENT, FLAGS  # noqa: PLC0415

    text = " ".join(run(["serve", "--help"]).stdout.split())
    for key, flag in FLAGS.items():
        if key in ENVIRONMENT:
            assert f"[{ENVIRONMENT[key]}]" in text, flag
