"""benchmarks/timing.py with fake callables and a fake clock: the round-robin order, warm-up rounds left out, the
median and spread, threads fixed and restored, inference mode."""

from __future__ import annotations

import pytest
import torch

from benchmarks.timing import Timing, fixed_threads, round_order, time_interleaved


class FakeClock:
    """A clock that only moves when a fake candidate runs: each call advances it by its next scripted duration."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def candidate(self, name: str, durations: list[float]):
        script = iter(durations)

        def call() -> None:
            self.log.append(name)
            self.now += next(script)

        return call


def test_round_order_rotates_the_starting_candidate():
    assert round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert round_order(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert round_order(["a", "b", "c"], 5) == ["c", "a", "b"]
    assert round_order([], 3) == []


def test_calls_are_interleaved_and_warmup_rounds_are_not_timed():
    clock = FakeClock()
    calls = {"a": clock.candidate("a", [100.0, 5.0, 1.0, 3.0]), "b": clock.candidate("b", [200.0, 2.0, 2.0, 8.0]),
             "c": clock.candidate("c", [300.0, 4.0, 6.0, 4.0])}
    times = time_interleaved(calls, items=4, warmup=1, repeats=3, threads=1, clock=clock)
    assert clock.log == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert times["a"].seconds == (5.0, 1.0, 3.0)  # the 100 s warm-up round is left out
    assert [times[n].median_s for n in "abc"] == [3.0, 2.0, 4.0]
    assert times["b"].images_per_s == 2.0 and times["b"].spread == (0.5, 2.0)
    assert str(times["c"]) == "1.0 img/s (0.7-1.0)"


def test_timing_median_of_an_even_count_and_single_round():
    assert Timing((1.0, 4.0, 2.0, 3.0), items=5).median_s == 2.5
    single = Timing((0.25,), items=2)
    assert single.images_per_s == 8.0 and single.spread == (8.0, 8.0)


def test_threads_are_fixed_while_timing_and_restored_after_an_error():
    torch.set_num_threads(1)
    seen = []

    def probe() -> None:
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))

    time_interleaved({"p": probe}, warmup=0, repeats=1, threads=2)
    time_interleaved({"p": probe}, warmup=0, repeats=1, threads=2, inference=False)
    assert seen == [(2, True), (2, False)]
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="boom"), fixed_threads(2):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 1 and not torch.is_inference_mode_enabled()


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"items": 0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError, match="must be"):
        time_interleaved({"p": lambda: None}, **kwargs)
