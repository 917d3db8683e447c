"""Shared by the integration tests (Atropos, TRL): importing the real library, or skipping.

The integrations run in their own venvs (``.ci/integrations``). In the main venv their modules
skip at import; under ``SHARED_REWARDNORM_REQUIRE_INTEGRATIONS=1`` (set by the CI script) a
missing library fails instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from tests.support import REPO
from tests.support.helpers import import_script

REQUIRE_INTEGRATIONS = os.environ.get("SHARED_REWARDNORM_REQUIRE_INTEGRATIONS") == "1"
EXAMPLES = REPO / "examples"


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
    return import_script(EXAMPLES / f"{name}.py")
