"""zcompute-proxy: a local authenticating reverse proxy for the Zadara zCompute REST API."""

__version__ = "0.1.0"
