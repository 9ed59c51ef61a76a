import numpy as np
import pytest
import torch

from detector.config import ModelConfig
from detector.model.vae import VAE, resolve_model_config
from detector.scoring.latent import LatentReference
from detector.scoring.scores import fixed_noise, raw_scores


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
    for name in ("neg_elbo", "neg_elbo_bpd", "iw_nll", "recon_error", "kl", "latent_distance", "latent_knn",
                 "transform_nll", "posterior_log_var", "code_length", "wavelet_level_1", "wavelet_level_3",
                 "residual_log_magnitude", "residual_magnitude", "intensity_mean", "intensity_std"):
        assert s[name].shape == (5,) and torch.isfinite(s[name]).all(), name


def test_scores_do_not_depend_on_the_batch_a_sample_travels_in(model):
    x = torch.rand(7, 1, 12, 12)
    together = scores(model, x)
    alone = [scores(model, x[i : i + 1]) for i in range(7)]
    for name in ("neg_elbo", "iw_nll", "recon_error", "latent_distance", "latent_knn", "transform_nll",
                 "posterior_log_var", "code_length", "wavelet_level_1", "wavelet_level_2",
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
