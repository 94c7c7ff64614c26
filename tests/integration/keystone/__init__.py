"""Integration tier: a real OpenStack Keystone and a Keystone-protected service on loopback."""
