import numpy as np
import pytest

from detector.data import ood_suite

SHAPES = [(1, 28, 28), (3, 64, 64), (3, 128, 128)]  # 128: frames larger than half of some photos
GENERATORS = [make for _, _, make in ood_suite.SUITE] + [ood_suite.coloured_objects]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_generators_are_deterministic_uint8_of_the_asked_shape(make, shape):
    a = make(8, shape, seed=3)
    assert a.dtype == np.uint8 and a.shape == (8, *shape)
    np.testing.assert_array_equal(a, make(8, shape, seed=3))
    assert not np.array_equal(a, make(8, shape, seed=4))


def test_sets_differ_in_kind():
    shape = (1, 28, 28)
    blank, hand, noise = (make(40, shape, seed=0).astype(np.float32) / 255
                          for make in (ood_suite.blank, ood_suite.handwriting, ood_suite.noise))
    within = lambda x: x.std(axis=(1, 2, 3)).mean()  # noqa: E731
    assert within(blank) < 0.05 < min(within(hand), within(noise))
    # Handwriting is laid out as MNIST: light strokes on black, centred by mass.
    assert hand[:, :, 0, :].max() < 0.1 and hand.mean() < 0.3
    rows = np.arange(28, dtype=np.float32)
    centre = (hand.sum(axis=(1, 3)) * rows).sum(1) / hand.sum(axis=(1, 2, 3))
    assert np.all(np.abs(centre - 14) < 1.5)


def test_rgb_handwriting_is_ink_on_paper():
    x = ood_suite.handwriting(20, (3, 64, 64), seed=0).astype(np.float32) / 255
    assert x.shape[1] == 3 and np.median(x) > 0.5  # mostly paper

