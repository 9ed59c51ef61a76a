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
