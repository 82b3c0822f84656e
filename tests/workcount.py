"""Counting the work a function does, not the time it takes: every Python-level and C-level call
made while it runs (``sys.setprofile``).  A regular expression's own steps are not seen here;
those are held to linear time by their structure (tests/test_linear.py)."""

from __future__ import annotations

import sys


def calls(fn, *args) -> int:
    """How many calls ``fn(*args)`` makes, itself included."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return count


def steps(fn, *args) -> int:
    """How many Python lines and calls ``fn(*args)`` executes (``sys.settrace``): a loop
    without calls in it counts too, which :func:`calls` does not see."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        count += 1
        return local

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        return local

    sys.settrace(trace)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


def grows_linearly(fn, make, sizes=(1_000, 2_000, 4_000, 8_000), slack: int = 64) -> list[int]:
    """Assert that doubling the input at most doubles the calls (plus a constant); return them."""
    counts = [calls(fn, make(n)) for n in sizes]
    for small, big in zip(counts, counts[1:]):
        assert big <= 2 * small + slack, (make(8)[:80], counts)
    return counts
