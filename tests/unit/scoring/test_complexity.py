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
