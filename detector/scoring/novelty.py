"""The primary novelty score: a fusion of raw scores that each catch a different kind of novelty.

A likelihood (negative ELBO) alone ranks simpler inputs (digits, blank frames) as *more*
normal than the training data (Nalisnick et al. 2019). For images the likelihood term is
therefore the complexity-corrected one (Serrà et al. 2020, see complexity.py), which
catches both simpler and more complex inputs; reconstruction error adds the in-domain
signal (a garment of another class is reconstructed badly). Each component is
standardised against held-out normal data with a robust, per-side scale, and the novelty
score is the largest standardised deviation: a sample is as novel as its most surprising
component. Alternatives tried (sums, more components, latent distances) are described in
the README's "Scores" section.
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


IMAGE_COMPONENTS = (
    Component("complexity_corrected", two_sided=False, log=False),
    Component("recon_error", two_sided=False, log=True),
)
VECTOR_COMPONENTS = (
    Component("neg_elbo", two_sided=False, log=False),
    Component("recon_error", two_sided=False, log=True),
)


def default_components(kind: str) -> tuple[Component, ...]:
    return IMAGE_COMPONENTS if kind == "image" else VECTOR_COMPONENTS


@dataclass(frozen=True)
class ComponentFit:
    component: Component
    median: float
    lower_scale: float
    upper_scale: float


class NoveltyFusion:
    """Fitted standardisation of each component; ``apply`` maps raw scores to the novelty score."""

    def __init__(self, fits: list[ComponentFit]):
        self.fits = fits

    @staticmethod
    def _transform(values: np.ndarray, component: Component) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return np.log(np.maximum(values, 1e-12)) if component.log else values

    @classmethod
    def fit(cls, raw: dict[str, np.ndarray], components: tuple[Component, ...]) -> "NoveltyFusion":
        fits = []
        for comp in components:
            v = cls._transform(raw[comp.score], comp)
            lo, med, hi = np.quantile(v, [0.01, 0.5, 0.99])
            floor = 1e-6 * max(abs(med), 1.0)
            fits.append(ComponentFit(comp, float(med), max((med - lo) / _Z99, floor), max((hi - med) / _Z99, floor)))
        return cls(fits)

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
        return out

    def apply(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        z = self.standardized(raw)
        return np.max(np.stack(list(z.values())), axis=0).astype(np.float32)

    def to_json(self) -> list[dict]:
        return [{**asdict(f.component), "median": f.median, "lower_scale": f.lower_scale, "upper_scale": f.upper_scale}
                for f in self.fits]

    @classmethod
    def from_json(cls, items: list[dict]) -> "NoveltyFusion":
        return cls([ComponentFit(Component(i["score"], bool(i["two_sided"]), bool(i["log"])),
                                 float(i["median"]), float(i["lower_scale"]), float(i["upper_scale"])) for i in items])
