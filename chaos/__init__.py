"""chaos: fault-injection runs against a pipelined compiled graph under load.

Each module is runnable alone (``python -m chaos.<name> --seed N``) and from pytest
(``pytest -m chaos chaos``, ``tox -e chaos``). Each injects one kind of fault at a
random point (the seed is printed, so a failure replays), then checks that the
documented exception arrives within a bound, that nothing hangs, and that no
shared-memory segment, fd or thread is left behind.
"""
