"""A built-in, in-memory zCompute for demos, tests and trying scripts without a cluster.

## Built-in zCompute simulator

`proxy.simulator` is a small fake zCompute that speaks the same identity API as a real
cluster (Keystone v3 at `/api/v2/identity/auth`, also at `/v3/auth/tokens`): 201 with the
token in `X-Subject-Token`, Keystone error bodies, 4-hour Fernet-looking tokens, re-scoping
with the `token` method (same `expires_at` as the parent), and MFA with RFC 6238 TOTP: a
password-only login of an MFA user gets 401 + `Openstack-Auth-Receipt`, finished with
password+totp in one request or totp + the receipt header. A TOTP code is accepted once.

Built-in directory (override with `--users-file`):

| account `demo` | password | MFA | projects |
| --- | --- | --- | --- |
| `alice` | `alice-pass` | only with `--mfa` | `dev`, `prod` |
| `bob` | `bob-pass` | always | `dev` |

Both users share the public demo TOTP secret `ZCOMPUTEPROXYDEMOSECRETBASE32AAA`.
Project tokens list, create, get and delete VMs at `/api/v2/compute/vms` (two seeded per
project); account tokens list `/api/v2/identity/projects`, `/users`, `/users/myself/projects`.
A wrong-scope token gets 403, a missing/expired/revoked one 401. Options: `--token-ttl`,
`--mfa`, `--lockout N` (`--lockout-seconds`), `--reuse-totp`, `--users-file`.
Test-only control endpoints (no auth, never expose them): `GET /_sim/stats`,
`POST /_sim/reset-stats`, `/_sim/revoke`, `/_sim/outage?seconds=N` (identity answers 503),
`/_sim/password` (`{"user", "password"}`; revokes that user's tokens).

## Users file

TOML (or JSON with the same tree when the name ends in `.json`); ids are optional and
default to stable ids derived from the names:

    [[accounts]]
    name = "acme"                   # the account (Keystone domain) name
    [[accounts.projects]]
    name = "web"
    id = "0123456789abcdef0123456789abcdef"
    [[accounts.users]]
    name = "carol"
    password = "carol-pass"
    totp_secret = "ZCOMPUTEPROXYDEMOSECRETBASE32AAA"   # base32, >= 112 bits; optional
    mfa = true                      # needs totp_secret; default false
    projects = ["web"]              # project names of this account

Every user may take its own account's scope; `--mfa` affects built-in users only.
"""

from proxy.simulator.app import create_app, serve
from proxy.simulator.defaults import (
    ALICE,
    ALICE_ID,
    ALICE_PASSWORD,
    BOB,
    BOB_ID,
    BOB_PASSWORD,
    DEFAULT_ACCOUNT,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TOTP_SECRET,
    DEV_PROJECT,
    DEV_PROJECT_ID,
    PROD_PROJECT,
    PROD_PROJECT_ID,
)
from proxy.simulator.options import SimulatorOptions, add_arguments, options_from_args
from proxy.simulator.state import SIM_STATE, SimState
from proxy.simulator.users_file import UsersFileError

__all__ = [
    "ALICE",
    "ALICE_ID",
    "ALICE_PASSWORD",
    "BOB",
    "BOB_ID",
    "BOB_PASSWORD",
    "DEFAULT_ACCOUNT",
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_TOTP_SECRET",
    "DEV_PROJECT",
    "DEV_PROJECT_ID",
    "PROD_PROJECT",
    "PROD_PROJECT_ID",
    "SIM_STATE",
    "SimState",
    "SimulatorOptions",
    "UsersFileError",
    "add_arguments",
    "create_app",
    "options_from_args",
    "serve",
]
