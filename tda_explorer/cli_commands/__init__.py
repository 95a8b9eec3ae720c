"""The CLI's commands beyond train/import/runs/attribute: every app capability, headless.

`add_commands(sub)` registers them on `tda_explorer.cli.build_parser()`'s subparsers:
explain (`explain`), dtda, map, export (`explore`), evaluate, mislabels, flags, prune (`quality`), and `--json` for
train, import, runs and attribute (`core_json`).
"""

from __future__ import annotations

from tda_explorer.cli_commands import explain, explore, quality
from tda_explorer.cli_commands.common import add_method_flags, one_line_errors, settings_epilog
from tda_explorer.cli_commands.core_json import add_json_variants

__all__ = ["add_commands", "settings_epilog"]


def add_commands(sub) -> None:
    """Register every command of this package on an argparse subparsers object, and `--json` on the
    commands registered before (train, import, runs, attribute)."""
    add_json_variants(sub)
    explain.add_commands(sub)
    explore.add_commands(sub)
    quality.add_commands(sub)
    for parser in sub.choices.values():
        if "--method" in parser._option_string_actions and parser.get_default("method_flags") is None:
            add_method_flags(parser)  # after the command's own options, so those keep their names
        func = parser.get_default("func")
        if func is not None:
            parser.set_defaults(func=one_line_errors(func))
