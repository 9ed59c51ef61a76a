"""The benchmarks' timing helpers, on a fake clock (no real time is measured)."""

from detector import timing


class FakeClock:
    """perf_counter for the helpers: each call of a timed function advances it by that function's cost."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def call(self, name: str, cost: float):
        def fn():
            self.calls.append(name)
            self.now += cost
        return fn


def test_paired_ratios_alternate_the_calls_and_divide_reference_by_fn_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    ratios = timing.paired_ratios(clock.call("score", 4.0), clock.call("model", 1.0), rounds=3)
    assert ratios == [0.25, 0.25, 0.25]
    # one warm-up call of each, then each round times the pair back to back
    assert clock.calls == ["score", "model"] + ["model", "score"] * 3


def test_best_rate_is_items_over_the_fastest_call(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    costs = iter([9.0, 2.0, 1.0, 4.0])  # the warm-up call, then three timed ones

    def fn():
        clock.now += next(costs)

    assert timing.best_rate(fn, 10, repeat=3) == 10.0
