"""Fixed names, passwords and settings of the local Keystone tier (fake, test-only credentials).

Everything a test needs to log in lives here; change a value and the cached seed database is
rebuilt (its cache key hashes this file).
"""

from __future__ import annotations

# --- what goes into the throwaway venv --------------------------------------------------------
# Top-level pins; constraints.txt beside this file pins every transitive dependency too.
VENV_PINS = (
    "keystone==30.0.0",
    "keystonemiddleware==13.0.1",
    "gunicorn==27.0.1",
    "pyotp==2.12.1",
)

# --- Keystone settings ---------------------------------------------------------------------
TOKEN_EXPIRATION_S = 30  # [token] expiration: short, so expiry tests wait ~30 s
RECEIPT_EXPIRATION_S = 300  # [receipt] expiration
LOCKOUT_FAILURE_ATTEMPTS = 3  # [security_compliance] lockout_failure_attempts
LOCKOUT_DURATION_S = 60  # [security_compliance] lockout_duration
REGION = "RegionOne"
# bcrypt cost 4 (the minimum) instead of 12: every password login (and the middleware logs its
# service user in on every validation, as 30 s tokens are always "about to expire") stays cheap.
PASSWORD_HASH_ROUNDS = 4

# --- the bootstrap admin (Default domain, project "admin", role "admin" + system admin) --------
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret-Pw1"
ADMIN_PROJECT = "admin"
DEFAULT_DOMAIN = "Default"

# --- the service user that keystonemiddleware.auth_token validates tokens with --------------
SERVICE_USER = "zcp-service"
SERVICE_PASSWORD = "service-secret-Pw1"
SERVICE_PROJECT = "service"  # in the Default domain; the user has role "service" on it

# --- the zCompute-like tenant ----------------------------------------------------------------
ACCOUNT = "acme"  # a Keystone domain == a zCompute "account"
PROJECT_ALPHA = "alpha"
PROJECT_BETA = "beta"
PROJECTS = (PROJECT_ALPHA, PROJECT_BETA)
MEMBER_ROLE = "member"

# Password user: member on both projects and on the domain.
CAROL = "carol"
CAROL_PASSWORD = "carol-Pw-1234"

# MFA user (rules [["password", "totp"]]): member on both projects and on the domain.
DAVE = "dave"
DAVE_PASSWORD = "dave-Pw-1234"
DAVE_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # base32, RFC 6238 SHA1/6 digits/30 s

# Password user for lockout tests (member on alpha only); reset with tier.reset_lockout().
LOCKME = "lockme"
LOCKME_PASSWORD = "lockme-Pw-1234"

# Password user like carol, for tests that revoke all of a user's tokens (disable/enable),
# so that those never disturb tests that use carol.
ERIN = "erin"
ERIN_PASSWORD = "erin-Pw-1234"

# name -> (password, totp secret or None)
USERS: dict[str, tuple[str, str | None]] = {
    CAROL: (CAROL_PASSWORD, None),
    DAVE: (DAVE_PASSWORD, DAVE_TOTP_SECRET),
    LOCKME: (LOCKME_PASSWORD, None),
    ERIN: (ERIN_PASSWORD, None),
}

# --- the protected service --------------------------------------------------------------------
# keystonemiddleware caches token validations (default 300 s); -1 disables the cache so a
# revoked or expired token fails at once.
SERVICE_TOKEN_CACHE_TIME = -1

# --- deadlines (seconds) ------------------------------------------------------------------------
VENV_CREATE_TIMEOUT_S = 120
PIP_INSTALL_TIMEOUT_S = 600
KEYSTONE_MANAGE_TIMEOUT_S = 180
SERVER_START_TIMEOUT_S = 60
SERVER_STOP_TIMEOUT_S = 15
HTTP_TIMEOUT_S = 20
