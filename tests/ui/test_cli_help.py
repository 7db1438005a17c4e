"""``julius``'s argument parser: every option and argument of every subcommand says what it is."""

import argparse

from julius_magics.cli import build_parser


def test_every_subcommand_argument_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"julius {command} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    assert len(subparsers.choices) >= 8
