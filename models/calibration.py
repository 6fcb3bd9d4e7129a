"""Temperature scaling: calibrated class probabilities from one scalar fit on validation logits.

A network trained with cross-entropy on little data is over-confident: its softmax says 0.95
where it is right 70% of the time. Dividing the logits by one temperature T, fit to minimise
the negative log-likelihood on the validation split (Guo et al., 2017), fixes most of that
without changing a single argmax, so accuracy and F1 stay as they are. The temperature lives in
the network (``OceanNet.temperature``), so batch scoring and the endpoint answer calibrated
probabilities, and the label-free accuracy estimate reads them.

:func:`expected_calibration_error` is the usual 15-bin ECE over the top-class confidence.

The label-free accuracy estimate's threshold, fit on the calibrated answers, is in
:mod:`models.confidence`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.zoo import ModelSpec

ECE_BINS = 15
MIN_T, MAX_T = 0.05, 20.0


def raw_outputs(net: Any, dataset_dir: Path, split: str, spec: ModelSpec,
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's raw outputs (:meth:`OceanNet.raw`) on one split, in shard order, with the
    targets: what temperature fitting, evaluation and its calibration report read."""
    from models.datamodule import ShardStream

    outputs, targets = [], []
    net.eval()
    with torch.no_grad():
        for images, labels in ShardStream(dataset_dir, split, spec, batch_size):
            outputs.append(net.raw(images))
            targets.append(labels)
    if not outputs:
        return torch.empty(0, spec.num_outputs), torch.empty(0)
    return torch.cat(outputs), torch.cat(targets)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` on ``labels`` (LBFGS
    on log T, so T stays positive); 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().float(), labels.detach().long()
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(np.clip(float(log_t.detach().exp()), MIN_T, MAX_T))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                ) -> dict[str, Any]:
    """Per confidence bin: count, mean confidence and accuracy of the top class; and the
    expected calibration error (the count-weighted mean gap)."""
    probabilities, labels = np.asarray(probabilities, dtype=float), np.asarray(labels)
    if len(labels) == 0:
        return {"ece": 0.0, "count": [0] * bins, "confidence": [0.0] * bins,
                "accuracy": [0.0] * bins}
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.bincount(which, confidence, minlength=bins) / np.maximum(count, 1)
    accuracy = np.bincount(which, correct, minlength=bins) / np.maximum(count, 1)
    ece = float((count * np.abs(accuracy - mean_conf)).sum() / len(labels))
    return {"ece": ece, "count": count.tolist(), "confidence": mean_conf.tolist(),
            "accuracy": accuracy.tolist()}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    return reliability(probabilities, labels, bins)["ece"]


def calibration_summary(logits: torch.Tensor, labels: np.ndarray, temperature: float
                        ) -> dict[str, Any]:
    """ECE and negative log-likelihood of the raw softmax and of the calibrated one on the
    same examples, with both reliability tables (for the diagram). The temperature minimises
    the NLL; on a split of a few dozen examples the binned ECE can still rise."""
    raw = torch.softmax(logits.float(), dim=1).numpy()
    scaled = torch.softmax(logits.float() / temperature, dim=1).numpy()
    before, after = reliability(raw, labels), reliability(scaled, labels)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    nll = [float(F.cross_entropy(logits.float() / t, target)) if len(target) else 0.0
           for t in (1.0, temperature)]
    return {"temperature": float(temperature), "bins": ECE_BINS, "ece_before": before["ece"],
            "ece_after": after["ece"], "nll_before": nll[0], "nll_after": nll[1],
            "n": int(len(labels)), "reliability": {"before": before, "after": after}}


def reliability_figure(summary: dict[str, Any], title: str) -> Any:
    """Accuracy against confidence per bin, before and after scaling, with the diagonal a
    perfectly calibrated model would sit on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = summary["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True)
    for ax, key, label in ((axes[0], "before", "T = 1"),
                           (axes[1], "after", f"T = {summary['temperature']:.2f}")):
        table = summary["reliability"][key]
        shown = np.asarray(table["count"]) > 0
        ax.bar(centres[shown], np.asarray(table["accuracy"])[shown], width=1 / bins,
               edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
        ax.set_xlabel("confidence")
        ax.set_title(f"{label}: ECE {table['ece']:.3f}", fontsize=9)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
