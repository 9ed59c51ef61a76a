"""Evaluate a bundle on a normal and an anomalous set: AUROC, AUPRC, FPR@95TPR, calibrated rates."""

from __future__ import annotations

from detector.scoring.detection_metrics import auprc, auroc, fpr_at_tpr
from detector.scoring.scorer import PRIMARY, ScoreResult


def evaluate_results(normal: ScoreResult, anomalous: ScoreResult) -> dict:
    """The `detector evaluate --json` object (a contract): per calibrated score, five numbers."""
    scores = {}
    for name in normal.novel:
        n, a = normal.scores[name], anomalous.scores[name]
        scores[name] = {
            "auroc": auroc(n, a),
            "auprc": auprc(n, a),
            "fpr_at_95_tpr": fpr_at_tpr(n, a, 0.95),
            "calibrated_fpr": float(normal.novel[name].mean()),
            "detection_rate": float(anomalous.novel[name].mean()),
        }
    return {"primary": PRIMARY, "scores": scores, "n_normal": len(normal), "n_anomalous": len(anomalous)}


def format_table(report: dict) -> str:
    lines = [f"{'score':<16}{'AUROC':>8}{'AUPRC':>8}{'FPR@95TPR':>11}{'cal. FPR':>10}{'detected':>10}"]
    for name, m in report["scores"].items():
        mark = " (primary)" if name == report["primary"] else ""
        lines.append(f"{name:<16}{m['auroc']:>8.4f}{m['auprc']:>8.4f}{m['fpr_at_95_tpr']:>11.4f}"
                     f"{m['calibrated_fpr']:>10.4f}{m['detection_rate']:>10.4f}{mark}")
    lines.append(f"normal: {report['n_normal']} samples, anomalous: {report['n_anomalous']} samples")
    return "\n".join(lines)
