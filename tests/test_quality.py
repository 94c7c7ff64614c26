"""Static checks run as part of the suite: ruff (lint) and mypy (strict) on the package."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from proxy.config_loader import load
from tests.processes import ROOT


def test_ruff_is_clean() -> None:
    """ruff finds nothing in the package and the tests (rules in pyproject.toml)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "proxy", "tests"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) finds nothing in proxy/."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_config_is_valid_and_documents_every_key() -> None:
    """The annotated example parses with the real loader and mentions every file key."""
    path = ROOT / "config" / "zcompute-proxy.example.toml"
    tomllib.loads(path.read_text())
    (ROOT / ".cache").mkdir(exist_ok=True)
    config = load(config_file=path, environ={"HOME": "/nonexistent"}, need_auth=False)
    assert str(config.upstream.url) == "https://zcompute.example.com/"
    from proxy.config import FILE_KEYS  # noqa: PLC0415

    text = path.read_text()
    for key in FILE_KEYS:
        section, name = key.split(".")
        assert f"[{section}]" in text, key
        assert f"{name} =" in text, key


def test_readme_documents_every_setting() -> None:
    """README's configuration reference names every file key, variable and flag."""
    from proxy.config import ENVIRONMENT, FILE_KEYS, FLAGS  # noqa: PLC0415

    text = (ROOT / "README.md").read_text()
    for name in (*FILE_KEYS, *ENVIRONMENT.values(), *FLAGS.values()):
        assert f"`{name}`" in text, name
