import pytest

from detector.config import ScoreConfig, TrainConfig, resolve_epochs, validate_score, validate_train
from detector.errors import ConfigError


def test_auto_epochs_give_large_sets_20_and_small_sets_min_steps():
    assert resolve_epochs(TrainConfig(), 48_600) == 20  # 379 steps an epoch: 20 already exceed 3,000 steps
    assert resolve_epochs(TrainConfig(), 4_800) == 82  # 37 steps an epoch: ceil(3000 / 37)
    assert resolve_epochs(TrainConfig(), 10) == 200  # capped
    assert resolve_epochs(TrainConfig(min_steps=0), 4_800) == 20


def test_explicit_epochs_are_kept():
    assert resolve_epochs(TrainConfig(epochs=3), 4_800) == 3


@pytest.mark.parametrize("cfg", [TrainConfig(epochs=-1), TrainConfig(min_steps=-5)])
def test_negative_epochs_or_steps_are_refused(cfg):
    with pytest.raises(ConfigError):
        validate_train(cfg)


def test_recon_at_names_where_the_reconstruction_is_decoded():
    validate_score(ScoreConfig(recon_at="mean"))
    with pytest.raises(ConfigError, match="recon_at must be one of draw, mean, got 'median'"):
        validate_score(ScoreConfig(recon_at="median"))
