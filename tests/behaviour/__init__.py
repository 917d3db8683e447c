"""The library's behaviour over every backend (the embedded store, a real Redis) and both shells."""
