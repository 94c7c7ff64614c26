"""The built-in demo directory: account `demo`, projects `dev` and `prod`, users alice and bob.

All values are fixed so tests, demos and documentation can quote them.
"""

from __future__ import annotations

from proxy.simulator.model import Account, Project, User

DEFAULT_ACCOUNT = "demo"
DEFAULT_ACCOUNT_ID = "77e36bbfe5cc4826b82b7ae7617c95df"
DEV_PROJECT = "dev"
DEV_PROJECT_ID = "9485d5ace5ab498e9434853ac479e6e6"
PROD_PROJECT = "prod"
PROD_PROJECT_ID = "7b811b5174c2488b8d4998ba405d00c2"

ALICE = "alice"
ALICE_ID = "0deff54fb19b4bfda8db737d8f729252"
ALICE_PASSWORD = "alice-pass"  # noqa: S105 - a published demo password
BOB = "bob"
BOB_ID = "d106aa00c19645458fecde483cc3c2f0"
BOB_PASSWORD = "bob-pass"  # noqa: S105 - a published demo password

# RFC 6238 base32 secret shared by the built-in users; 160 bits, deliberately public.
DEFAULT_TOTP_SECRET = "ZCOMPUTEPROXYDEMOSECRETBASE32AAA"  # noqa: S105 - a published demo secret


def builtin_accounts(*, mfa_for_all: bool = False) -> list[Account]:
    """The demo account: alice (dev+prod; MFA only with `mfa_for_all`), bob (dev; always MFA)."""
    account = Account(id=DEFAULT_ACCOUNT_ID, name=DEFAULT_ACCOUNT)
    account.projects = [
        Project(id=DEV_PROJECT_ID, name=DEV_PROJECT, account=account),
        Project(id=PROD_PROJECT_ID, name=PROD_PROJECT, account=account),
    ]
    account.users = [
        User(id=ALICE_ID, name=ALICE, password=ALICE_PASSWORD, account=account,
             project_ids=frozenset({DEV_PROJECT_ID, PROD_PROJECT_ID}),
             totp_secret=DEFAULT_TOTP_SECRET, mfa=mfa_for_all),
        User(id=BOB_ID, name=BOB, password=BOB_PASSWORD, account=account,
             project_ids=frozenset({DEV_PROJECT_ID}), totp_secret=DEFAULT_TOTP_SECRET, mfa=True),
    ]
    return [account]
