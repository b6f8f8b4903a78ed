"""The one way anything in ``benchmarks/`` is timed: interleaved medians with fixed threads.

:func:`time_interleaved` times named candidates (callables that each run one batch) round-robin: every round runs
each candidate once, and the candidate that starts a round rotates from round to round, so a change in the load
of a shared machine touches all candidates alike and none always runs first (or right after the same neighbour).
``warmup`` untimed rounds come first, then ``repeats`` timed rounds. A candidate's result is a :class:`Timing`:
its median over the timed rounds, as images/s, with the spread (slowest..fastest round).

While timing (:func:`fixed_threads`): torch's intra-op threads are set to ``threads`` and restored afterwards,
denormals are flushed (an untrained net's activations drift towards denormal floats, the CPU's slow path), the
calls run under ``torch.inference_mode`` (pass ``inference=False`` to time training steps), and on a CUDA device
the device is synchronised before the clock is read, so the time is the kernels', not their launch.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Timing:
    """The timed rounds of one candidate; ``items`` images are processed per call."""

    seconds: tuple[float, ...]
    items: int = 1

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        return self.items / self.median_s

    @property
    def spread(self) -> tuple[float, float]:
        """Images/s of the slowest and of the fastest timed round."""
        return self.items / max(self.seconds), self.items / min(self.seconds)

    def __str__(self) -> str:
        low, high = self.spread
        return f"{self.images_per_s:.1f} img/s ({low:.1f}-{high:.1f})"


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The candidates in the order round ``round_index`` runs them: ``names`` rotated by the round's index."""
    shift = round_index % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


@contextmanager
def fixed_threads(threads: int | None = None, *, inference: bool = True) -> Iterator[int]:
    """Run the block with ``threads`` torch threads (default: one per core), denormals flushed and, when
    ``inference``, under ``torch.inference_mode``; the previous thread count is restored. Yields the count."""
    previous = torch.get_num_threads()
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        with torch.inference_mode() if inference else nullcontext():
            yield threads
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(calls: Mapping[str, Callable[[], Any]], *, items: int = 1, warmup: int = 1, repeats: int = 5,
                     threads: int | None = None, device: torch.device | str = "cpu", inference: bool = True,
                     desc: str | None = None, clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time every call of ``calls`` round-robin (module docstring); ``clock`` is the timer (seconds)."""
    if repeats < 1 or warmup < 0 or items < 1:
        raise ValueError(f"repeats ({repeats}) and items ({items}) must be >= 1 and warmup ({warmup}) >= 0")
    device = torch.device(device)
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with fixed_threads(threads, inference=inference):
        for r in tqdm(range(warmup + repeats), desc=desc, leave=False, dynamic_ncols=True, disable=desc is None):
            for name in round_order(names, r):
                _sync(device)
                start = clock()
                calls[name]()
                _sync(device)
                elapsed = clock() - start
                if r >= warmup:
                    seconds[name].append(elapsed)
    return {name: Timing(tuple(values), items) for name, values in seconds.items()}
