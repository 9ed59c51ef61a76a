"""The audit's report.html: self-contained (plots embedded as PNG data URIs), made to be looked at."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detector.audit.stats import AuditStats  # noqa: E402
from detector.scoring.scorer import Scorer  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histograms(stats: AuditStats) -> str:
    names = list(stats.hist_counts)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.0), squeeze=False)
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


@torch.inference_mode()
def _most_novel(summary: dict, scorer: Scorer, samples) -> str | None:
    if scorer.kind != "image" or not summary["most_novel"]:
        return None
    rows = summary["most_novel"]
    raw = np.stack([samples.read(r["index"], r["index"] + 1)[0] for r in rows])
    x = scorer._to_device(raw)
    rec = scorer.model.reconstruct(scorer.model.decode(scorer.model.encode(x)[0])).cpu().numpy()
    fig, axes = plt.subplots(2, len(rows), figsize=(1.1 * len(rows), 2.6), squeeze=False)
    for j, r in enumerate(rows):
        for i, img in enumerate((raw[j].astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 1.0), rec[j])):
            img = img.reshape(scorer.sample_shape)
            ax = axes[i][j]
            ax.imshow(img[0] if img.shape[0] == 1 else np.clip(img.transpose(1, 2, 0), 0, 1), cmap="gray",
                      vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][j].set_title(f"#{r['index']}\n{r['novelty']:.1f}", fontsize=7)
    axes[0][0].set_ylabel("input", fontsize=8)
    axes[1][0].set_ylabel("recon.", fontsize=8)
    return _png(fig)


def _per_label(summary: dict) -> str | None:
    per = summary["per_label"]
    if not per:
        return None
    labels = list(per)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
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
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.log10(w), s=4, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log10 resample weight (rarer = larger)")
    ax.set_title("latent means, PCA" + (f" (1 in {stats._stride} samples)" if stats._stride > 1 else ""))
    return _png(fig)


def _weights(stats: AuditStats) -> str | None:
    w = stats.subsample("resample_weight")
    if w is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
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
               ("Most novel samples and their reconstructions", _most_novel(summary, scorer, samples)),
               ("Per label", _per_label(summary)),
               ("Latent space, coloured by rarity", _latent(stats)),
               ("Resample weights", _weights(stats))]
    rates = ", ".join(f"{k} {v:.2%}" for k, v in summary["novelty_rate"].items())
    parts = [f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>"
             for title, uri in figures if uri]
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
<h2>Under-represented slices</h2>
{_slices_table(summary)}
<script>window.addEventListener("load",function(){{var i=document.images,n=0;for(var k=0;k<i.length;k++)
if(i[k].complete&&i[k].naturalWidth>0)n++;document.body.setAttribute("data-images-loaded",n+"/"+i.length);}});</script>
</body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc)
    tmp.replace(path)
