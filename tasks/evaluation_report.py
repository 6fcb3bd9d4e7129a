"""What an evaluation shows a person: the confusion matrix and the regression plots logged to
MLflow, and the markdown report published as the ``evaluation-<model>`` Prefect artifact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.zoo import ModelSpec
from tasks.metrics import MIN_SLICE
from tasks.results import EvaluationResult


def confusion_figure(report: dict[str, Any], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(report["confusion"])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(report["classes"])), report["classes"], rotation=30)
    ax.set_yticks(range(len(report["classes"])), report["classes"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    return fig


def regression_figures(report: dict[str, Any], spec: ModelSpec, version: str) -> dict[str, Any]:
    """Predicted against true (one panel per target, the diagonal drawn) and the residuals'
    histogram per target, from the report's per-example ``examples``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(report["examples"]["y_true"], dtype=float).reshape(-1, spec.num_outputs)
    preds = np.asarray(report["examples"]["y_pred"], dtype=float).reshape(-1, spec.num_outputs)
    k = spec.num_outputs
    scatter, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
    residual, raxes = plt.subplots(1, k, figsize=(3.2 * k, 2.8), squeeze=False)
    for i, target in enumerate(spec.outputs):
        ax = axes[0][i]
        ax.scatter(truth[:, i], preds[:, i], s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        raxes[0][i].hist(preds[:, i] - truth[:, i], bins=20)
        raxes[0][i].set_title(f"{target}: predicted - true", fontsize=9)
    scatter.suptitle(f"{spec.name} v{version} (test)")
    for fig in (scatter, residual):
        fig.tight_layout()
    return {"predicted_vs_true": scatter, "residuals": residual}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cells(values: Sequence[Any]) -> str:
    """``challenger / champion / trivial...`` for a table cell; ``-`` for what a report lacks."""
    return " / ".join(_fmt(v) if v is not None else "-" for v in values)


def evaluation_markdown(model: str, outcome: EvaluationResult, link: str = "") -> str:
    """The evaluation report, challenger, champion and the trivial predictors side by side:
    overall (with the difference to the champion), per class or per target, every scored
    slice with its size, the slices too small to score, and where the plots are (``link``:
    the challenger's MLflow run)."""
    challenger, champion = outcome.challenger, outcome.champion or {}
    trivial = challenger.get("trivial") or {}
    reports = [challenger, champion, *trivial.values()]
    names = ["challenger", "champion", *trivial]
    champ_v = outcome.champion_version
    lines = [f"# Evaluation of `{model}` v{outcome.model_version}",
             f"Test split of dataset `{outcome.dataset_version}`; champion: "
             + (f"v{champ_v}" if champ_v else "none")
             + (f"; trivial predictors fit on its train split: {', '.join(trivial)}"
                if trivial else "")
             + f". Cells read {' / '.join(names)}.", "",
             "| metric | challenger | champion | difference | " + " | ".join(trivial)
             + (" |" if trivial else "|"), "|---|---|---|---|" + "---|" * len(trivial)]
    for name, value in challenger["overall"].items():
        other = champion.get("overall", {}).get(name)
        diff = value - other if isinstance(value, float) and other is not None else None
        extra = "".join(f" {_fmt(r['overall'].get(name))} |" for r in trivial.values())
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(other) if other is not None else '-'} "
                     f"| {f'{diff:+.3f}' if diff is not None else '-'} |{extra}")
    for section, label, keys in (("per_class", "class", ("precision", "recall", "f1")),
                                 ("per_target", "target", ("mae", "rmse", "r2"))):
        if section not in challenger:
            continue
        extra = " support |" if section == "per_class" else ""
        lines += ["", f"| {label} |{extra} " + " | ".join(keys) + " |",
                  "|---|" + "---|" * (len(keys) + bool(extra))]
        for name, m in challenger[section].items():
            rows = [r.get(section, {}).get(name, {}) for r in reports]
            cells = [_cells([row.get(k) for row in rows]) for k in keys]
            support = f" {m['support']} |" if extra else ""
            lines.append(f"| {name} |{support} " + " | ".join(cells) + " |")
    mine = challenger.get("slices", {})
    regression = any("mae" in m for m in mine.values())
    keys = ("mae", "rmse") if regression else ("accuracy", "macro_f1")
    ordered = sorted(mine.items(), key=lambda kv: -kv[1]["mae"] if regression
                     else kv[1]["macro_f1"])
    if ordered:
        lines += ["", "Slices, weakest first:", "", f"| slice | n | {' | '.join(keys)} |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {m['n']} | " + " | ".join(
                      _cells([r.get("slices", {}).get(name, {}).get(k) for r in reports])
                      for k in keys) + " |"
                  for name, m in ordered]
    cal = challenger.get("calibration")
    if cal:
        lines += ["", f"Calibration on the test split ({cal['n']} examples, {cal['bins']} bins): "
                  f"temperature {cal['temperature']:.3f} (fit on the validation split), "
                  f"ECE {cal['ece_before']:.3f} before scaling, {cal['ece_after']:.3f} after"
                  + (f"; NLL {cal['nll_before']:.3f} -> {cal['nll_after']:.3f}"
                     if "nll_before" in cal else "")]
    small = challenger.get("small_slices") or {}
    if small:
        lines += ["", f"Too few examples to score (under {MIN_SLICE}): "
                  + ", ".join(f"{name} ({n})" for name, n in sorted(small.items()))]
    if link:
        lines += ["", f"Plots and the full report: {link}"]
    return "\n".join(lines)
