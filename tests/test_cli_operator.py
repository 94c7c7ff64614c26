"""Operator commands against a running `zcompute-proxy serve`: SIGHUP reload, `reload`,
`login`, `totp CODE`, and the terminal prompt for TOTP codes (through a real pty)."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from proxy import simulator
from tests.processes import free_port, run, running

BOB = {"ZCOMPUTE_USERNAME": simulator.BOB, "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
       "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT, "ZCOMPUTE_PASSWORD": simulator.BOB_PASSWORD}


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    """`zcompute-proxy simulate` on a free port."""
    port = free_port()
    with running(["simulate", "--listen", f"127.0.0.1:{port}"],
                 f"http://127.0.0.1:{port}/_sim/stats"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def fresh_simulator() -> Iterator[str]:
    """A simulator of the test's own, where no TOTP code has been used yet."""
    port = free_port()
    with running(["simulate", "--listen", f"127.0.0.1:{port}"],
                 f"http://127.0.0.1:{port}/_sim/stats"):
        yield f"http://127.0.0.1:{port}"


def _status(url: str, timeout: float = 30) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_for_mfa_prompt(base: str, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with urllib.request.urlopen(f"{base}/_proxy/status", timeout=5) as resp:  # noqa: S310
            if b"needed now" in resp.read():
                return
        time.sleep(0.05)
    raise TimeoutError("the proxy never asked for a TOTP code")


def test_sighup_rereads_the_password_file(simulator_url: str, tmp_path: Path) -> None:
    """A wrong password latches; fixing the file and sending SIGHUP lets requests through."""
    password = tmp_path / "password"
    password.write_text("wrong-password\n")
    password.chmod(0o600)
    port = free_port()
    env = {**BOB, "ZCOMPUTE_USERNAME": simulator.ALICE, "ZCOMPUTE_PASSWORD_FILE": str(password),
           "ZCOMPUTE_PASSWORD": "", "ZCOMPUTE_URL": simulator_url}
    base = f"http://127.0.0.1:{port}"
    with running(["serve", "--listen", f"127.0.0.1:{port}"], f"{base}/_proxy/health",
                 env) as proxy:
        assert _status(f"{base}/api/v2/identity/users") == 502
        password.write_text(simulator.ALICE_PASSWORD + "\n")
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert _status(f"{base}/api/v2/identity/users") == 200
    assert "config_reloaded" in proxy.stderr()
    assert simulator.ALICE_PASSWORD not in proxy.stderr()


def test_reload_and_login_commands(simulator_url: str) -> None:
    """`zcompute-proxy reload` and `login` talk to the running proxy at its listen address."""
    port = free_port()
    env = {**BOB, "ZCOMPUTE_USERNAME": simulator.ALICE,
           "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD, "ZCOMPUTE_URL": simulator_url,
           "ZCOMPUTE_LISTEN": f"127.0.0.1:{port}"}
    with running(["serve"], f"http://127.0.0.1:{port}/_proxy/health", env):
        reload = run(["reload"], env=env)
        assert reload.returncode == 0, reload.stderr
        assert '"reloaded": true' in reload.stdout
        login = run(["login"], env=env)
        assert login.returncode == 0, login.stderr
        assert '"login": "ok"' in login.stdout
    refused = run(["login"], env=env)
    assert refused.returncode == 1
    assert "cannot reach the proxy" in refused.stderr


def test_totp_command_feeds_a_waiting_login(simulator_url: str) -> None:
    """Without a TOTP secret, a request waits until `zcompute-proxy totp CODE` is run."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**BOB, "ZCOMPUTE_URL": simulator_url, "ZCOMPUTE_LISTEN": f"127.0.0.1:{port}"}
    with running(["serve"], f"{base}/_proxy/health", env):
        result: list[int] = []
        waiter = threading.Thread(target=lambda: result.append(
            _status(f"{base}/api/v2/compute/vms")))
        waiter.start()
        _wait_for_mfa_prompt(base)
        code = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET).now()
        given = run(["totp", code], env=env)
        waiter.join(30)
        assert given.returncode == 0, given.stderr
        assert result == [200]
        again = run(["totp", code], env=env)
        assert again.returncode == 1
        assert "used already" in again.stdout


def test_terminal_prompt_reads_a_code_typed_on_the_tty() -> None:
    """Run in a terminal without a secret, the proxy prompts and takes the typed code."""
    with fresh_simulator() as url:
        _prompt_scenario(url)


def _prompt_scenario(simulator_url: str) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.processes import ROOT, clean_env, wait_http  # noqa: PLC0415

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    master, slave = pty.openpty()
    env = clean_env({**BOB, "ZCOMPUTE_URL": simulator_url, "ZCOMPUTE_LOG_FORMAT": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--listen",
                             f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdin=slave,
                            stdout=slave, stderr=slave)
    os.close(slave)
    try:
        from tests.processes import Running  # noqa: PLC0415

        wait_http(f"{base}/_proxy/health", Running(proc, Path("/dev/null"), Path("/dev/null")))
        result: list[int] = []
        waiter = threading.Thread(target=lambda: result.append(
            _status(f"{base}/api/v2/compute/vms")))
        waiter.start()
        _wait_for_mfa_prompt(base)
        code = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET).now()
        os.write(master, code.encode() + b"\n")
        waiter.join(30)
        assert result == [200]
        screen = _drain(master)
        assert "enter the TOTP code from your authenticator" in screen
        assert code not in screen  # not echoed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        os.close(master)


def _drain(fd: int) -> str:
    import select  # noqa: PLC0415

    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunks.append(os.read(fd, 65536))
        except OSError:
            break
    return b"".join(chunks).decode(errors="replace")


def test_control_commands_send_the_access_key(simulator_url: str) -> None:
    """With an access key configured, `reload` sends it; a wrong key is refused (407)."""
    port = free_port()
    key = "k3y-" + "a" * 40
    env = {**BOB, "ZCOMPUTE_USERNAME": simulator.ALICE,
           "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD, "ZCOMPUTE_URL": simulator_url,
           "ZCOMPUTE_LISTEN": f"127.0.0.1:{port}", "ZCOMPUTE_ACCESS_KEY": key}
    with running(["serve"], f"http://127.0.0.1:{port}/_proxy/health", env):
        assert run(["reload"], env=env).returncode == 0
        wrong = run(["reload"], env={**env, "ZCOMPUTE_ACCESS_KEY": "w" * 44})
        assert wrong.returncode == 1
        assert key not in wrong.stdout + wrong.stderr


def test_control_commands_reach_a_unix_socket(simulator_url: str, tmp_path: Path) -> None:
    """`--listen unix:PATH`: `reload` talks to the proxy over its socket."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.processes import ROOT, clean_env  # noqa: PLC0415

    sock = tmp_path / "proxy.sock"
    env = {**BOB, "ZCOMPUTE_USERNAME": simulator.ALICE,
           "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD, "ZCOMPUTE_URL": simulator_url,
           "ZCOMPUTE_LISTEN": f"unix:{sock}"}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], cwd=ROOT,
                            env=clean_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 15
        while not sock.exists() and time.monotonic() < end:
            time.sleep(0.05)
        result = run(["reload"], env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert '"reloaded": true' in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    """On SIGTERM a request in flight still completes, then the proxy exits 0."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.processes import ROOT  # noqa: PLC0415

    upstream_port, proxy_port = free_port(), free_port()
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import asyncio\nfrom aiohttp import web\n"
        "async def answer(request):\n    await asyncio.sleep(1.5)\n"
        "    return web.json_response({'slow': True})\n"
        "app = web.Application()\napp.router.add_get('/{tail:.*}', answer)\n"
        f"web.run_app(app, host='127.0.0.1', port={upstream_port}, print=None)\n")
    upstream = subprocess.Popen([sys.executable, str(slow)], cwd=ROOT)
    _wait_for_port(upstream_port)
    env = {"ZCOMPUTE_URL": f"http://127.0.0.1:{upstream_port}", "ZCOMPUTE_USERNAME": "u",
           "ZCOMPUTE_ACCOUNT": "a", "ZCOMPUTE_PASSWORD": "p", "ZCOMPUTE_LOG_FORMAT": "json"}
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        with running(["serve", "--listen", f"127.0.0.1:{proxy_port}",
                      "--route", "/**=none"], f"{base}/_proxy/health", env) as proxy:
            result: list[int] = []
            waiter = threading.Thread(target=lambda: result.append(_status(f"{base}/slow")))
            waiter.start()
            time.sleep(0.5)
            signalled = time.monotonic()
            proxy.proc.send_signal(signal.SIGTERM)
            waiter.join(10)
            assert proxy.proc.wait(10) == 0
            assert time.monotonic() - signalled < 3  # the drain ends when the request does
        assert result == [200]
        events = proxy.stderr()
        assert '"event": "draining"' in events
        assert events.index('"event": "draining"') < events.index('"event": "stopped"')
    finally:
        upstream.terminate()
        upstream.wait(10)


def _wait_for_port(port: int, deadline: float = 15) -> None:
    import socket  # noqa: PLC0415

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def test_one_shot_commands_fail_fast_for_mfa_without_a_terminal(simulator_url: str) -> None:
    """`token` for an MFA user with no secret and no terminal says why at once, exit 1."""
    started = time.monotonic()
    result = run(["token", "--scope", "account"],
                 env={**BOB, "ZCOMPUTE_URL": simulator_url, "ZCOMPUTE_MFA_WAIT": "60"})
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert "cannot ask for a TOTP code without a terminal" in result.stderr
    assert result.stdout == ""


def test_token_prompts_for_the_code_on_a_terminal() -> None:
    """`token` run in a terminal asks for the code and prints the token."""
    with fresh_simulator() as url:
        _token_at_a_prompt(url)


def _token_at_a_prompt(simulator_url: str) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.processes import ROOT, clean_env  # noqa: PLC0415

    master, slave = pty.openpty()
    env = clean_env({**BOB, "ZCOMPUTE_URL": simulator_url, "ZCOMPUTE_LOG_FORMAT": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "token", "--scope", "account"],
                            cwd=ROOT, env=env, stdin=slave, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    try:
        screen = ""
        end = time.monotonic() + 15
        while "authenticator" not in screen and time.monotonic() < end:
            screen += _drain(master)
        assert "enter the TOTP code from your authenticator" in screen
        code = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET).now()
        os.write(master, code.encode() + b"\n")
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0
    assert out.decode().startswith("gAAAA")
