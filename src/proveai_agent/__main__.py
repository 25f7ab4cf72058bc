"""`python -m proveai_agent` runs the agent's command line."""

from .cli import main

raise SystemExit(main())
