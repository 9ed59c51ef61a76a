"""The anomaly-map segmenter: its synthetic training anomalies, the network, its training and how bundles keep it."""

import pytest
import torch

from detector.config import TrainConfig
from detector.data.synthetic import bars
from detector.model.segmenter import CONFIG_KEY, PREFIX, MapSegmenter, model_weights
from detector.training.anomalies import CHANGED, synthesize
from detector.training.segmenter import MIN_BUDGET_S, focal_loss, map_steps, segmenter_budget


def images(n: int = 64, size: int = 16, channels: int = 1) -> torch.Tensor:
    return torch.from_numpy(bars(n, size=size, channels=channels, seed=3)).float() / 255


def test_synthetic_anomalies_are_deterministic_on_the_pixel_grid_and_targets_are_the_changed_pixels():
    x = images()
    out, target = synthesize(x, torch.Generator().manual_seed(5))
    again, target_again = synthesize(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, again) and torch.equal(target, target_again)
    assert out.shape == x.shape and target.shape == (64, 16, 16)
    assert out.min() >= 0 and out.max() <= 1 and torch.equal(out * 255, (out * 255).round())
    changed = (out - x).abs().amax(dim=1) > CHANGED
    assert torch.equal(target.bool(), changed)
    touched = target.flatten(1).any(dim=1)
    assert 0.4 < touched.float().mean() < 0.95  # some images are left clean, most are not
    assert target[touched].mean() < 0.3  # regions, not whole images


def test_synthetic_anomalies_in_colour_and_other_sizes():
    x = images(32, size=24, channels=3)
    out, target = synthesize(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and target.shape == (32, 24, 24) and target.any()


def test_segmenter_takes_any_size_and_its_weights_travel_with_the_model_weights():
    seg = MapSegmenter(3, widths=(4, 6, 8)).eval()
    for h, w in ((16, 16), (28, 28), (17, 30)):
        x = torch.rand(2, 3, h, w)
        assert seg(x, x).shape == (2, h, w)
    vae_weights = {"encoder.w": torch.zeros(1)}
    config, stored = seg.stored_with({"name": "vae"}, vae_weights)
    assert vae_weights == {"encoder.w": stored["encoder.w"]} and len(vae_weights) == 1  # its arguments untouched
    assert all(k.startswith(PREFIX) for k in stored if k != "encoder.w")
    assert model_weights(stored) == {"encoder.w": stored["encoder.w"]}
    assert config == {"name": "vae", CONFIG_KEY: seg.config()}
    rebuilt = MapSegmenter.from_bundle(config, stored)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(rebuilt(x, x), seg(x, x))
    assert MapSegmenter.from_bundle({}, stored) is None  # a bundle written before the segmenter


def test_segmenters_written_with_concatenated_skips_still_load_and_give_their_maps():
    """Bundles of 2026-12-01 hold a U-Net whose up-blocks concatenate; their config names no "skips"."""
    old = MapSegmenter(1, widths=(4, 6, 8), skips="concat").eval()
    config, weights = old.stored_with({}, {})
    del config[CONFIG_KEY]["skips"]
    rebuilt = MapSegmenter.from_bundle(config, weights)
    assert rebuilt.skips == "concat" and MapSegmenter(1, widths=(4, 6, 8)).skips == "add"
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(rebuilt(x, x), old(x, x))
    with pytest.raises(ValueError, match="add.*concat"):
        MapSegmenter(1, skips="sum")


def test_steps_are_capped_by_passes_over_small_sets_and_focal_loss_prefers_the_truth():
    assert map_steps(TrainConfig(), 48_000) == 3000
    assert map_steps(TrainConfig(), 1_600) == 500  # 20 passes of 64
    assert map_steps(TrainConfig(map_epochs=4), 1_600) == 100
    target = (torch.rand(4, 8, 8) > 0.8).float()
    right, wrong = (target * 2 - 1) * 4, (1 - target * 2) * 4
    assert focal_loss(right, target) < focal_loss(torch.zeros_like(target), target) < focal_loss(wrong, target)


def test_a_time_budget_cuts_the_steps_and_they_are_recorded(monkeypatch):
    from detector.training import segmenter as training

    assert training._fitting_steps(1500, done=25, elapsed=3.0, pace=0.1, budget_s=60.0) == 25 + 570
    assert training._fitting_steps(1500, done=25, elapsed=0.3, pace=0.01, budget_s=60.0) == 1500  # fits: as planned
    assert training._fitting_steps(1500, done=25, elapsed=100.0, pace=1.0, budget_s=60.0) == 26  # over: one more
    assert training._fitting_steps(1500, done=25, elapsed=100.0, pace=1.0, budget_s=0.0) == 1500  # no budget
    # The clock is read at the start, after the warm-up steps and after the probe steps: 20 probe steps "take" 20 s.
    clock = iter([0.0, 5.0, 25.0])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    seg = training.train_segmenter(_TinyVAE(), (images(32) * 255).to(torch.uint8),
                                   TrainConfig(map_steps=1500, map_epochs=100, map_budget_s=30.0),
                                   torch.device("cpu"), progress=False)
    assert seg.steps == 30 and seg.config()["steps"] == 30


def test_the_run_deadline_cuts_the_budget_to_what_is_left_but_not_below_the_floor():
    default = TrainConfig()  # 300 s budget, the segmenter done 810 s into the run
    assert segmenter_budget(default, elapsed_s=100.0) == 300.0  # a fast machine: the budget
    assert segmenter_budget(default, elapsed_s=600.0) == 210.0  # a slow one: what is left
    assert segmenter_budget(default, elapsed_s=800.0) == MIN_BUDGET_S  # the VAE took nearly all: the floor
    assert segmenter_budget(TrainConfig(map_deadline_s=0), elapsed_s=800.0) == 300.0  # no deadline
    assert segmenter_budget(TrainConfig(map_budget_s=0), elapsed_s=700.0) == 110.0  # the deadline alone
    assert segmenter_budget(TrainConfig(map_budget_s=0, map_deadline_s=0), elapsed_s=700.0) == 0.0  # no limit


def test_a_machine_that_slows_down_mid_way_cuts_the_steps_again(monkeypatch):
    from detector.training import segmenter as training

    # The probe's 20 steps take 2 s (300 steps fit in the 30 s budget); the next 50 take 50 s: past the budget, the
    # re-timing after them stops the training one step later.
    clock = iter([0.0, 0.5, 2.5, 52.5])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    rates = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    seg = training.train_segmenter(_TinyVAE(), (images(32) * 255).to(torch.uint8),
                                   TrainConfig(map_steps=1500, map_epochs=1000, map_budget_s=30.0),
                                   torch.device("cpu"), progress=False)
    assert seg.steps == 25 + 50 + 1
    assert rates[:26] == [training.LR] * 26  # full rate until the annealing starts
    assert all(a > b for a, b in zip(rates[25:], rates[26:]))  # then falling, steeper once the steps were cut
    assert rates[-1] < 0.05 * training.LR


class _TinyVAE(torch.nn.Module):
    """Stands in for the VAE: the identity as reconstruction."""

    def encode(self, x):
        return x, x

    def decode(self, z):
        return z

    def reconstruct(self, params):
        return params
