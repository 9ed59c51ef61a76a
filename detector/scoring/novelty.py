"""The primary novelty score: a fusion of raw scores that each catch a different kind of novelty.

A likelihood (negative ELBO) alone ranks simpler inputs (digits, blank frames) as *more*
normal than the training data (Nalisnick et al. 2019). For images the likelihood term is
therefore the complexity-corrected one (Serrà et al. 2020, see complexity.py), which
catches both simpler and more complex inputs; reconstruction error and the distance to the
nearest training latents add the in-domain signal (a garment of another class is
reconstructed badly and encodes away from the training garments). Each component is
standardised against held-out normal data with a robust, per-side scale, and the novelty
score combines the standardised deviations: their sum for images (evidence adds up: a
shirt that is a little off in all three is novel), their maximum for vectors (and for
bundles written before the sum). The README's "Scores" section gives the measurements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_Z99 = 2.3263  # standard-normal 99th percentile: per-side scales are set so q01/q99 land at +-1 sigma units of it


@dataclass(frozen=True)
class Component:
    score: str  # a raw score name
    two_sided: bool  # atypically low values are novel too
    log: bool  # standardise log(score): for positive, heavy-tailed scores
    rectify: bool = False  # values below the normal median count as 0, never as evidence of normality


IMAGE_COMPONENTS = (
    Component("complexity_corrected", two_sided=False, log=False),
    # Rectified: simple inputs (blank frames) reconstruct better than normal ones, and in a sum that
    # cancelled their complexity evidence (blank-frame AUROC 0.919 unrectified, 0.999 rectified).
    Component("recon_error", two_sided=False, log=True, rectify=True),
    Component("latent_knn", two_sided=False, log=True),
    # Rectified like recon_error: only evidence above the normal median counts.
    Component("transform_nll", two_sided=False, log=True, rectify=True),
)
VECTOR_COMPONENTS = (
    Component("neg_elbo", two_sided=False, log=False),
    Component("recon_error", two_sided=False, log=True),
)


COMBINES = ("sum", "max")
# A transform head whose median loss on normal data is above this share of chance level (N log N nats for N
# transformations) has learnt nothing to tell them apart by: images without an orientation (textures,
# top-down views). Its score is then noise, and the fusion leaves it out.
UNINFORMATIVE_SHARE = 0.9


def usable_components(components: tuple[Component, ...], raw: dict[str, np.ndarray],
                      transform_chance: float) -> tuple[tuple[Component, ...], list[str]]:
    """The components ``raw`` (scores of held-out normal data) can support, and a note for each one left out:
    scores the bundle does not have (written before they existed), and a transform head no better than chance."""
    kept, notes = [], []
    for c in components:
        if c.score not in raw:
            continue
        if c.score == "transform_nll":
            median = float(np.median(raw[c.score]))
            if median > UNINFORMATIVE_SHARE * transform_chance:
                notes.append(f"transform_nll left out of novelty: the transform head does no better than chance on "
                             f"normal data (median {median:.2f} nats, chance {transform_chance:.2f}); the images may "
                             "have no orientation")
                continue
        kept.append(c)
    return tuple(kept), notes


def default_fusion(kind: str) -> tuple[tuple[Component, ...], str]:
    """Components and how they combine. Vectors keep the maximum of two: the sum and the k-NN
    component were measured on images only."""
    return (IMAGE_COMPONENTS, "sum") if kind == "image" else (VECTOR_COMPONENTS, "max")


@dataclass(frozen=True)
class ComponentFit:
    component: Component
    median: float
    lower_scale: float
    upper_scale: float


class NoveltyFusion:
    """Fitted standardisation of each component; ``apply`` maps raw scores to the novelty score."""

    def __init__(self, fits: list[ComponentFit], combine: str = "max"):
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        self.fits = fits
        self.combine = combine

    @staticmethod
    def _transform(values: np.ndarray, component: Component) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return np.log(np.maximum(values, 1e-12)) if component.log else values

    @classmethod
    def fit(cls, raw: dict[str, np.ndarray], components: tuple[Component, ...], combine: str) -> "NoveltyFusion":
        fits = []
        for comp in components:
            v = cls._transform(raw[comp.score], comp)
            lo, med, hi = np.quantile(v, [0.01, 0.5, 0.99])
            floor = 1e-6 * max(abs(med), 1.0)
            fits.append(ComponentFit(comp, float(med), max((med - lo) / _Z99, floor), max((hi - med) / _Z99, floor)))
        return cls(fits, combine)

    def standardized(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each component's deviation in per-side robust units (>= 0 means unusual)."""
        out = {}
        for f in self.fits:
            v = self._transform(raw[f.component.score], f.component)
            up = (v - f.median) / f.upper_scale
            if f.component.two_sided:
                out[f.component.score] = np.where(v >= f.median, up, (f.median - v) / f.lower_scale)
            else:
                out[f.component.score] = up
            if f.component.rectify:
                out[f.component.score] = np.maximum(out[f.component.score], 0.0)
        return out

    def apply(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        z = np.stack(list(self.standardized(raw).values()))
        return (z.sum(axis=0) if self.combine == "sum" else z.max(axis=0)).astype(np.float32)

    def to_json(self) -> dict:
        return {"combine": self.combine,
                "components": [{**asdict(f.component), "median": f.median, "lower_scale": f.lower_scale,
                                "upper_scale": f.upper_scale} for f in self.fits]}

    @classmethod
    def from_json(cls, data: dict | list[dict]) -> "NoveltyFusion":
        """Reads both layouts: {"combine", "components"}, and the bare component list of bundles
        written before "combine" existed (which took the maximum)."""
        items, combine = (data, "max") if isinstance(data, list) else (data["components"], data["combine"])
        fits = [ComponentFit(Component(i["score"], bool(i["two_sided"]), bool(i["log"]), bool(i.get("rectify", False))),
                             float(i["median"]), float(i["lower_scale"]), float(i["upper_scale"])) for i in items]
        return cls(fits, combine)
