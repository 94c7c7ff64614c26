"""`python -m proxy` runs the command line."""

from proxy.cli import main

raise SystemExit(main())
