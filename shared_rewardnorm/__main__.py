"""``python -m shared_rewardnorm``: the ``shared-rewardnorm`` command line."""
from shared_rewardnorm.cli import main

if __name__ == "__main__":  # guarded: the demo's spawned workers re-import the main module
    raise SystemExit(main())
