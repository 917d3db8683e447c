"""The Redis side: the Lua scripts and Function library, turning ``redis=`` into a client
(URLs, the embedded server, Sentinel) and waiting for replicas. Private: users reach it through
the stores' arguments."""
