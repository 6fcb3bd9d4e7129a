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
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from core.params_schema import ParamsFile

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


class ParamsError(ValueError):
    """``params.yaml`` cannot run as written: each bad key or value, with its place."""


def where(loc: tuple[Any, ...]) -> str:
    """A pydantic location as a place in the file: ``datasets.algae-bloom.split``."""
    return ".".join(str(part) for part in loc) or "(top level)"


def refusal(error: ValidationError, file: str, prefix: str = "") -> ParamsError:
    """One line per problem, each naming its key and place, in words a user can act on."""
    lines = []
    for problem in error.errors():
        place = where((*((prefix,) if prefix else ()), *problem["loc"]))
        if problem["type"] == "extra_forbidden":
            lines.append(f"{place}: unknown key")
        elif problem["type"] == "missing":
            lines.append(f"{place}: missing (params.yaml must set it)")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            got = problem.get("input")
            shown = "" if isinstance(got, dict | list | tuple) else f" (got {got!r})"
            lines.append(f"{place}: {message}{shown}")
    return ParamsError(f"{file}: " + "; ".join(lines))


Model = TypeVar("Model", bound=BaseModel)


def validated(cls: type[Model], values: Any, place: str, file: str = "params.yaml") -> Model:
    """``values`` as ``cls``, or a :class:`ParamsError` naming what is wrong and where."""
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        raise refusal(error, file, place) from None


def load_file(project_dir: Path, profile: str | None = None) -> ParamsFile:
    """The whole of ``params.yaml``, checked, with ``profile`` applied: what a run reads.

    The file is checked as written first (a typo in a profile is named in the profile), then
    with the profile laid over it (a profile's key that no section has is named there)."""
    raw = read_params(project_dir)
    file = str(project_dir / PARAMS_FILE)
    validated(ParamsFile, raw, "", file)
    applied = apply_profile(raw, profile)
    try:
        return ParamsFile.model_validate(applied)
    except ValidationError as error:
        raise refusal(error, f"{file} (profile {profile})") from None


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
