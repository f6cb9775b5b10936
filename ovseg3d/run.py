"""The run folder: what a training run leaves behind and how later stages load it back.

Layout::

    RUN/run.json              ovseg3d version, run format, scene path
    RUN/config.toml           the resolved TrainConfig
    RUN/checkpoints/step_NNNNNNN.pt
    RUN/log.jsonl             one JSON line per logged step
    RUN/renders/              PNGs of held-out views
    RUN/eval.json             metrics (ovseg3d eval)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ovseg3d import __version__
from ovseg3d.config import ConfigError, TrainConfig, apply_overrides, read_toml
from ovseg3d.errors import UsageError

RUN_FORMAT = 1
GEOMETRY_CHECKPOINT = "geometry.pt"  # the radiance field as it was before distillation


class RunError(UsageError):
    """A run folder that cannot be used; one line naming the folder or file."""


def write_run_info(run: Path, cfg: TrainConfig) -> None:
    info = {"ovseg3d_version": __version__, "run_format": RUN_FORMAT, "scene": str(Path(cfg.scene).resolve())}
    (run / "run.json").write_text(json.dumps(info, indent=2) + "\n")


def check_run(run: Path) -> dict[str, Any]:
    """Validate a run folder made by a compatible ovseg3d; returns run.json."""
    info_path = run / "run.json"
    if not info_path.exists():
        raise RunError(
            f"{run} is not an ovseg3d run folder (no run.json); train one with: ovseg3d train SCENE --output {run}"
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{info_path}: not valid JSON ({exc})") from None
    if info.get("run_format") != RUN_FORMAT:
        raise RunError(
            f"{run} was written by ovseg3d {info.get('ovseg3d_version', '?')} (run format "
            f"{info.get('run_format')}); this ovseg3d {__version__} reads run format {RUN_FORMAT}: retrain it"
        )
    return info


# fields whose default changed what a run computes, with the value that reproduces runs saved before them
_BEFORE_FIELD = {
    "sem_weight_power": 1.0,
    "coverage_weights": False,
    "contraction": "none",
    "downscale": 1,
    "learned_background": False,
}


def load_run_config(run: Path) -> TrainConfig:
    try:
        values = {**_BEFORE_FIELD, **read_toml(run / "config.toml")}
        return apply_overrides(TrainConfig(), values, run / "config.toml")
    except ConfigError as exc:
        raise RunError(str(exc)) from None


def checkpoint_path(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(path: Path, state: dict[str, Any], keep: int = 2) -> None:
    """Atomically write ``state`` (tmp file + rename), keeping the newest ``keep`` checkpoints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"run_format": RUN_FORMAT, "ovseg3d_version": __version__, **state}, tmp)
    os.replace(tmp, path)
    for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
        old.unlink()


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise RunError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if state.get("run_format") != RUN_FORMAT:
        raise RunError(f"{path} has run format {state.get('run_format')}, this ovseg3d reads {RUN_FORMAT}: retrain it")
    return state
