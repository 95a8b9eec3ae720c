"""Test suite (a regular package, so that `tests.*` modules named in spawned processes resolve here even when a
dependency installs its own top-level `tests` package, as kronfluence 1.0.1 does)."""
