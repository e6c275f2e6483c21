"""One small context manager that times the phases of an iteration."""
import time
from contextlib import contextmanager


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase: ``with timer("forward"): ...``."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def __call__(self, phase):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self):
        """Return the accumulated seconds and start again from zero."""
        seconds, self.seconds = self.seconds, {}
        return seconds
