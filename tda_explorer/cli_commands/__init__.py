"""The CLI's commands beyond train/import/runs/attribute: every app capability, headless.

`add_commands(sub)` registers them on `tda_explorer.cli.build_parser()`'s subparsers:
explain, dtda, map, export (`explore`), evaluate, mislabels, flags, prune (`quality`).
"""

from __future__ import annotations

from tda_explorer.cli_commands import explore, quality
from tda_explorer.cli_commands.common import settings_epilog

__all__ = ["add_commands", "settings_epilog"]


def add_commands(sub) -> None:
    """Register every command of this package on an argparse subparsers object."""
    explore.add_commands(sub)
    quality.add_commands(sub)
