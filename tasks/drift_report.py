"""A drift check as a person reads it: one table row per feature (drifted first, the same
columns whatever the test), and a picture of reference against current for the drifted
features, logged to an MLflow run of its own so the UI shows it beside the numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DRIFT_EXPERIMENT = "oceanml-drift"
MAX_PANELS = 9


def table_row(name: str, f: dict[str, Any]) -> dict[str, Any]:
    """feature | test | statistic | p-value | reference | current | drifted."""
    kind = f["kind"]
    if kind == "numeric":
        test, stat, p = "PSI / KS", f"psi {f['psi']:.3f}, ks {f['ks_stat']:.3f}", f["ks_pvalue"]
        ref, cur = f"mean {f['ref_mean']:.4g}", f"mean {f['cur_mean']:.4g}"
    elif kind == "categorical":
        test, stat, p = "chi-square", f"moved {f['tvd']:.0%}", f["pvalue"]
        ref, cur = f"mostly {f['ref_top']}", f"mostly {f['cur_top']}"
    elif kind == "share":
        test, stat, p = "two-proportion", f"{f['cur_share'] - f['ref_share']:+.0%}", f["pvalue"]
        ref, cur = f"{f['ref_share']:.0%}", f"{f['cur_share']:.0%}"
    elif kind == "performance":  # the champion's estimated accuracy, no test statistic
        e = f["estimated"][f["metric"]]
        test = {"atc": "thresholded-confidence estimate"}.get(f.get("method"),
                                                               "confidence-based estimate")
        p = None
        stat = f"{f['metric']} {e['estimate']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"
        ref = f"test {f['test']:.3f}" if f.get("test") is not None else "no test figure"
        cur = f"drop allowed {f['drop']:.2f}"
    else:  # embedding
        test, stat, p = "MMD, permutations", f"mmd² {f['mmd2']:.4g}", f["pvalue"]
        ref, cur = f"{f['n_ref']} images", f"{f['n_cur']} images"
    return {"feature": name, "drifted": "DRIFT" if f["drifted"] else "", "test": test,
            "statistic": stat, "p-value": "-" if p is None else f"{p:.2g}", "reference": ref,
            "current": cur}


def drift_table(features: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The table artifact: drifted features first, then the rest, each in its given order."""
    ordered = sorted(features.items(), key=lambda item: not item[1]["drifted"])
    return [table_row(name, f) for name, f in ordered]


def drift_figure(reference: dict[str, Any], window: pd.DataFrame,
                 features: dict[str, dict[str, Any]]) -> Any | None:
    """Reference against current for each drifted reading, image statistic or tag share
    (density histograms, or two bars); None when none of those drifted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, f) for n, f in features.items()
              if f["drifted"] and f["kind"] in ("numeric", "share")][:MAX_PANELS]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, f) in zip(axes.flat, panels, strict=False):
        if f["kind"] == "numeric" and name in reference.get("numeric", {}):
            ref = np.asarray(reference["numeric"][name]["sample"], dtype=float)
            cur = window[name].dropna().to_numpy(dtype=float)
            bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
            ax.hist(ref, bins=bins, density=True, alpha=0.55, label="reference")
            ax.hist(cur, bins=bins, density=True, alpha=0.55, label="current")
            ax.set_title(f"{name}: PSI {f.get('psi', 0):.2f}", fontsize=9)
            ax.legend(fontsize=7)
        else:
            ax.bar(["reference", "current"], [f.get("ref_share", 0), f.get("cur_share", 0)],
                   color=["tab:blue", "tab:orange"])
            ax.set_ylim(0, 1)
            ax.set_title(f"{name}: share of observations", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("drifted features: reference (champion's training data) vs current window")
    fig.tight_layout()
    return fig


def log_drift_run(mlc: MlflowClient, artifact_uri: str | None, model: str, report: Any,
                  figure: Any | None, table: list[dict[str, Any]]) -> str:
    """An MLflow run in ``oceanml-drift`` holding the check: verdict, share and counts as
    params and metrics, the table, and the picture. Its id."""
    from core.registry import ensure_experiment

    experiment = ensure_experiment(mlc, DRIFT_EXPERIMENT, artifact_uri)
    run = mlc.create_run(experiment, run_name=f"drift-{model}",
                         tags={"model": model, "verdict": report.verdict,
                               "reference_dataset_version": report.reference_dataset_version
                               or ""})
    run_id = run.info.run_id
    mlc.log_metric(run_id, "share_drifted", report.share_drifted)
    mlc.log_metric(run_id, "n_current", report.n_current)
    mlc.log_table(run_id, pd.DataFrame(table), "drift/features.json")
    if figure is not None:
        import matplotlib.pyplot as plt

        mlc.log_figure(run_id, figure, "drift/drifted_features.png")
        plt.close(figure)
    mlc.set_terminated(run_id)
    return run_id
