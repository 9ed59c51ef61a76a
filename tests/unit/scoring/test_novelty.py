import numpy as np
import pytest
import torch

from detector.errors import BundleError
from detector.scoring.novelty import (REFERENCE_ARRAY, TYPICALITY_REFERENCE, TYPICALITY_WEIGHT, Component,
                                      NoveltyFusion, Statistic, TypicalityTest, default_fusion)


def normal_raw(rng, n=2000):
    return {"a": rng.normal(10.0, 2.0, n), "b": np.exp(rng.normal(0.0, 0.5, n))}


COMPONENTS = (Component("a", two_sided=False, log=False), Component("b", two_sided=False, log=True))


def test_standardised_components_put_the_normal_99th_percentile_near_2_33():
    rng = np.random.default_rng(0)
    fusion = NoveltyFusion.fit(normal_raw(rng), COMPONENTS, "sum")
    z = fusion.standardized(normal_raw(rng, 20000))
    for v in z.values():
        assert abs(np.median(v)) < 0.05
        assert abs(np.quantile(v, 0.99) - 2.3263) < 0.15


def test_sum_adds_evidence_and_max_takes_the_largest():
    rng = np.random.default_rng(1)
    raw = normal_raw(rng)
    summed, maxed = NoveltyFusion.fit(raw, COMPONENTS, "sum"), NoveltyFusion.fit(raw, COMPONENTS, "max")
    sample = {"a": np.array([30.0, 10.0]), "b": np.array([np.exp(3.0), 1.0])}
    z = np.stack(list(summed.standardized(sample).values()))
    np.testing.assert_allclose(summed.apply(sample), z.sum(0), rtol=1e-6)
    np.testing.assert_allclose(maxed.apply(sample), z.max(0), rtol=1e-6)
    assert summed.apply(sample)[0] > summed.apply(sample)[1]


def test_json_round_trip_and_the_pre_combine_layout_reads_as_max():
    rng = np.random.default_rng(2)
    fusion = NoveltyFusion.fit(normal_raw(rng), COMPONENTS, "sum")
    again = NoveltyFusion.from_json(fusion.to_json())
    sample = normal_raw(rng, 10)
    np.testing.assert_array_equal(again.apply(sample), fusion.apply(sample))
    old = NoveltyFusion.from_json(fusion.to_json()["components"])
    assert old.combine == "max"


def test_unknown_combine_is_refused():
    with pytest.raises(ValueError, match="combine"):
        NoveltyFusion([], "mean")


def test_images_sum_four_components_and_a_typicality_test_vectors_keep_the_maximum():
    components, combine, statistics = default_fusion("image")
    assert combine == "sum" and [c.score for c in components] == ["recon_error_lowpass", "latent_knn",
                                                                  "transform_nll", "posterior_log_var"]
    assert {"neg_elbo_bpd", "code_length", "wavelet_level_1", "intensity_mean"} <= {s.score for s in statistics}
    assert default_fusion("vector")[1:] == ("max", ())


def typical_raw(rng, n=4000):
    complexity = rng.normal(3.0, 0.5, n)
    return {"neg_elbo_bpd": 0.8 * complexity + rng.normal(0, 0.05, n), "code_length": complexity,
            "recon_error": np.exp(rng.normal(-4, 0.3, n))}


STATISTICS = (Statistic("neg_elbo_bpd"), Statistic("code_length"), Statistic("recon_error", log_offset=1e-12))


def test_typicality_flags_a_likelihood_too_high_for_the_input_complexity_and_stays_calibrated():
    rng = np.random.default_rng(4)
    fusion = NoveltyFusion.fit(typical_raw(rng), (), "sum", STATISTICS)
    fresh = fusion.standardized(typical_raw(rng, 20000))["typicality"].numpy()
    assert abs(np.quantile(fresh, 0.99) - 2.3263) < 0.25 and 0.45 < np.mean(fresh == 0) < 0.55  # rectified at the median
    # Each statistic alone is within the normal range; together they are not: a simple input that is too likely
    # for how complex it is (the likelihood detectors' known failure), and the opposite.
    odd = {"neg_elbo_bpd": np.array([1.6, 3.2]), "code_length": np.array([3.0, 3.0]),
           "recon_error": np.exp(np.array([-4.0, -4.0]))}
    assert (fusion.apply(odd) > 5).all()
    again = NoveltyFusion.from_json(fusion.to_json(), fusion.to_arrays())
    np.testing.assert_allclose(again.apply(odd), fusion.apply(odd), rtol=1e-6)
    assert again.needs == {"neg_elbo_bpd", "code_length", "recon_error"}
    with pytest.raises(BundleError, match="typicality reference .* `detector calibrate`"):
        NoveltyFusion.from_json(fusion.to_json(), {})


def two_kinds_raw(rng, n=3000):
    """Normal data of two kinds (flat and busy frames, say): their statistics form two clusters."""
    busy = rng.random(n) < 0.5
    complexity = np.where(busy, 4.0, 1.0) + rng.normal(0, 0.1, n)
    return {"neg_elbo_bpd": complexity + rng.normal(0, 0.05, n), "code_length": complexity,
            "recon_error": np.exp(rng.normal(-4, 0.3, n))}


def test_typicality_flags_a_sample_between_two_kinds_of_normal_data():
    rng = np.random.default_rng(6)
    fusion = NoveltyFusion.fit(two_kinds_raw(rng), (), "sum", STATISTICS)
    fresh = fusion.standardized(two_kinds_raw(rng, 20000))["typicality"].numpy()
    assert abs(np.quantile(fresh, 0.99) - 2.3263) < 0.3
    # Halfway between the kinds is where one Gaussian fitted to both is densest, and where no normal sample is.
    between = {"neg_elbo_bpd": np.array([2.5]), "code_length": np.array([2.5]), "recon_error": np.exp(np.array([-4.0]))}
    assert fusion.standardized(between)["typicality"][0] > np.quantile(fresh, 0.995)
    t = fusion.typicality
    gaussian = TypicalityTest(t.statistics, t.center, t.precision, 0.0, 1.0)  # as bundles before the k-NN test
    assert float(gaussian.distance(between)[0]) < float(np.median(gaussian.distance(two_kinds_raw(rng))))
    legacy = fusion.to_json()
    legacy["typicality"] = {k: v for k, v in legacy["typicality"].items() if k not in ("k", "reference")}
    assert NoveltyFusion.from_json(legacy).typicality.reference is None  # such a bundle needs no arrays


def test_typicality_keeps_at_most_its_reference_size_and_any_split_scores_the_same():
    rng = np.random.default_rng(7)
    fusion = NoveltyFusion.fit(two_kinds_raw(rng, 6000), (), "sum", STATISTICS)
    assert fusion.to_arrays()[REFERENCE_ARRAY].shape == (TYPICALITY_REFERENCE, len(STATISTICS))
    sample = two_kinds_raw(rng, 300)
    whole = fusion.apply(sample)
    parts = [fusion.apply({k: v[i:i + 7] for k, v in sample.items()}) for i in range(0, 300, 7)]
    # float32 distances through a matrix product: the kernel BLAS picks depends on the batch's shape and the CPU
    # (up to 2e-5 apart on some 2-core machines), as in test_apply_runs_on_tensors_and_matches_numpy
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-4)


def test_apply_runs_on_tensors_and_matches_numpy():
    rng = np.random.default_rng(5)
    raw = typical_raw(rng)
    fusion = NoveltyFusion.fit(raw, (Component("recon_error", two_sided=False, log=True, rectify=True),), "sum",
                               STATISTICS)
    sample = typical_raw(rng, 50)
    as_tensors = fusion.apply({k: torch.as_tensor(v, dtype=torch.float32) for k, v in sample.items()})
    assert isinstance(as_tensors, torch.Tensor) and as_tensors.dtype == torch.float32
    np.testing.assert_allclose(as_tensors.numpy(), fusion.apply(sample), rtol=1e-4, atol=1e-4)


def test_the_typicality_term_counts_its_weight_times_and_bundles_before_the_weight_keep_one():
    rng = np.random.default_rng(8)
    raw = typical_raw(rng)
    fusion = NoveltyFusion.fit(raw, (Component("recon_error", two_sided=False, log=True, rectify=True),), "sum",
                               STATISTICS)
    assert fusion.typicality.weight == TYPICALITY_WEIGHT
    sample = {"neg_elbo_bpd": np.array([1.6, 2.4]), "code_length": np.array([3.0, 3.0]),
              "recon_error": np.exp(np.array([-3.0, -4.0]))}
    z = fusion.standardized(sample)
    np.testing.assert_allclose(fusion.apply(sample), z["recon_error"] + TYPICALITY_WEIGHT * z["typicality"], rtol=1e-6)
    again = NoveltyFusion.from_json(fusion.to_json(), fusion.to_arrays())
    np.testing.assert_array_equal(again.apply(sample), fusion.apply(sample))
    before = fusion.to_json()
    del before["typicality"]["weight"]
    old = NoveltyFusion.from_json(before, fusion.to_arrays())
    assert old.typicality.weight == 1.0
    np.testing.assert_allclose(old.apply(sample), z["recon_error"] + z["typicality"], rtol=1e-6)


def test_a_rectified_component_never_counts_as_evidence_of_normality():
    rng = np.random.default_rng(3)
    rectified = (COMPONENTS[0], Component("b", two_sided=False, log=True, rectify=True))
    fusion = NoveltyFusion.fit(normal_raw(rng), rectified, "sum")
    # far above normal in "a", far below normal in "b" (a blank frame: simple and reconstructed perfectly)
    sample = {"a": np.array([30.0]), "b": np.array([np.exp(-5.0)])}
    z = fusion.standardized(sample)
    assert z["b"][0] == 0.0 and fusion.apply(sample)[0] == pytest.approx(z["a"][0])
    assert NoveltyFusion.from_json(fusion.to_json()).fits[1].component.rectify


def test_a_transform_head_no_better_than_chance_is_left_out_and_missing_scores_are_skipped():
    from detector.scoring.novelty import usable_components

    components, _, _ = default_fusion("image")
    chance = 4 * np.log(4)
    rng = np.random.default_rng(0)
    raw = {"latent_knn": rng.uniform(0.1, 1, 50), "recon_error_lowpass": rng.uniform(0.1, 1, 50)}
    learnt = {**raw, "transform_nll": rng.uniform(0.01, 0.5, 50)}  # turns told apart: kept
    kept, notes = usable_components(components, learnt, chance)
    assert [c.score for c in kept] == ["recon_error_lowpass", "latent_knn", "transform_nll"] and notes == []
    blind = {**raw, "transform_nll": rng.uniform(0.95, 1.0, 50) * chance}  # images without an orientation
    kept, notes = usable_components(components, blind, chance)
    assert [c.score for c in kept] == ["recon_error_lowpass", "latent_knn"]
    assert len(notes) == 1 and "no better than chance" in notes[0]
