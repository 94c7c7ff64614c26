"""The short soak of benchmarks/soak.py: 5 s tokens under load, revocation, lockout."""

from __future__ import annotations

import pytest

from benchmarks import soak


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_short_soak_has_no_failures_and_one_failed_login() -> None:
    """8 s soaks with 32 clients: 0 failures steady and after mass revocation; 1 bad login."""
    report = await soak.main(["--duration", "8", "--scenario", "steady", "--scenario",
                              "revoke", "--scenario", "lockout", "--lockout-requests", "200",
                              "--lockout-seconds", "2"])
    for name in ("steady", "revoke"):
        assert report[name]["failed"] == 0, report[name]
        assert report[name]["requests"] > 1000
        assert 2 <= report[name]["logins"] <= 5, report[name]
    assert report["lockout"]["login_attempts"] == 1
    assert report["lockout"]["failed_logins"] == 1
    assert report["lockout"]["account_usable_after"] is True
