"""The five models of the ocean-monitoring network, as specs.

A spec says what a model predicts and from what; the backbone may be overridden (e.g.
``resnet18`` on a laptop CPU) without changing anything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from core.labels import (
    ALGAE_LEVELS,
    DEBRIS_LEVELS,
    DEBRIS_TYPES,
    POLLUTION_LEVELS,
    WATER_QUALITY_TARGETS,
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backbone: str
    task: Literal["classification", "regression"]
    outputs: tuple[str, ...]
    input_size: int = 224
    label_key: str = ""

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def monitor(self) -> tuple[str, Literal["min", "max"]]:
        """The one metric checkpointing, early stopping and the promotion gate share."""
        return ("val/macro_f1", "max") if self.task == "classification" else ("val/mae", "min")

    def with_overrides(self, **changes: object) -> ModelSpec:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("plastic-detector", "resnet50", "classification", DEBRIS_LEVELS),
        ModelSpec("algae-bloom", "efficientnet_b0", "classification", ALGAE_LEVELS),
        ModelSpec("debris-classifier", "vgg16_bn", "classification", DEBRIS_TYPES),
        ModelSpec("water-quality", "densenet121", "regression", WATER_QUALITY_TARGETS),
        ModelSpec("coastal-pollution", "mobilenet_v3_large", "classification", POLLUTION_LEVELS),
    )
}


def get_spec(name: str, **overrides: object) -> ModelSpec:
    """A zoo spec by name, with the label key defaulting to the model name."""
    if name not in ZOO:
        raise KeyError(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    spec = ZOO[name]
    return spec.with_overrides(label_key=spec.label_key or name, **overrides)


def fleet(params: dict) -> list[str]:
    """The models the nightly and monitor flows run: ``fleet`` in ``params.yaml`` (every model
    of the zoo when it names none), refused by name when one is not in the zoo."""
    names = list(params.get("fleet") or ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ValueError(f"fleet: unknown model(s) {', '.join(unknown)}; the zoo has "
                         f"{', '.join(ZOO)}")
    return names
