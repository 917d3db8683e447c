"""Atropos and TRL against the real libraries, run by .ci/integrations in venvs of their own."""
