"""No server at all: pure functions, and operations driven with canned replies."""
