import torch

from detector.config import ModelConfig, TrainConfig
from detector.data.synthetic import bars
from detector.model.vae import resolve_model_config
from detector.training.trainer import train_vae


def fit(epochs, warmup, seed=0):
    x = torch.from_numpy(bars(256, size=8, seed=seed))
    cfg = resolve_model_config(ModelConfig(latent_dim=2, base_channels=4), "image", (1, 8, 8))
    return train_vae(cfg, TrainConfig(epochs=epochs, warmup_epochs=warmup, batch_size=32, seed=seed), x[:200], x[200:],
                     torch.device("cpu"), progress=False)


def test_training_is_reproducible_and_lowers_validation_loss():
    (m1, h1), (m2, h2) = fit(4, 1), fit(4, 1)
    assert h1.val_loss == h2.val_loss
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert h1.val_loss[-1] < h1.val_loss[0]


def test_run_shorter_than_warmup_keeps_the_trained_model_not_the_initial_one():
    model, history = fit(2, 5)
    assert history.best_epoch == 1
    torch.manual_seed(0)
    from detector.model.vae import VAE

    initial = VAE(model.cfg)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values()))


def test_the_transform_head_learns_the_orientation_of_normal_images():
    model, _ = fit(6, 1)
    with torch.inference_mode():
        normal = model.transform_nll(torch.from_numpy(bars(64, size=8, seed=5)).float() / 255)
        turned = model.transform_nll(torch.from_numpy(bars(64, size=8, seed=5, vertical=True)).float() / 255)
    # Horizontal bars: a half turn looks the same, so the head can at best split 0/180 from 90/270
    # (4 log 2 = 2.77 nats); vertical bars look like quarter turns of normal ones.
    assert normal.mean() < 3.5 < turned.mean()
