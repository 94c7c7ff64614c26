"""bug-cases.md row 28: bodies stream through a real proxy process with flat memory."""

from __future__ import annotations

import pytest

from benchmarks import streaming

MIB = 1024 * 1024


@pytest.mark.slow
async def test_row28_100mib_each_way_streams_with_flat_memory() -> None:
    """100 MiB chunked up (the upstream reading at 50 MB/s) and 100 MiB down through
    `python -m proxy serve`: sha256 matches both ways, the upstream has bytes long before the
    client finishes, and the proxy's peak RSS grows < 20 MiB each way. Scaled from 1 GiB and
    64 MiB; `python -m benchmarks.streaming` runs the full GiB with the same code."""
    up, down = await streaming.run(100 * MIB, upstream_rate=50e6)
    assert up.hashes_match
    assert down.hashes_match
    assert up.first_byte_after is not None
    assert up.client_done_after is not None
    assert up.first_byte_after < 0.5 < up.client_done_after
    assert up.rss_growth < 20 * MIB, up
    assert down.rss_growth < 20 * MIB, down
