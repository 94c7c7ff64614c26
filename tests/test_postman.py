"""The Postman collection in examples/postman, run by real newman against the proxy + simulator.

newman comes from the npm registry, installed once into `.cache/npm` (git-ignored) and re-used.
If it cannot be installed the newman test fails when CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from proxy import simulator
from tests.processes import ROOT, free_port, running

COLLECTION = ROOT / "examples" / "postman" / "zcompute-proxy.postman_collection.json"
NEWMAN_MAJOR = "6"
NEWMAN_SPEC = f"newman@{NEWMAN_MAJOR}"
NPM_PREFIX = ROOT / ".cache" / "npm"
NEWMAN_BIN = NPM_PREFIX / "node_modules" / ".bin" / "newman"
INSTALL_TIMEOUT = 240  # seconds; about a minute on a fresh machine, nothing once cached
RUN_TIMEOUT = 90
HEADER_TEST = 1  # the collection-level test run after every request: no token in the headers
EXPECTED_ASSERTIONS = {  # request name, in run order -> its assertions (own tests + HEADER_TEST)
    "List VMs (default project)": 3 + HEADER_TEST,
    "List VMs of another project (X-Zcompute-Project)": 3 + HEADER_TEST,
    "Create a VM": 2 + HEADER_TEST,
    "Get the VM": 2 + HEADER_TEST,
    "Delete the VM": 2 + HEADER_TEST,
    "Get the deleted VM (404)": 2 + HEADER_TEST,
    "List account projects": 3 + HEADER_TEST,
    "List account users": 2 + HEADER_TEST,
    "Proxy status": 3 + HEADER_TEST,
}
PROXY_ENV = {
    "ZCOMPUTE_USERNAME": simulator.ALICE,
    "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
    "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT,
    "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD,
}


def _bounded(command: Sequence[str], timeout: float,
             env: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """Run `command` in its own process group; kill the whole group after `timeout` seconds.

    Returns (exit code, or None on timeout; stdout and stderr together)."""
    proc = subprocess.Popen(command, cwd=ROOT, env=dict(env or os.environ),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output + f"\n[killed after {timeout} s]"
    finally:
        if proc.poll() is None:  # an exception other than the timeout (e.g. pytest-timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, output


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def _unavailable(reason: str, output: str = "") -> NoReturn:
    """Fail in CI (newman is part of CI), skip elsewhere; both with the reason."""
    message = f"newman unavailable: {reason}" + (f"\n{_tail(output)}" if output else "")
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _installed_version() -> str | None:
    """The version of the newman in `.cache/npm`, if it is there and of the pinned major."""
    package = NPM_PREFIX / "node_modules" / "newman" / "package.json"
    if not NEWMAN_BIN.exists() or not package.exists():
        return None
    version = str(json.loads(package.read_text()).get("version", ""))
    return version if version.split(".", maxsplit=1)[0] == NEWMAN_MAJOR else None


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """One npm install at a time in `.cache/npm` (parallel test runs share the folder)."""
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    with (NPM_PREFIX / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def newman() -> Path:
    """The newman executable: from `.cache/npm`, installed from the npm registry if missing."""
    with _install_lock():
        if _installed_version() is None:
            npm = shutil.which("npm")
            if npm is None or shutil.which("node") is None:
                _unavailable("node and npm are needed (Debian packages nodejs, npm)")
            started = time.monotonic()
            code, output = _bounded(
                [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund",
                 "--no-update-notifier", NEWMAN_SPEC], timeout=INSTALL_TIMEOUT)
            if code != 0:
                _unavailable(f"`npm install {NEWMAN_SPEC}` exited with {code}", output)
            print(f"installed {NEWMAN_SPEC} in {time.monotonic() - started:.1f} s")
        version = _installed_version()
        if version is None:
            _unavailable(f"npm did not install {NEWMAN_SPEC} into {NPM_PREFIX}")
        code, output = _bounded([str(NEWMAN_BIN), "--version"], timeout=30)
        if code != 0 or output.strip() != version:
            _unavailable(f"`newman --version` exited with {code}", output)
    return NEWMAN_BIN


def _requests(collection: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every request item of the collection, folders flattened, in run order."""
    for entry in collection["item"]:
        if "item" in entry:
            yield from _requests(entry)
        else:
            yield entry


def test_collection_carries_no_auth_and_targets_base_url() -> None:
    """The collection is v2.1, has `noauth`, no credential anywhere, and every URL uses baseUrl."""
    collection = json.loads(COLLECTION.read_text())
    assert collection["info"]["schema"].endswith("/collection/v2.1.0/collection.json")
    assert collection["auth"] == {"type": "noauth"}
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables["baseUrl"] == "http://127.0.0.1:8080"
    items = list(_requests(collection))
    assert [item["name"] for item in items] == list(EXPECTED_ASSERTIONS)
    for item in items:
        request = item["request"]
        assert request.get("auth", {"type": "noauth"}) == {"type": "noauth"}, item["name"]
        headers = {h["key"].lower() for h in request.get("header", [])}
        assert not headers & {"authorization", "x-auth-token", "cookie"}, item["name"]
        assert request["url"]["raw"].startswith("{{baseUrl}}/"), item["name"]
    text = COLLECTION.read_text()
    assert simulator.ALICE_PASSWORD not in text
    assert simulator.DEFAULT_TOTP_SECRET not in text
    assert not re.search(r"gAAAA[\w-]{20,}", text)  # no Fernet token pasted in


@pytest.mark.timeout(INSTALL_TIMEOUT + RUN_TIMEOUT + 60)  # the first run installs newman
def test_newman_runs_the_collection_green_against_the_proxy(newman: Path, tmp_path: Path) -> None:
    """newman runs every request of the collection through the proxy with 0 failed assertions."""
    sim_port, proxy_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    report = tmp_path / "newman-report.json"
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy"}}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    with running(["simulate", "--listen", f"127.0.0.1:{sim_port}"], f"{sim_url}/_sim/stats"), \
            running(["serve", "--listen", f"127.0.0.1:{proxy_port}"],
                    f"{proxy_url}/_proxy/health", {**PROXY_ENV, "ZCOMPUTE_URL": sim_url}) as proxy:
        code, output = _bounded(
            [str(newman), "run", str(COLLECTION), "--env-var", f"baseUrl={proxy_url}",
             "--reporters", "cli,json", "--reporter-json-export", str(report),
             "--timeout-request", "10000", "--timeout", str((RUN_TIMEOUT - 10) * 1000),
             "--color", "off"], timeout=RUN_TIMEOUT, env=env)
        assert code == 0, f"newman exited with {code}:\n{_tail(output, 80)}\n" \
                          f"proxy stderr:\n{_tail(proxy.stderr())}"
    run = json.loads(report.read_text())["run"]
    ran = [execution["item"]["name"] for execution in run["executions"]]
    assert ran == list(EXPECTED_ASSERTIONS), output
    for execution in run["executions"]:
        name = execution["item"]["name"]
        assertions = execution.get("assertions", [])
        assert len(assertions) == EXPECTED_ASSERTIONS[name], (name, assertions)
        assert [a for a in assertions if a.get("error")] == [], name
    stats = run["stats"]
    assert stats["requests"] == {"total": 9, "pending": 0, "failed": 0}
    assert stats["assertions"] == {"total": sum(EXPECTED_ASSERTIONS.values()), "pending": 0,
                                   "failed": 0}
    assert stats["testScripts"]["failed"] == 0
    assert stats["prerequestScripts"]["failed"] == 0
    assert run["failures"] == []
    assert simulator.ALICE_PASSWORD not in output
