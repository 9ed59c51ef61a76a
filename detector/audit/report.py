"""The audit's report.html: self-contained (plots embedded as PNG data URIs), made to be looked at."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from detector.audit.stats import AuditStats
from detector.scoring.overlay import overlay
from detector.scoring.scorer import Scorer


def _subplots(*grid, figsize, **kwargs):
    """pyplot.subplots without pyplot: no global figure registry, no backend chosen for whoever imports this."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, uri: str) -> str:
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>"


def _histograms(stats: AuditStats) -> str:
    names = list(stats.hist_counts)
    fig, axes = _subplots(1, len(names), figsize=(4.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        edges, counts = stats.hist_edges[name], stats.hist_counts[name]
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4878a8")
        t = stats.thresholds.get(name)
        if t is not None:
            ax.axvline(t, color="#c0392b", lw=2, label=f"threshold {t:.3g}")
            ax.legend(fontsize=8)
        ax.set_title(name)
        ax.set_yscale("log")
        ax.set_xlabel("score (outliers in the edge bins)")
    axes[0][0].set_ylabel("samples")
    return _png(fig)


def _show(ax, img: np.ndarray, title: str | None = None) -> None:
    """One image in model space (C, H, W), values in [0, 1]."""
    ax.imshow(img[0] if img.shape[0] == 1 else np.clip(img.transpose(1, 2, 0), 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


@torch.inference_mode()
def _decoded(scorer: Scorer, z: np.ndarray) -> np.ndarray:
    """Decoder means of latent codes ``z`` (N, Z): (N, C, H, W) in [0, 1]."""
    params = scorer.model.decode(torch.as_tensor(z, dtype=torch.float32, device=scorer.device))
    return scorer.model.reconstruct(params).float().cpu().numpy().reshape(len(z), *scorer.sample_shape)


def _gallery(rows: list[dict], scorer: Scorer, samples, with_maps: bool = False) -> str | None:
    """Samples (by dataset index) over their reconstructions, titled with their novelty score; ``with_maps``: and
    their anomaly maps over them (bundles calibrated with maps)."""
    if scorer.kind != "image" or not rows:
        return None
    raw = np.stack([samples.read(r["index"], r["index"] + 1)[0] for r in rows])
    with torch.inference_mode():
        rec = _decoded(scorer, scorer.model.encode(scorer._to_device(raw))[0].cpu().numpy())
    maps = scorer.anomaly_maps(raw) if with_maps and scorer.map_scale is not None else None
    n_rows = 2 if maps is None else 3
    fig, axes = _subplots(n_rows, len(rows), figsize=(1.1 * len(rows), 1.3 * n_rows), squeeze=False)
    scale = 255.0 if raw.dtype == np.uint8 else 1.0
    for j, r in enumerate(rows):
        image = raw[j].reshape(scorer.sample_shape)
        _show(axes[0][j], image.astype(np.float32) / scale, f"#{r['index']}\n{r['novelty']:.1f}")
        _show(axes[1][j], rec[j])
        if maps is not None:
            axes[2][j].imshow(overlay(image, maps[j]))
            axes[2][j].set_xticks([])
            axes[2][j].set_yticks([])
    axes[0][0].set_ylabel("input", fontsize=8)
    axes[1][0].set_ylabel("recon.", fontsize=8)
    if maps is not None:
        axes[2][0].set_ylabel("anomaly map", fontsize=8)
    return _png(fig)


TRAVERSAL_AXES = 6
TRAVERSAL_STEPS = np.linspace(-3, 3, 7)


def _traversals(scorer: Scorer) -> str | None:
    """Decoded codes along the principal axes of the training latents (their Gaussian in the bundle), -3..+3 sd."""
    density = scorer.bundle.density
    if scorer.kind != "image" or "latent_precision" not in density:
        return None
    mean = np.asarray(density["latent_mean"], dtype=np.float64)
    variances, axes_ = np.linalg.eigh(np.linalg.inv(np.asarray(density["latent_precision"], dtype=np.float64)))
    order = np.argsort(variances)[::-1][:TRAVERSAL_AXES]
    z = np.stack([mean + t * np.sqrt(variances[k]) * axes_[:, k] for k in order for t in TRAVERSAL_STEPS])
    images = _decoded(scorer, z).reshape(len(order), len(TRAVERSAL_STEPS), *scorer.sample_shape)
    fig, axes = _subplots(len(order), len(TRAVERSAL_STEPS), figsize=(1.0 * len(TRAVERSAL_STEPS), 1.0 * len(order)),
                             squeeze=False)
    for i, k in enumerate(order):
        for j, t in enumerate(TRAVERSAL_STEPS):
            _show(axes[i][j], images[i, j], f"{t:+.0f} sd" if i == 0 else None)
        axes[i][0].set_ylabel(f"axis {i + 1}\n({variances[k] / variances.sum():.0%})", fontsize=7)
    return _png(fig)


def _prior_samples(scorer: Scorer, n: int = 16) -> str | None:
    if scorer.kind != "image":
        return None
    z = np.random.default_rng(0).normal(size=(n, scorer.model_cfg.latent_dim))
    images = _decoded(scorer, z)
    fig, axes = _subplots(2, n // 2, figsize=(1.0 * n / 2, 2.1), squeeze=False)
    for j, img in enumerate(images):
        _show(axes[j // (n // 2)][j % (n // 2)], img)
    return _png(fig)


def _p_values(stats: AuditStats) -> str | None:
    values, counts = stats.p_values.grid()
    if not len(values):
        return None
    fig, ax = _subplots(figsize=(5.5, 3))
    ax.hist(values, bins=20, range=(0, 1), weights=counts / counts.sum() * 20, color="#4878a8")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="no drift (uniform)")
    ax.set_xlabel("p-value of the primary score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _png(fig)


def _drift_paragraph(summary: dict) -> str:
    drift = summary.get("drift") or {}
    if not drift:
        return ""
    ks, flagged = drift["ks"], drift["binomial"]
    verdict = ("these data do not look like the calibration data" if min(ks["p_value"], flagged["p_value"]) < 0.001
               else "no evidence that these data differ from the calibration data")
    return (f"<p>Against the {summary['n_calibration']:,} calibration scores: Kolmogorov-Smirnov D = "
            f"{ks['statistic']:.3f} (p = {ks['p_value']:.2g}); {flagged['statistic']:.2%} flagged against "
            f"{summary['target_fpr']:.2%} expected (beta-binomial p = {flagged['p_value']:.2g}): "
            f"<b>{verdict}</b>. The same tests as the server's <code>detector_drift_p_value</code>.</p>")


def _per_label(summary: dict) -> str | None:
    per = summary["per_label"]
    if not per:
        return None
    labels = list(per)
    fig, axes = _subplots(1, 2, figsize=(9, 3))
    axes[0].bar(labels, [per[k]["novelty_rate"] for k in labels], color="#c0392b")
    axes[0].axhline(summary["target_fpr"], color="k", ls="--", lw=1, label="target FPR")
    axes[0].set_title("novelty rate per label")
    axes[0].legend(fontsize=8)
    axes[1].bar(labels, [per[k]["mean_resample_weight"] for k in labels], color="#27ae60")
    axes[1].axhline(1.0, color="k", ls="--", lw=1)
    axes[1].set_title("mean resample weight per label")
    return _png(fig)


def _latent(stats: AuditStats) -> str | None:
    mu, w = stats.subsample("latent_mean"), stats.subsample("resample_weight")
    if mu is None or w is None or len(mu) < 3:
        return None
    centred = mu - mu.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # PCA to 2-D
    xy = centred @ vt[:2].T
    fig, ax = _subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.log10(w), s=4, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log10 resample weight (rarer = larger)")
    ax.set_title("latent means, PCA" + (f" (1 in {stats._stride} samples)" if stats._stride > 1 else ""))
    return _png(fig)


def _weights(stats: AuditStats) -> str | None:
    w = stats.subsample("resample_weight")
    if w is None:
        return None
    fig, ax = _subplots(figsize=(5, 3))
    ax.hist(np.log10(w), bins=60, color="#27ae60")
    ax.set_xlabel("log10 resample weight")
    ax.set_ylabel("samples (subsample)")
    ax.set_title("distribution of resample weights")
    return _png(fig)


def _slices_table(summary: dict) -> str:
    per = summary["per_label"]
    if not per:
        return "<p>No labels in this data: see the latent projection for rare regions.</p>"
    rows = sorted(per.items(), key=lambda kv: -kv[1]["mean_resample_weight"])
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['n']}</td><td>{v['mean_resample_weight']:.2f}</td>"
                   f"<td>{v['resample_rate']:.1%}</td><td>{v['novelty_rate']:.2%}</td></tr>" for k, v in rows)
    return ("<table><tr><th>label</th><th>samples</th><th>mean resample weight</th><th>flagged for resampling</th>"
            f"<th>novelty rate</th></tr>{body}</table>")


def write_report(path: Path, summary: dict, stats: AuditStats, scorer: Scorer, samples) -> None:
    figures = [("Score distributions, thresholds marked", _histograms(stats)),
               ("Most novel samples, their reconstructions and anomaly maps",
                _gallery(summary["most_novel"], scorer, samples, with_maps=True)),
               ("Least novel samples and their reconstructions", _gallery(summary.get("least_novel", []), scorer,
                                                                          samples)),
               ("Per label", _per_label(summary)),
               ("Latent space, coloured by rarity", _latent(stats)),
               ("Resample weights", _weights(stats))]
    learned = [("Traversals along the principal axes of the training latents (share of variance)",
                _traversals(scorer)),
               ("Samples from the prior", _prior_samples(scorer))]
    rates = ", ".join(f"{k} {v:.2%}" for k, v in summary["novelty_rate"].items())
    parts = [_figure(title, uri) for title, uri in figures if uri]
    drift = _p_values(stats)
    learned_parts = [_figure(title, uri) for title, uri in learned if uri]
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Audit of {html.escape(summary['data'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{max-width:100%}}.big{{font-size:1.4em}}</style></head>
<body>
<h1>Audit of {html.escape(summary['data'])}</h1>
<p class="big"><b>{summary['n_samples']:,}</b> samples; <b>{summary['novel']['novelty']:,}</b> novel
({summary['novelty_rate']['novelty']:.2%}, target false-positive rate {summary['target_fpr']:.2%});
<b>{summary['resample_flagged']:,}</b> flagged for resampling ({summary['resample_rate']:.2%}).</p>
<p>Model {html.escape(summary['model_version'])}; data fingerprint {html.escape(summary['data_fingerprint'])}.
Novelty rate per score: {html.escape(rates)}.</p>
{''.join(parts)}
<h2>Drift against the calibration data</h2>
{_drift_paragraph(summary)}
{f"<img alt='p-values of the primary score' src='{drift}'>" if drift else ""}
{"<h2>What the model learned</h2><p>What normal means to this model: images decoded from its latent space.</p>"
 if learned_parts else ""}
{''.join(learned_parts)}
<h2>Under-represented slices</h2>
{_slices_table(summary)}
<script>window.addEventListener("load",function(){{var i=document.images,n=0;for(var k=0;k<i.length;k++)
if(i[k].complete&&i[k].naturalWidth>0)n++;document.body.setAttribute("data-images-loaded",n+"/"+i.length);}});</script>
</body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc)
    tmp.replace(path)
