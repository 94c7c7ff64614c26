"""pytest fixture for the real-Keystone tier: `keystone_tier` (session scope).

It builds or reuses the cached venv + seed (see tier.py), starts Keystone and the protected
service on free loopback ports, yields a `tier.KeystoneTier`, and stops both at the end.

If the tier cannot be set up it FAILS when CI=true (or ZCP_KEYSTONE_REQUIRED=1), and skips with
the reason otherwise. Tests using it are marked `@pytest.mark.keystone`; their timeout covers a
cold setup (~45 s here), which only the first test of a session pays.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import tier

# A cold setup (venv + seed) happens inside the first test's timeout.
TIER_TEST_TIMEOUT_S = 300


def _must_not_skip() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes")
        for name in ("CI", "ZCP_KEYSTONE_REQUIRED")
    )


@pytest.fixture(scope="session")
def keystone_tier() -> Iterator[tier.KeystoneTier]:
    """A running Keystone (`keystone_url`, `auth_url`) and protected service (`service_url`)."""
    try:
        running = tier.start()
    except Exception as exc:  # any failure is reported: it fails in CI, skips elsewhere
        message = f"Keystone tier could not be set up: {exc.__class__.__name__}: {exc}"
        if _must_not_skip():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield running
    finally:
        running.stop()
