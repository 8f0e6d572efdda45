"""Search the largest load that still meets a latency budget (pure: the measurement is passed in).

    find_max_passing(evaluate, start=16, limit=1024) -> most sessions for which evaluate(n) held

Doubles from `start` until a load fails (or `limit` passes), then bisects between the last pass and the first
fail until they are within `tolerance` (relative) of each other. Measurements are noisy, so the answer is the
largest load that was measured to pass, not a proof that every smaller load passes.
"""

from __future__ import annotations

from collections.abc import Callable


def find_max_passing(evaluate: Callable[[int], bool], start: int = 16, limit: int = 1024,
                     tolerance: float = 0.1) -> int:
    """Largest n in [1, limit] measured to pass; 0 when even one session fails."""
    if start < 1 or limit < start:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    passed, failed = 0, None
    n = start
    while failed is None:
        if evaluate(n):
            passed = n
            if n == limit:
                return passed
            n = min(2 * n, limit)
        else:
            failed = n
    while failed - passed > max(1, int(passed * tolerance)):
        middle = (passed + failed) // 2
        if evaluate(middle):
            passed = middle
        else:
            failed = middle
    return passed
