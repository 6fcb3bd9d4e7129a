"""``params.yaml`` as the stages read it: the fleet, and a named profile laid over the defaults.

The defaults in ``params.yaml`` are what a GPU worker trains: the zoo's architectures at
224 px. A profile (``profiles.<name>``) is an explicit, named override for machines that
cannot train those, e.g. ``cpu-small`` for the demo and CI on 2 CPU cores. It is chosen per
run (``--profile``, ``OCEANML_PROFILE``), never silently, and the nightly summary names it.

A profile may override, for every model, keys of ``datasets`` and ``train``, and per model
under ``models.<name>.datasets`` / ``models.<name>.train``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
PROFILE_SECTIONS = ("datasets", "train")
DEFAULT_PROFILE = "default"  # params.yaml as written: names "no profile" explicitly


def read_params(project_dir: Path) -> dict[str, Any]:
    """``params.yaml`` of the project, as written."""
    return yaml.safe_load((project_dir / PARAMS_FILE).read_text()) or {}


def apply_profile(params: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """``params`` with profile ``profile`` laid over every model's dataset and train sections."""
    if not profile or profile == DEFAULT_PROFILE:
        return params
    profiles = params.get("profiles") or {}
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise KeyError(f"no profile {profile!r} in params.yaml (profiles: {known})")
    chosen = profiles[profile] or {}
    unknown = sorted(set(chosen) - {*PROFILE_SECTIONS, "models", "description"})
    if unknown:
        raise ValueError(f"profiles.{profile}: unknown key(s) {', '.join(unknown)}")
    out = copy.deepcopy(params)
    for section in PROFILE_SECTIONS:
        for model, values in (out.get(section) or {}).items():
            values.update(chosen.get(section) or {})
            values.update(((chosen.get("models") or {}).get(model) or {}).get(section) or {})
    return out


def run_profile(profile: str | None = None) -> str:
    """The profile a run uses: the one asked for, else ``OCEANML_PROFILE``, else the default.

    Flows resolve it once and hand the name on (to training deployments too), so a worker
    whose environment names another profile still trains what the flow asked for."""
    from core.settings import get_settings

    return profile or get_settings().profile or DEFAULT_PROFILE


def load_params(project_dir: Path, profile: str | None = None) -> dict[str, Any]:
    """``params.yaml`` with ``profile`` applied: what every stage of a run reads."""
    return apply_profile(read_params(project_dir), profile)


def model_section(params: dict[str, Any], section: str, model: str) -> dict[str, Any]:
    """``params[section][model]``, refused by name when missing."""
    values = (params.get(section) or {}).get(model)
    if values is None:
        raise KeyError(f"params.yaml has no {section}.{model} section")
    return dict(values)


def profile_description(params: dict[str, Any], profile: str | None) -> str:
    """How the summary names the profile: its name and description, or the zoo defaults."""
    if not profile or profile == DEFAULT_PROFILE:
        return "default (the zoo's architectures, params.yaml as written)"
    described = ((params.get("profiles") or {}).get(profile) or {}).get("description")
    return f"{profile}" + (f" ({described})" if described else "")
