"""Integration tests (real upstream servers on loopback)."""
