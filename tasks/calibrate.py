"""Calibration, the last step of a training: a classifier's temperature and the threshold of
its label-free accuracy estimate, fitted on the splits it was not trained on and stored with
the version (the train task calls it between the fit and the registration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.zoo import ModelSpec


def calibrate(mlc: Any, run_id: str, net: Any, spec: ModelSpec, dataset_dir: Path
              ) -> dict[str, float]:
    """Fit a classifier's temperature on the validation split and set it on ``net`` before
    it is stored, so the version answers calibrated probabilities; the temperature, the ECE
    before and after and a reliability diagram go to the run. Then the accuracy estimate's
    threshold (``calibration/atc_threshold``) on the validation and test splits together:
    neither was trained on, and the threshold moves no answer, so the test metrics stay
    unbiased, while twice the examples halve its noise. Nothing for a regressor."""
    if spec.task != "classification":
        return {}
    import matplotlib.pyplot as plt
    import torch

    from models.calibration import (
        calibration_summary,
        fit_temperature,
        raw_outputs,
        reliability_figure,
    )
    from models.confidence import atc_threshold

    logits, labels = raw_outputs(net, dataset_dir, "val", spec)
    temperature = fit_temperature(logits, labels)
    net.temperature.fill_(temperature)
    summary = calibration_summary(logits, labels.numpy(), temperature)
    figures = {"calibration/temperature": temperature,
               "calibration/val_ece_before": summary["ece_before"],
               "calibration/val_ece_after": summary["ece_after"],
               "calibration/val_nll_before": summary["nll_before"],
               "calibration/val_nll_after": summary["nll_after"]}
    test_logits, test_labels = raw_outputs(net, dataset_dir, "test", spec)
    held_out = torch.softmax(torch.cat([logits, test_logits]).float() / temperature, dim=1)
    threshold = atc_threshold(held_out.numpy(), torch.cat([labels, test_labels]).numpy())
    if threshold is not None:
        figures["calibration/atc_threshold"] = threshold
    for name, value in figures.items():
        mlc.log_metric(run_id, name, value)
    fig = reliability_figure(summary, f"{spec.name}: validation split ({summary['n']})")
    mlc.log_figure(run_id, fig, "calibration/reliability_val.png")
    plt.close(fig)
    return figures
