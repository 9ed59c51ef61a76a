"""Audit chunks on disk (plan, atomic chunk files, resumption guard) and the streaming statistics over them: one
chunk at a time gives what the whole set at once gives."""

from __future__ import annotations

import numpy as np
import pytest

from detector.audit import chunks
from detector.audit.stats import AuditStats
from detector.data.synthetic import bars
from detector.errors import InvalidInput
from detector.scoring.scorer import PRIMARY, Scorer, ScoreResult


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


def plan(**changes) -> chunks.AuditPlan:
    return chunks.AuditPlan(**{"model_version": "m1", "data_name": "d", "data_fingerprint": "f", "n_samples": 10,
                               "chunk_size": 4, **changes})


def test_a_plan_cuts_the_set_into_whole_chunks_and_a_tail():
    p = plan()
    assert p.n_chunks == 3 and [p.chunk_range(i) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]


def test_a_folder_is_reused_only_for_the_same_audit(tmp_path):
    chunks.prepare(tmp_path, plan())
    chunks.prepare(tmp_path, plan())  # the same audit resumes
    with pytest.raises(InvalidInput, match="holds an audit of other data or another model"):
        chunks.prepare(tmp_path, plan(model_version="m2"))
    with pytest.raises(InvalidInput, match="diagnostics"):
        chunks.prepare(tmp_path, plan(diagnostics=["iw_nll"]))


def test_a_chunk_round_trips_and_only_a_finished_write_counts_as_done(tmp_path, scorer):
    chunks.prepare(tmp_path, plan())
    result = scorer.score(bars(4, size=16, seed=1))
    assert not chunks.is_done(tmp_path, 1)
    chunks.write_chunk(tmp_path, 1, 4, result, np.array([0, 1, 0, 1]))
    assert chunks.is_done(tmp_path, 1)
    assert not list((tmp_path / "chunks").glob("*.tmp*"))  # written under a temporary name, then renamed
    back = chunks.read_chunk(tmp_path, 1)
    np.testing.assert_array_equal(back["index"], [4, 5, 6, 7])
    np.testing.assert_array_equal(back["label"], [0, 1, 0, 1])
    np.testing.assert_array_equal(ScoreResult.from_columns(back).scores[PRIMARY], result.scores[PRIMARY])


def test_statistics_streamed_chunk_by_chunk_equal_the_whole_set_at_once(tmp_path, scorer):
    x = np.concatenate([bars(30, size=16, seed=2), bars(10, size=16, seed=3, vertical=True)])
    labels = np.r_[np.zeros(30, int), np.ones(10, int)]
    result = scorer.score(x)
    whole = {"index": np.arange(40), "label": labels, **result.to_columns(),
             "latent_mean": result.latent_mean.astype(np.float32)}
    at_once, streamed = AuditStats(scorer), AuditStats(scorer)
    at_once.set_total(40)
    streamed.set_total(40)
    at_once.add(whole)
    for start in range(0, 40, 7):
        streamed.add({k: v[start:start + 7] for k, v in whole.items()})
    assert streamed.n == at_once.n == 40
    assert dict(streamed.novel) == dict(at_once.novel)
    assert streamed.per_label.keys() == at_once.per_label.keys() and streamed.per_label[1]["n"] == 10
    for label, row in at_once.per_label.items():
        assert {k: streamed.per_label[label][k] for k in ("n", "novel", "resample")} == \
            {k: row[k] for k in ("n", "novel", "resample")}
        assert streamed.per_label[label]["weight_sum"] == pytest.approx(row["weight_sum"], rel=1e-6)  # float32 sums
    np.testing.assert_array_equal(streamed.top_index, at_once.top_index)  # the most novel, the same ones
    np.testing.assert_array_equal(streamed.bottom_index, at_once.bottom_index)
    assert int(np.argmax(result.scores[PRIMARY])) == at_once.top_index[0]
