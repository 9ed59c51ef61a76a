import numpy as np

from detector.data.synthetic import bars
from detector.scoring.complexity import complexity_bpd


def test_simpler_images_code_shorter():
    rng = np.random.default_rng(0)
    blank = np.zeros((4, 1, 28, 28), np.uint8)
    structured = bars(4, size=28)
    noise = rng.integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    c_blank, c_bars, c_noise = (complexity_bpd(b).mean() for b in (blank, structured, noise))
    assert c_blank < c_bars < c_noise
    assert c_noise > 7.0  # incompressible noise costs about 8 bits per pixel


def test_float_input_equals_its_uint8_quantisation_and_channels_are_handled():
    img = bars(3, size=16, channels=3)
    np.testing.assert_allclose(complexity_bpd(img), complexity_bpd(img.astype(np.float32) / 255))
    two = bars(2, size=16, channels=2)
    assert complexity_bpd(two).shape == (2,)


def test_residual_statistics_order_inputs_by_complexity_like_the_codec():
    import torch

    from detector.scoring.complexity import residual_statistics

    rng = np.random.default_rng(0)
    blank = np.zeros((4, 1, 28, 28), np.uint8)
    structured = bars(4, size=28)
    noise = rng.integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    stats = [residual_statistics(torch.from_numpy(b.astype(np.float32) / 255)) for b in (blank, structured, noise)]
    for name in ("code_length", "residual_log_magnitude", "residual_magnitude"):
        means = [float(s[name].mean()) for s in stats]
        assert means[0] < means[1] < means[2], name
    assert float(stats[0]["code_length"].max()) == 0.0  # a constant image: every residual is 0
    assert 7.0 < float(stats[2]["code_length"].mean()) <= 9.0  # noise residuals: about 8 bits each


def test_residual_statistics_are_per_sample_and_rgb_averages_channels():
    import torch

    from detector.scoring.complexity import residual_statistics

    x = torch.from_numpy(bars(5, size=16, channels=3).astype(np.float32) / 255)
    together = residual_statistics(x)
    alone = [residual_statistics(x[i:i + 1]) for i in range(5)]
    for name, values in together.items():
        assert values.shape == (5,)
        torch.testing.assert_close(values, torch.cat([a[name] for a in alone]))


def test_wavelet_lifting_is_jpeg2000s_reversible_5_3():
    import torch

    from detector.scoring.complexity import _lift

    x = torch.tensor([[10.0, 12.0, 14.0, 20.0, 20.0, 20.0, 0.0, 255.0]])
    low, high = _lift(x)
    # high[i] = x[2i+1] - floor((x[2i] + x[2i+2]) / 2), the last even sample repeated at the edge
    torch.testing.assert_close(high, torch.tensor([[0.0, 3.0, 10.0, 255.0]]))
    # low[i] = x[2i] + floor((high[i-1] + high[i] + 2) / 4), the first high sample repeated at the edge
    torch.testing.assert_close(low, torch.tensor([[10.0, 15.0, 23.0, 66.0]]))
    # reversible: undo the two lifting steps
    prev = torch.cat([high[:, :1], high[:, :-1]], dim=1)
    even = low - torch.floor((prev + high + 2) / 4)
    odd = high + torch.floor((even + torch.cat([even[:, 1:], even[:, -1:]], dim=1)) / 2)
    torch.testing.assert_close(torch.stack([even, odd], dim=2).flatten(1), x)


def test_wavelet_statistics_order_complexity_and_see_blur_at_the_fine_scales():
    import torch
    import torch.nn.functional as F

    from detector.scoring.complexity import wavelet_statistics

    rng = np.random.default_rng(0)
    blank = np.full((4, 1, 28, 28), 77, np.uint8)
    structured = bars(4, size=28)
    noise = rng.integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    stats = [wavelet_statistics(torch.from_numpy(b.astype(np.float32) / 255)) for b in (blank, structured, noise)]
    assert sorted(stats[0]) == ["wavelet_level_1", "wavelet_level_2", "wavelet_level_3"]
    for name in stats[0]:
        assert float(stats[0][name].max()) == 0.0, name  # a constant image has no detail at any scale
        assert float(stats[1][name].mean()) < float(stats[2][name].mean()), name
    # The same noise at a quarter of the resolution, upscaled: the finest scale loses most, the coarsest least.
    sharp = torch.from_numpy(noise.astype(np.float32) / 255)
    blurred = F.interpolate(F.avg_pool2d(sharp, 4), scale_factor=4, mode="bilinear", align_corners=False)
    before, after = wavelet_statistics(sharp), wavelet_statistics(blurred)
    drop = [float((before[f"wavelet_level_{i}"] - after[f"wavelet_level_{i}"]).mean()) for i in (1, 2, 3)]
    assert drop[0] > drop[1] > drop[2] and drop[0] > 3.0


def test_wavelet_statistics_are_per_sample_at_any_size_and_track_jpeg2000():
    import torch
    import torch.nn.functional as F

    from detector.scoring.complexity import wavelet_statistics

    rng = np.random.default_rng(1)
    base = torch.from_numpy(bars(12, size=36, channels=3).astype(np.float32) / 255)[..., :33, :29]  # odd sizes
    noisy = (base + torch.from_numpy(rng.normal(0, 1, base.shape).astype(np.float32))
             * torch.linspace(0, 0.3, 12).view(12, 1, 1, 1)).clamp(0, 1)
    blurred = F.avg_pool2d(noisy, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.cat([noisy, blurred])
    together = wavelet_statistics(x)
    for name, values in together.items():
        assert values.shape == (24,)
        torch.testing.assert_close(values, torch.cat([wavelet_statistics(x[i:i + 5])[name] for i in range(0, 24, 5)]))
    # Summed over the scales, the detail tracks what lossless JPEG 2000 spends (Spearman's rho).
    detail = sum(together.values()).numpy()
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(detail), rank(complexity_bpd(x.numpy())))[0, 1] > 0.9
