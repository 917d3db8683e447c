"""The test suite, grouped by what it checks.

``unit/``: no server at all (pure functions, operations driven with canned replies);
``behaviour/``: the library's behaviour over every backend (the embedded store and a real Redis)
and both shells; ``deployment/``: servers of the tests' own (cluster, Sentinel, persistence, ACL,
TLS, compose, the wheel); ``integrations/``: Atropos and TRL, run by ``.ci/integrations`` in
venvs of their own; ``tooling/``: the repository's tools and the suite's own rules (dev.py,
benchmark scripts, the proxies, markers, keys left behind); ``support/``: the shared helpers.
"""
