"""Gunicorn entry for Keystone (runs inside the tier's venv, not in the test process).

Keystone parses the process's command line as its own options, so gunicorn's `--bind ...` would
kill every worker ("unrecognized arguments"): clear sys.argv before building the app. The config
file comes from OS_KEYSTONE_CONFIG_DIR / OS_KEYSTONE_CONFIG_FILES, set by the launcher.
"""

import sys

sys.argv = sys.argv[:1]

from keystone.server import wsgi as _keystone_wsgi  # noqa: E402

application = _keystone_wsgi.initialize_public_application()
