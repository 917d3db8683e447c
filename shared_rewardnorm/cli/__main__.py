"""``python -m shared_rewardnorm.cli``: the ``shared-rewardnorm`` command line."""

from shared_rewardnorm.cli.commands import main

if __name__ == "__main__":  # guarded: the demo's spawned workers re-import the main module
    raise SystemExit(main())
