"""Rounds of work on a Dask cluster: one task per row block, results kept where they are computed.

A round submits ``function(block, held…, *args)`` for every block; its result stays on the
block's worker (the scheduler runs a task where its inputs live). ``reduce`` brings back
only the small summaries, summed in an order fixed by block index (so the answer never
depends on which worker finishes first), and ``gather`` brings them back as a list in
block order. Every round counts its tasks, the bytes it moves (arguments
out to every block, one summary back from every block) and its wall time against the
slowest block's compute time (the rest is scheduling, serialisation and transfer).
"""
import concurrent.futures
import functools
import time

import numpy as np

from ..models import add_summaries
from . import blocks as block_functions


# Up to this many blocks the driver sums the partials itself (one round trip less per
# reduction: measured ~10–20 ms per scheduler round trip on the 2-core test machine);
# beyond it a tree on the workers keeps the driver's inbound traffic to one partial.
DRIVER_SUM_BLOCKS = 8


# A round waits for its tasks however long they compute, but not while the cluster has no worker
# at all (e.g. after cluster.scale(0), or every worker gone without a nanny to restart it): then
# nothing can ever finish, so after this many seconds without any worker the solve raises
# ClusterError (``fastnewton.dask.solve(worker_timeout=...)``). 60 s covers a nanny restarting a
# killed worker (a few seconds) and an adaptive cluster scaling back up from zero.
WORKER_TIMEOUT = 60.0
# How often a waiting round checks that the cluster still has workers (a round is ~20 ms, so a
# finished round never waits for the poll).
WORKER_POLL_SECONDS = 0.25


class ClusterError(RuntimeError):
    """The Dask cluster (or the connection to it) was lost; no result is returned."""


def wait_for_workers(client, futures, timeout=WORKER_TIMEOUT):
    """Wait until ``futures`` finish; ClusterError when the cluster has had no worker for ``timeout`` s."""
    import distributed

    without_workers_since = None
    while True:
        try:
            distributed.wait(futures, timeout=WORKER_POLL_SECONDS)
            return
        except TimeoutError:
            pass
        if client.scheduler_info(n_workers=-1)["workers"]:
            without_workers_since = None
            continue
        now = time.perf_counter()
        without_workers_since = without_workers_since or now
        if now - without_workers_since >= timeout:
            raise ClusterError(f"the Dask cluster has had no workers for {timeout:g} s (e.g. after "
                               f"cluster.scale(0)), so the solve cannot continue; no result is returned")


def _lost_cluster_errors():
    errors = [concurrent.futures.CancelledError, OSError, TimeoutError]
    try:
        from distributed import KilledWorker
        from distributed.client import ClosedClientError

        errors += [KilledWorker, ClosedClientError]
    except ImportError:  # pragma: no cover - distributed is an install requirement of fastnewton.dask
        pass
    return tuple(errors)


def payload_bytes(value):
    """Bytes of the arrays and numbers in an argument or summary (what travels, up to framing)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(payload_bytes(v) for v in value)
    return 8


class Rounds:
    """The client, the block futures, and the counters of what the rounds cost."""

    def __init__(self, client, block_futures):
        self.client = client
        self.blocks = block_futures
        self._lost = _lost_cluster_errors()
        self.worker_timeout = WORKER_TIMEOUT
        self.totals = self._zero()
        self._since = self._zero()

    @staticmethod
    def _zero():
        return {"rounds": 0, "tasks": 0, "bytes_moved": 0, "round_seconds": 0.0, "block_seconds": 0.0}

    def _count(self, **amounts):
        for key, value in amounts.items():
            self.totals[key] += value
            self._since[key] += value

    def take_counts(self):
        """The counters since the last call (one Newton iteration's worth)."""
        counts, self._since = self._since, self._zero()
        return counts

    def _call(self, action, *args, **kwargs):
        try:
            return action(*args, **kwargs)
        except self._lost as exc:
            raise ClusterError(
                f"the Dask cluster was lost during the solve ({type(exc).__name__}: {exc}); "
                "no result is returned") from exc

    def run(self, function, *held, args=()):
        """Submit function(block_p, held[0][p], …, *args) for every block p; the futures stay on the workers."""
        self._round_start = time.perf_counter()
        # One client.map call is one scheduler message for all blocks (measured: 18 ms per round
        # instead of 21 ms for a loop of submits on the 2-core test machine).
        count = len(self.blocks)
        futures = self._call(lambda: self.client.map(
            function, self.blocks, *held, *([arg] * count for arg in args), pure=False))
        self._count(tasks=len(futures), bytes_moved=len(futures) * payload_bytes(args))
        return futures

    def _summaries(self, futures):
        return self.client.map(block_functions.summary_of, futures, pure=False)

    def reduce(self, futures):
        """The blocks' summaries summed in a fixed order: in block order on the driver for a few blocks,
        else over a binary tree on the workers (by block index), so the driver receives one partial."""
        if len(futures) <= DRIVER_SUM_BLOCKS:
            return functools.reduce(add_summaries, self.gather(futures))
        level = self._call(self._summaries, futures)
        tasks = len(level)
        while len(level) > 1:
            pairs = [self.client.submit(add_summaries, level[i], level[i + 1], pure=False)
                     for i in range(0, len(level) - 1, 2)]
            tasks += len(pairs)
            level = pairs + level[len(pairs) * 2:]
        self._call(wait_for_workers, self.client, level[:1], self.worker_timeout)
        summary = self._call(level[0].result)
        self._finish(tasks, len(futures) * payload_bytes(summary), summary.get("max_seconds", 0.0))
        return summary

    def gather(self, futures):
        """The blocks' summaries as a list in block order."""
        def wait_and_gather():
            pending = self._summaries(futures)
            wait_for_workers(self.client, pending, self.worker_timeout)
            return self.client.gather(pending)

        summaries = self._call(wait_and_gather)
        slowest = max((s.get("max_seconds", 0.0) for s in summaries if isinstance(s, dict)), default=0.0)
        self._finish(len(futures), sum(payload_bytes(s) for s in summaries), slowest)
        return summaries

    def _finish(self, tasks, moved, slowest):
        self._count(rounds=1, tasks=tasks, bytes_moved=moved,
                    round_seconds=time.perf_counter() - self._round_start, block_seconds=slowest)
