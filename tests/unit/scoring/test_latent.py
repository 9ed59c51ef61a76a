import numpy as np
import torch

from detector.scoring import latent
from detector.scoring.latent import KNN_K, LatentReference, knn_reference


def reference(rng, n=200, z=4):
    mus = rng.normal(size=(n, z)) * np.array([5.0, 1.0, 0.2, 1.0]) + 3.0
    mean = mus.mean(0)
    precision = np.linalg.inv(np.cov(mus.T))
    density = {"latent_mean": mean, "latent_precision": precision, "knn_reference": knn_reference(mus, mean, precision)}
    return mus, density


def test_knn_is_the_mean_distance_to_the_k_nearest_whitened_training_latents():
    rng = np.random.default_rng(0)
    mus, density = reference(rng)
    ref = LatentReference.from_arrays(density, 4, torch.device("cpu"))
    assert ref.k == KNN_K
    query = rng.normal(size=(7, 4)) * 3 + 3
    got = ref.distances(torch.as_tensor(query, dtype=torch.float32))["latent_knn"].numpy()

    whiten = np.linalg.cholesky(density["latent_precision"])
    white = lambda m: (m - density["latent_mean"]) @ whiten  # noqa: E731
    d = np.linalg.norm(white(query)[:, None] - white(mus)[None], axis=2)
    np.testing.assert_allclose(got, np.sort(d, axis=1)[:, :KNN_K].mean(1), rtol=1e-4, atol=1e-4)


def test_whitening_makes_the_euclidean_norm_the_mahalanobis_distance():
    rng = np.random.default_rng(1)
    _, density = reference(rng)
    ref = LatentReference.from_arrays(density, 4, torch.device("cpu"))
    mu = torch.as_tensor(rng.normal(size=(5, 4)), dtype=torch.float32)
    white = (mu - ref.mean) @ ref.whiten
    torch.testing.assert_close(white.pow(2).sum(1), ref.distances(mu)["latent_distance"], rtol=1e-4, atol=1e-4)


def test_chunked_distances_equal_one_pass(monkeypatch):
    rng = np.random.default_rng(2)
    _, density = reference(rng)
    ref = LatentReference.from_arrays(density, 4, torch.device("cpu"))
    mu = torch.as_tensor(rng.normal(size=(33, 4)), dtype=torch.float32)
    whole = ref.distances(mu)["latent_knn"]
    monkeypatch.setattr(latent, "_MAX_DISTANCES", 3 * 200)  # three query rows per chunk
    torch.testing.assert_close(ref.distances(mu)["latent_knn"], whole)


def test_reference_is_capped_by_a_seeded_subsample(monkeypatch):
    monkeypatch.setattr(latent, "KNN_MAX_REFERENCE", 50)
    rng = np.random.default_rng(3)
    mus, density = reference(rng)
    a = knn_reference(mus, density["latent_mean"], density["latent_precision"])
    b = knn_reference(mus, density["latent_mean"], density["latent_precision"])
    assert a.shape == (50, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_bundles_without_a_reference_score_no_knn():
    ref = LatentReference.from_arrays({}, 3, torch.device("cpu"))
    out = ref.distances(torch.zeros(2, 3))
    assert "latent_knn" not in out and out["latent_distance"].tolist() == [0.0, 0.0]


def test_knn_of_a_legacy_bundle_averages_its_own_k():
    rng = np.random.default_rng(2)
    mus, density = reference(rng)
    query = torch.as_tensor(rng.normal(size=(5, 4)), dtype=torch.float32)
    one, five = (LatentReference.from_arrays(density, 4, torch.device("cpu"), k).distances(query)["latent_knn"]
                 for k in (1, 5))
    assert (one < five).all()
