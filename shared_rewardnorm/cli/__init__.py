"""The ``shared-rewardnorm`` command line: ``commands`` parses and runs the subcommands,
``render`` formats what they print, ``bgsave`` asks every primary for an RDB snapshot, and
``demo`` runs the multi-process demo. ``main(argv)`` returns the exit code, so tests call it in
process."""

from shared_rewardnorm.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
