import pytest
import torch

from detector.config import ModelConfig
from detector.model.vae import VAE, kl_divergence, resolve_model_config


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64), (3, 31, 17), (1, 5, 5)])
def test_conv_vae_round_trips_any_image_size(shape):
    cfg = resolve_model_config(ModelConfig(latent_dim=3, base_channels=4), "image", shape)
    model = VAE(cfg)
    x = torch.rand(2, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == (2, 3) and logvar.shape == (2, 3)
    params = model.decode(mu)
    assert model.reconstruct(params).shape == x.shape
    assert model.log_likelihood(x, params).shape == (2,)


@pytest.mark.parametrize("likelihood", ["cbernoulli", "gaussian", "logistic"])
def test_likelihoods_give_finite_per_sample_values(likelihood):
    cfg = resolve_model_config(ModelConfig(latent_dim=2, base_channels=4, likelihood=likelihood), "image", (1, 8, 8))
    model = VAE(cfg)
    x = torch.cat([torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8), torch.rand(1, 1, 8, 8)])
    ll = model.log_likelihood(x, model.decode(torch.zeros(3, 2)))
    assert ll.shape == (3,) and torch.isfinite(ll).all()


def test_discretized_logistic_is_a_distribution_over_256_levels():
    from detector.model.likelihoods import log_likelihood

    levels = torch.arange(256, dtype=torch.float32).div(255).view(256, 1)
    params = torch.tensor([[0.1, -1.0]]).repeat(256, 1)  # mean 0.1 (in [-1,1] space), log-scale -1
    total = log_likelihood("logistic", levels, params, -4.5).exp().sum()
    assert total == pytest.approx(1.0, abs=1e-4)


def test_mlp_vae_standardises_vectors_inside():
    cfg = resolve_model_config(ModelConfig(latent_dim=2, hidden=(8,)), "vector", (5,))
    assert cfg.kind == "mlp" and cfg.likelihood == "gaussian"
    model = VAE(cfg)
    model.input_mean.fill_(10.0)
    model.input_std.fill_(2.0)
    x = torch.full((1, 5), 10.0)
    torch.testing.assert_close(model.normalize(x), torch.zeros(1, 5))


def test_kl_is_zero_at_the_prior():
    assert kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 5, 7)])
def test_transforms_are_distinct_shape_preserving_and_the_first_is_the_identity(shape):
    from detector.model.vae import N_TRANSFORMS, apply_transform

    x = torch.rand(2, *shape)
    outs = [apply_transform(x, t) for t in range(N_TRANSFORMS)]
    assert torch.equal(outs[0], x) and all(o.shape == x.shape for o in outs)
    assert all(not torch.equal(outs[i], outs[j]) for i in range(N_TRANSFORMS) for j in range(i))


def test_only_conv_vaes_carry_a_transform_head_and_its_loss_never_reaches_the_encoder():
    mlp = VAE(resolve_model_config(ModelConfig(latent_dim=2, hidden=(8,)), "vector", (5,)))
    assert mlp.transform_head is None and not mlp.cfg.transform_head
    assert mlp(torch.rand(3, 5), torch.zeros(3, 2))[2].tolist() == [0.0, 0.0, 0.0]
    model = VAE(resolve_model_config(ModelConfig(latent_dim=2, base_channels=4), "image", (1, 8, 8)))
    nll, kl, transform = model(torch.rand(4, 1, 8, 8), torch.zeros(4, 2))
    assert transform.shape == (4,) and (transform > 0).all()
    transform.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.transform_head.parameters())


def test_bundles_written_before_the_transform_head_read_without_one():
    from dataclasses import asdict

    cfg = resolve_model_config(ModelConfig(latent_dim=2, base_channels=4), "image", (1, 8, 8))
    stored = {k: v for k, v in asdict(cfg).items() if k != "transform_head"}
    assert ModelConfig.from_json(stored).transform_head is False
    assert ModelConfig.from_json(asdict(cfg)) == cfg
