"""Servers of the tests' own: cluster, Sentinel, persistence and restarts, ACL, TLS, compose, the wheel."""
