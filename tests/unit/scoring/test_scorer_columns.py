"""ScoreResult <-> named columns: the one mapping tables, audit chunks and the audit merge share."""

import numpy as np

from detector.scoring.scorer import ScoreResult
from detector.scoring.table import result_columns


def example(with_weights: bool = True) -> ScoreResult:
    rng = np.random.default_rng(0)
    return ScoreResult(scores={"novelty": rng.normal(size=4), "neg_elbo": rng.normal(size=4)},
                       p_values={"novelty": rng.uniform(size=4)}, novel={"novelty": np.array([1, 0, 0, 1], bool)},
                       thresholds={"novelty": 2.0}, latent_mean=rng.normal(size=(4, 3)),
                       resample_weight=rng.uniform(size=4) if with_weights else None,
                       resample=np.array([0, 1, 0, 0], bool) if with_weights else None)


def test_columns_round_trip():
    for with_weights in (True, False):
        r = example(with_weights)
        cols = r.to_columns()
        assert {"score/novelty", "score/neg_elbo", "p_value/novelty", "novel/novelty", "latent_mean"} <= set(cols)
        back = ScoreResult.from_columns({**cols, "index": np.arange(4)}, r.thresholds)
        assert back.thresholds == r.thresholds and ("resample_weight" in cols) == with_weights
        for key, values in cols.items():
            np.testing.assert_array_equal(back.to_columns()[key], values, err_msg=key)


def test_table_names_follow_the_table_contract():
    cols = result_columns(example(), np.arange(4), np.zeros(4, int))
    assert list(cols) == ["index", "label", "novelty", "neg_elbo", "p_value_novelty", "is_novel_novelty",
                          "resample_weight", "resample"]
