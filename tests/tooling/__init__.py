"""The repository's tools and the suite's own rules: dev.py, benchmark scripts, proxies, markers, cleanup."""
