"""The package's layers: each module imports only modules of lower layers (no cycles, and a
newcomer can tell from a module's layer what it may depend on). The simulator stands alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"
LAYERS: dict[str, int] = {
    # values with no internal dependency
    "errors": 0, "scope": 0, "secret": 0, "clock": 0, "totp": 0,
    # configuration and logging
    "config": 1, "log": 1, "config_loader": 2,
    # pure building blocks
    "credentials": 2, "routes": 2, "tokens": 2, "scrub": 2,
    # talking to the outside world
    "identity": 3, "metrics": 3, "websocket": 3, "guard": 3,
    # the request path and the long-lived objects
    "forward": 4, "services": 4,
    # operations on a running proxy, one-shot commands
    "prompt": 3,
    "reload": 5, "checklist": 5, "oneshot": 5, "control": 5,
    "admin": 6, "app": 7, "server": 8, "cli": 9, "__main__": 10,
}


def _internal_imports(path: Path) -> set[str]:
    """Top-level proxy modules imported anywhere in `path` (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "proxy":
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("proxy."))
    return found


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer here."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down(module: str) -> None:
    """`module` imports only modules of lower layers (the simulator is used by server/cli)."""
    imports = _internal_imports(PACKAGE / f"{module}.py") - {"__version__", "simulator"}
    upward = {name for name in imports if LAYERS[name] >= LAYERS[module]}
    assert not upward, f"{module} (layer {LAYERS[module]}) imports {upward}"
    if "simulator" in _internal_imports(PACKAGE / f"{module}.py"):
        assert module in ("server", "cli")


def test_simulator_stands_alone() -> None:
    """The simulator imports nothing from the proxy outside its own package."""
    for path in (PACKAGE / "simulator").glob("*.py"):
        outside = {name for name in _internal_imports(path) if name != "simulator"}
        assert not outside, f"{path.name} imports {outside}"
