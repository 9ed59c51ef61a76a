import numpy as np
import pytest
import torch

from detector.config import ModelConfig
from detector.model.vae import VAE, resolve_model_config
from detector.scoring.latent import LatentReference
from detector.scoring.scores import LOWPASS_RADIUS, LOWPASS_SIGMA, fixed_noise, lowpass_error, raw_scores


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VAE(resolve_model_config(ModelConfig(latent_dim=3, base_channels=4), "image", (1, 12, 12))).eval()


def scores(model, x, k=16, chunk=4096, views=4, recon_at="draw"):
    reference = LatentReference(torch.zeros(3), torch.eye(3), torch.eye(3), torch.randn(40, 3, generator=torch.Generator().manual_seed(0)))
    eps = fixed_noise(k, 3)
    return raw_scores(model, x, eps, reference, chunk, iw_eps=eps, transform_views=views, recon_at=recon_at)


@pytest.mark.parametrize("k", [1, 3])
def test_recon_error_reconstructs_at_the_first_draw_or_at_the_posterior_mean(model, k):
    x = torch.rand(5, 1, 12, 12)
    with torch.inference_mode():
        mu, logvar = model.encode(x)
        first_draw = mu + torch.exp(0.5 * logvar) * fixed_noise(k, 3)[0]
        expected = {at: (model.reconstruct(model.decode(z)) - x).pow(2).flatten(1).mean(dim=1)
                    for at, z in (("draw", first_draw), ("mean", mu))}
    for at in ("draw", "mean"):
        for chunk in (3, 4096):  # decoded in chunks of one sample's K draws, or all at once
            got = scores(model, x, k=k, chunk=chunk, recon_at=at)["recon_error"]
            torch.testing.assert_close(got, expected[at], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(expected["draw"], expected["mean"])


def blurred_by_hand(residual: np.ndarray) -> np.ndarray:
    """(B, C, H, W) blurred by the normalised 2-D Gaussian of LOWPASS_SIGMA out to LOWPASS_RADIUS, zero outside."""
    r = LOWPASS_RADIUS
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / LOWPASS_SIGMA) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    padded = np.pad(residual, ((0, 0), (0, 0), (r, r), (r, r)))
    h, w = residual.shape[-2:]
    return sum(kernel[i, j] * padded[..., i:i + h, j:j + w] for i in range(2 * r + 1) for j in range(2 * r + 1))


def test_lowpass_error_is_the_mean_square_of_the_blurred_residual_each_channel_on_its_own():
    residual = np.random.default_rng(0).normal(size=(3, 3, 10, 13))
    expected = (blurred_by_hand(residual) ** 2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(lowpass_error(torch.from_numpy(residual)).numpy(), expected, rtol=1e-5)
    one_channel = lowpass_error(torch.from_numpy(residual[:, :1]))  # no mixing across channels
    np.testing.assert_allclose(one_channel.numpy(), (blurred_by_hand(residual[:, :1]) ** 2).reshape(3, -1).mean(1),
                               rtol=1e-5)


def test_lowpass_error_keeps_a_difference_of_shape_and_drops_fine_detail():
    yy, xx = np.mgrid[:28, :28]
    shape = np.exp(-((yy - 14) ** 2 + (xx - 9) ** 2) / 40.0)[None, None]  # a missing part: a broad blob
    detail = np.where((yy + xx) % 2, 1.0, -1.0)[None, None] * shape.max()  # pixel-scale texture
    both = torch.from_numpy(np.concatenate([shape, detail]))
    mse = both.pow(2).flatten(1).mean(dim=1)
    kept = (lowpass_error(both) / mse).numpy()
    assert kept[0] > 0.5 and kept[1] < 0.01


def test_recon_error_lowpass_blurs_the_residual_recon_error_squares(model):
    x = torch.rand(4, 1, 12, 12)
    with torch.inference_mode():
        mu, logvar = model.encode(x)
        residual = model.reconstruct(model.decode(mu + torch.exp(0.5 * logvar) * fixed_noise(1, 3)[0])) - x
    got = scores(model, x, k=1)["recon_error_lowpass"]
    torch.testing.assert_close(got, lowpass_error(residual), rtol=1e-5, atol=1e-8)


def test_iw_nll_only_when_asked_for(model):
    reference = LatentReference(torch.zeros(3), torch.eye(3), torch.eye(3), None)
    s = raw_scores(model, torch.rand(4, 1, 12, 12), fixed_noise(1, 3), reference)
    assert "iw_nll" not in s and s["neg_elbo"].shape == (4,)
    again = raw_scores(model, torch.rand(4, 1, 12, 12), fixed_noise(1, 3), reference, iw_eps=fixed_noise(8, 3))
    assert again["iw_nll"].shape == (4,)


def test_transform_views_sum_the_first_turns(model):
    x = torch.rand(6, 1, 12, 12)
    one, two, four = (scores(model, x, views=v)["transform_nll"] for v in (1, 2, 4))
    assert (one < two).all() and (two < four).all()


def test_one_value_per_sample_for_every_score(model):
    s = scores(model, torch.rand(5, 1, 12, 12))
    for name in ("neg_elbo", "neg_elbo_bpd", "iw_nll", "recon_error", "recon_error_lowpass", "kl", "latent_distance",
                 "latent_knn",
                 "transform_nll", "posterior_log_var", "code_length", "wavelet_level_1", "wavelet_level_3",
                 "residual_log_magnitude", "residual_magnitude", "intensity_mean", "intensity_std"):
        assert s[name].shape == (5,) and torch.isfinite(s[name]).all(), name


def test_scores_do_not_depend_on_the_batch_a_sample_travels_in(model):
    x = torch.rand(7, 1, 12, 12)
    together = scores(model, x)
    alone = [scores(model, x[i : i + 1]) for i in range(7)]
    for name in ("neg_elbo", "iw_nll", "recon_error", "recon_error_lowpass", "latent_distance", "latent_knn",
                 "transform_nll", "posterior_log_var", "code_length", "wavelet_level_1", "wavelet_level_2",
                 "wavelet_level_3", "residual_log_magnitude", "residual_magnitude"):
        torch.testing.assert_close(together[name], torch.cat([a[name] for a in alone]), rtol=1e-4, atol=1e-3)


def test_chunking_changes_nothing(model):
    x = torch.rand(9, 1, 12, 12)
    torch.testing.assert_close(scores(model, x, chunk=16)["iw_nll"], scores(model, x, chunk=10_000)["iw_nll"],
                               rtol=1e-5, atol=1e-3)


def test_importance_weighting_tightens_the_bound(model):
    x = torch.rand(64, 1, 12, 12)
    s1, s64 = scores(model, x, k=1), scores(model, x, k=64)
    # More samples: a tighter (smaller) bound on -log p(x), and below the ELBO.
    assert s64["iw_nll"].mean() < s1["iw_nll"].mean()
    assert s64["iw_nll"].mean() < s64["neg_elbo"].mean()


def test_bits_per_dim_is_nats_rescaled(model):
    s = scores(model, torch.rand(3, 1, 12, 12))
    torch.testing.assert_close(s["neg_elbo_bpd"], s["neg_elbo"] / (144 * np.log(2)))
