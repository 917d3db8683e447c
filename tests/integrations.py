"""Shared by the integration tests (Atropos, TRL): importing the real library, or skipping.

The integrations run in their own venvs (``.ci/integrations``). In the main venv their modules
skip at import; under ``SHARED_REWARDNORM_REQUIRE_INTEGRATIONS=1`` (set by the CI script) a
missing library fails instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REQUIRE_INTEGRATIONS = os.environ.get("SHARED_REWARDNORM_REQUIRE_INTEGRATIONS") == "1"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def require_module(name: str, extra: str) -> ModuleType:
    """Import ``name`` or skip the calling module (fail it when integrations are required)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"{name} is not installed (pip install 'shared-rewardnorm[{extra}]'): {exc}"
        if REQUIRE_INTEGRATIONS:
            pytest.fail(f"{reason} (SHARED_REWARDNORM_REQUIRE_INTEGRATIONS=1, so this is a failure)",
                        pytrace=False)
        pytest.skip(reason, allow_module_level=True)
        raise  # unreachable: skip raises


def import_example(name: str) -> ModuleType:
    """Import a module of ``examples/`` (they are scripts, not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)
