"""The private core: everything the sync and asyncio shells share, with no I/O.

``schema`` and ``keys`` name the stored fields and keys once; ``inputs`` validates what callers
hand us; ``normalization`` is the math; ``protocol`` encodes script arguments and decodes
replies; ``requests`` are the I/O an operation asks for; ``ledger`` owns batch identity and the
memory of unacknowledged batches; ``store_ops`` and ``normalizer_ops`` express every public
method as an operation (a generator of requests); ``formats`` are the snapshot, checkpoint and
metric formats. Nothing here is public API: the names users import are in
``shared_rewardnorm.__all__``.
"""
