"""`python -m tda_explorer ...` runs the CLI."""

from tda_explorer.cli import main

raise SystemExit(main())
