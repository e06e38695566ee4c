"""Wall time by phase, with nesting: time spent in an inner phase is not counted in the outer one."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict


class PhaseClock:
    """`with clock("forward"): ...`; `clock.seconds` maps each phase to its exclusive wall time.

    A phase entered inside another (the Hessian accumulation inside a forward pass's hook) is
    subtracted from the outer one, so the phases add up to the time spent inside any of them.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # time of nested phases, per open phase

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            inner = self._inner.pop()
            self.seconds[phase] += elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}
