"""The build cache: the key of every step, and the table of the layers keys stand for.

``keys.py`` turns what a step depends on into a key (pure functions, no I/O);
``index.py`` looks keys up in the store's ``cache`` table and records them.
"""
