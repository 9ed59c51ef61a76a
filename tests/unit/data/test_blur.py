"""The shared Gaussian blur: an impulse spreads into a normalised, symmetric bump whose spread follows sigma."""

from __future__ import annotations

import torch

from detector.data.blur import gaussian_blur


def test_an_impulse_becomes_a_normalised_symmetric_bump_as_wide_as_sigma():
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    spreads = []
    for sigma in (1.0, 2.0):
        bump = gaussian_blur(impulse, sigma)[0, 0]
        assert bump.shape == (21, 21)
        assert abs(float(bump.sum()) - 1.0) < 1e-3
        assert torch.allclose(bump, bump.flip(0)) and torch.allclose(bump, bump.T)
        assert bump.argmax() == 10 * 21 + 10
        ys = torch.arange(21.0) - 10
        spreads.append(float((bump.sum(1) * ys ** 2).sum().sqrt()))
    assert abs(spreads[0] - 1.0) < 0.1 and abs(spreads[1] - 2.0) < 0.15


def test_any_leading_dimensions_are_blurred_alike():
    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gaussian_blur(x, 1.5)[1, 2], gaussian_blur(x[1, 2][None], 1.5)[0])


def test_the_zero_padded_blur_is_the_same_gaussian_away_from_the_borders_and_loses_mass_at_them():
    from detector.data.blur import kernel_radius, zero_padded_blur

    x = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(1))
    r = kernel_radius(1.5)
    zero, reflected = zero_padded_blur(x, 1.5), gaussian_blur(x, 1.5)
    assert zero.shape == x.shape
    torch.testing.assert_close(zero[..., r:-r, r:-r], reflected[..., r:-r, r:-r], rtol=1e-4, atol=1e-5)
    ones = zero_padded_blur(torch.ones(1, 9, 9), 1.5)[0]
    assert abs(float(ones[4, 4]) - 1.0) < 1e-4 and float(ones[0, 0]) < 0.6  # the corner sees a quarter of zeros
