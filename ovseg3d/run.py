"""The run folder: what a training run leaves behind and how later stages load it back.

Layout::

    RUN/run.json              ovseg3d version, run format, scene path and a fingerprint of its inputs
    RUN/config.toml           the resolved TrainConfig
    RUN/checkpoints/ckpt_CCCCCC_step_SSSSSSS.pt
                              C: a counter that only grows over the run's life (resumes included), so the
                              newest checkpoint is the one with the largest C whatever its step S; runs made
                              before it have step_SSSSSSS.pt (still read, older than any ckpt_*)
    RUN/log.jsonl             one JSON line per logged step
    RUN/renders/              PNGs of held-out views
    RUN/eval.json             metrics (ovseg3d eval)
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ovseg3d import __version__
from ovseg3d.atomic import remove_dead_files, replacing, write_json
from ovseg3d.config import CPU_EVAL_CHUNK, ConfigError, TrainConfig, apply_overrides, read_toml
from ovseg3d.errors import UsageError

RUN_FORMAT = 1
GEOMETRY_CHECKPOINT = "geometry.pt"  # the radiance field as it was before distillation


class RunError(UsageError):
    """A run folder that cannot be used; one line naming the folder or file."""


def _one_line(text: object, limit: int = 160) -> str:
    return " ".join(str(text).split())[:limit]


# ------------------------------------------------------------------------------------------ run.json


def write_run_info(run: Path, cfg: TrainConfig) -> None:
    """``RUN/run.json``: the ovseg3d version and run format, and the scene the run is made from with a
    fingerprint of its inputs (:func:`scene_fingerprint`), checked by :func:`check_scene`."""
    scene = Path(cfg.scene).resolve()
    info = {
        "ovseg3d_version": __version__,
        "run_format": RUN_FORMAT,
        "scene": str(scene),
        "scene_fingerprint": scene_fingerprint(scene, cfg.colmap_model),
    }
    write_json(run / "run.json", info)


def check_run(run: Path) -> dict[str, Any]:
    """Validate a run folder made by a compatible ovseg3d; returns run.json."""
    info_path = run / "run.json"
    if not info_path.exists():
        raise RunError(
            f"{run} is not an ovseg3d run folder (no run.json); train one with: ovseg3d train SCENE --output {run}"
        )
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{info_path}: not valid JSON ({_one_line(exc)}); retrain the run") from None
    if not isinstance(info, dict):
        raise RunError(
            f"{info_path}: a JSON {type(info).__name__}, not an object as ovseg3d writes it; retrain the run"
        )
    if info.get("run_format") != RUN_FORMAT:
        raise RunError(
            f"{run} was written by ovseg3d {info.get('ovseg3d_version', '?')} (run format "
            f"{info.get('run_format')}); this ovseg3d {__version__} reads run format {RUN_FORMAT}: retrain it"
        )
    return info


# ------------------------------------------------------------------------------- what a run is made from


def _scene_inputs(
    root: Path, colmap_model: Path | str | None
) -> tuple[str, list[Path], list[Path], list[Path], list[Path]]:
    """A scene folder's format, its image files, their mask files (:mod:`ovseg3d.data.masks`; none for most
    scenes), the files its poses come from (hashed whole) and other files of its model (large: only their sizes
    and times), without decoding anything."""
    from ovseg3d.data import colmap, nerfstudio
    from ovseg3d.data.llff import POSES_FILE, is_image_file, list_images
    from ovseg3d.data.loader import detect_format

    if colmap_model is not None:
        fmt, model = "colmap", Path(colmap_model)
    else:
        fmt = detect_format(root)
        model = colmap.find_model(root) if fmt == "colmap" else None
    if fmt == "llff":
        folder = root / "images"
        images = list_images(folder) if folder.is_dir() else []
        return fmt, images, _mask_inputs(root, images), [root / POSES_FILE], []
    if fmt == "transforms":
        quiet = nerfstudio.log.disabled
        nerfstudio.log.disabled = True  # its warnings (missing images) are the scene loader's to give
        try:
            views = nerfstudio.read_transforms(root / nerfstudio.TRANSFORMS_FILE)
        finally:
            nerfstudio.log.disabled = quiet
        images = list(views.image_paths)
        return fmt, images, _mask_inputs(root, images, views.masks), [root / nerfstudio.TRANSFORMS_FILE], []
    assert model is not None
    folder = root / "images"
    images = sorted(p for p in folder.rglob("*") if is_image_file(p)) if folder.is_dir() else []
    files = sorted(p for p in model.iterdir() if p.is_file())
    poses = [p for p in files if p.stem in ("cameras", "images")]
    return fmt, images, _mask_inputs(root, images), poses, [p for p in files if p not in poses]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _mask_inputs(root: Path, images: list[Path], listed: list[Path | None] | None = None) -> list[Path]:
    """The mask files of ``images``; ``listed``: the masks a transforms.json names (see ``mask_files``)."""
    from ovseg3d.data import masks

    try:
        return list(masks.mask_files(root, images, listed).values())
    except UsageError:  # a listed mask that is gone: the scene loader says so
        return [m for m in listed or [] if m is not None and m.is_file()]


def scene_fingerprint(
    root: Path | str, colmap_model: Path | str | None = None, contents: bool = True, legacy: bool = False
) -> dict[str, Any]:
    """What a scene folder's training inputs are: its format, number of images, a sha1 over the bytes of its pose
    files (poses_bounds.npy, transforms.json, or the COLMAP model's cameras and images files), a cheap sha1 over
    the relative paths, sizes and modification times (whole seconds) of the images, their masks and the model's
    other files, and (``contents``) a sha1 over those files' bytes: a copied or cloned scene has new times and
    the same bytes. ``legacy``: the fingerprint as runs saved it before the bytes were kept (the other files'
    sizes and times in the pose sha1, no bytes)."""
    root = Path(root)
    fmt, images, masks, poses, others = _scene_inputs(root, colmap_model)
    files = [*images, *masks] if legacy else [*images, *masks, *others]
    listing = hashlib.sha1()
    for p in files:
        st = p.stat()
        listing.update(f"{_relative(p, root)}\t{st.st_size}\t{int(st.st_mtime)}\n".encode())
    pose_hash = hashlib.sha1()
    for p in poses:
        pose_hash.update(f"{_relative(p, root)}\n".encode())
        pose_hash.update(p.read_bytes())
    if legacy:
        for p in others:
            st = p.stat()
            pose_hash.update(f"{_relative(p, root)}\t{st.st_size}\t{int(st.st_mtime)}\n".encode())
    out = {
        "format": fmt,
        "images": len(images),
        "image_files_sha1": listing.hexdigest(),
        "pose_files": [_relative(p, root) for p in poses],
        "pose_files_sha1": pose_hash.hexdigest(),
    }
    if contents and not legacy:
        out["contents_sha1"] = _contents_sha1(files, root)
    return out


def _contents_sha1(files: list[Path], root: Path) -> str:
    digest = hashlib.sha1()
    for p in files:
        digest.update(f"{_relative(p, root)}\n".encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def scene_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How a scene's fingerprint ``now`` differs from the one saved at training, in words. Where the cheap listing
    differs and both have the files' bytes, the bytes tell a copy (new times) from a change."""
    if saved.get("format") != now["format"]:
        return [f"its format is now {now['format']}, it was {saved.get('format')}"]
    changes = []
    if saved.get("images") != now["images"]:
        changes.append(f"{now['images']} images now, {saved.get('images')} at training")
    if saved.get("pose_files_sha1") != now["pose_files_sha1"]:
        others = " or the model's other files" if "contents_sha1" not in saved and now["format"] == "colmap" else ""
        changes.append(f"{' / '.join(now['pose_files']) or 'the pose files'}{others} changed")
    listed = saved.get("image_files_sha1") != now["image_files_sha1"] and saved.get("images") == now["images"]
    by_bytes = "contents_sha1" in saved and "contents_sha1" in now
    if listed and by_bytes:
        listed = saved["contents_sha1"] != now["contents_sha1"]
    if listed:
        how = "names, sizes or bytes" if by_bytes else "names, sizes or modification times"
        changes.append(f"image, mask or model files changed ({how})")
    return changes


_FORCE_SCENE: contextvars.ContextVar[bool] = contextvars.ContextVar("ovseg3d_force_scene", default=False)
_warned_scene: set[str] = set()


@contextmanager
def allow_changed_scene(force: bool = True) -> Iterator[None]:
    """Within the block, :func:`check_scene` accepts runs whose scene changed (a command's ``--force``), with
    one warning line."""
    token = _FORCE_SCENE.set(bool(force) or _FORCE_SCENE.get())
    try:
        yield
    finally:
        _FORCE_SCENE.reset(token)


def check_scene(run: Path, force: bool = False, resume: bool = False) -> None:
    """Refuse (one line) a run whose scene's inputs no longer match the fingerprint saved in its run.json: the
    images or poses were changed or regenerated since training. ``force`` (or :func:`allow_changed_scene`):
    accept it with one warning line on stderr. Runs without a fingerprint (made by an older ovseg3d) pass.
    ``resume``: the message is for ``train --resume``, which has no ``--force``."""
    info = check_run(run)
    saved = info.get("scene_fingerprint")
    if not isinstance(saved, dict):
        return
    cfg = load_run_config(run)
    legacy = "contents_sha1" not in saved
    now = scene_fingerprint(cfg.scene, cfg.colmap_model, contents=False, legacy=legacy)
    if not legacy and now["image_files_sha1"] != saved.get("image_files_sha1"):
        now = scene_fingerprint(cfg.scene, cfg.colmap_model)  # new times: the bytes tell a copy from a change
    changes = scene_changes(saved, now)
    if not changes:
        return
    what = f"the scene {cfg.scene} changed since {run} was trained ({'; '.join(changes)})"
    if resume:
        raise RunError(f"--resume: {what}: train a new run on it with another --output")
    if force or _FORCE_SCENE.get():
        key = str(Path(run).resolve())
        if key not in _warned_scene:
            _warned_scene.add(key)
            print(f"warning: {what}; using the run anyway (--force)", file=sys.stderr)
        return
    raise RunError(
        f"{what}: pass --force to use the run anyway, or retrain: ovseg3d train {cfg.scene} --output NEW_RUN"
    )


# --------------------------------------------------------------------------------------- config.toml


# fields whose default changed what a run computes, with the value that reproduces runs saved before them
_BEFORE_FIELD = {
    "sem_weight_power": 1.0,
    "coverage_weights": False,
    "contraction": "none",
    "downscale": 1,
    "learned_background": False,
    "sampler": "grid",
}


def load_run_config(run: Path) -> TrainConfig:
    try:
        values = {**_BEFORE_FIELD, **read_toml(run / "config.toml")}
        if values.get("eval_chunk") == CPU_EVAL_CHUNK and "eval_chunk" not in values.get("chosen", ()):
            values["eval_chunk"] = 0  # saved as the default before it followed the device: it follows it now
        return apply_overrides(TrainConfig(), values, run / "config.toml")
    except ConfigError as exc:
        raise RunError(str(exc)) from None


# --------------------------------------------------------------------------------------- checkpoints

_NEW_NAME = re.compile(r"ckpt_(\d+)_step_(\d+)\.pt")
_OLD_NAME = re.compile(r"step_(\d+)\.pt")


def _order(path: Path) -> tuple[int, int] | None:
    """Sort key of a checkpoint file name (newest last), ``None`` for other files: ``ckpt_C_step_S.pt`` by its
    counter C, after every ``step_S.pt`` of runs made before the counter (those by their step)."""
    m = _NEW_NAME.fullmatch(path.name)
    if m:
        return (1, int(m.group(1)))
    m = _OLD_NAME.fullmatch(path.name)
    return (0, int(m.group(1))) if m else None


def list_checkpoints(run: Path) -> list[Path]:
    """The run's checkpoint files, oldest first (in the order they were written, not by step)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(key, p) for p in folder.iterdir() if (key := _order(p)) is not None and p.is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name."""
    m = _NEW_NAME.fullmatch(path.name) or _OLD_NAME.fullmatch(path.name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint file name")
    return int(m.groups()[-1])


def new_checkpoint_path(run: Path, step: int) -> Path:
    """The name of the next checkpoint of the run, at ``step``: its counter is one more than any before."""
    counters = [int(m.group(1)) for p in list_checkpoints(run) if (m := _NEW_NAME.fullmatch(p.name))]
    return run / "checkpoints" / f"ckpt_{max(counters, default=0) + 1:06d}_step_{step:07d}.pt"


def checkpoint_path(run: Path, step: int) -> Path:
    """The newest checkpoint of the run at ``step`` when there is one, else the name the next one gets
    (:func:`new_checkpoint_path`)."""
    at_step = [p for p in list_checkpoints(run) if checkpoint_step(p) == step]
    return at_step[-1] if at_step else new_checkpoint_path(run, step)


_readable_cache: dict[tuple[str, int, int], str | None] = {}
_warned_damaged: set[tuple[str, str]] = set()


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint file cannot be read (truncated, not a torch file, ...), or ``None`` when it can: the
    zip archive that ``torch.save`` writes must be whole and pass its CRC checks (a legacy non-zip file is
    loaded to tell). Remembered per file size and modification time."""
    try:
        st = path.stat()
    except OSError as exc:
        return _one_line(exc)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _readable_cache:
        _readable_cache[key] = _problem(path, st.st_size)
    return _readable_cache[key]


def _problem(path: Path, size: int) -> str | None:
    if size == 0:
        return "an empty file"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    return "not a torch checkpoint (no data.pkl)"
                bad = archive.testzip()
            return None if bad is None else f"corrupt data in {bad}"
        torch.load(path, map_location="cpu", weights_only=False)  # the pre-zip torch format
        return None
    except Exception as exc:  # a truncated or foreign file
        return f"{type(exc).__name__}: {_one_line(exc, 100)}" if str(exc) else type(exc).__name__


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint written (by its counter, not its step) that is readable; ``None`` when the run has
    none. A damaged newest one (a truncated copy, a full disk) is passed over with one warning line on stderr
    naming it and the one used instead; when none is readable, a :class:`RunError`."""
    ckpts = list_checkpoints(run)
    damaged: list[tuple[Path, str]] = []
    for path in reversed(ckpts):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                names = ", ".join(f"{p} ({why})" for p, why in damaged)
                if (names, str(path)) not in _warned_damaged:
                    _warned_damaged.add((names, str(path)))
                    print(f"warning: damaged checkpoint {names}: using the previous one, {path}", file=sys.stderr)
            return path
        damaged.append((path, problem))
    if damaged:
        path, why = damaged[0]
        more = f" nor any of the {len(damaged) - 1} before it" if len(damaged) > 1 else ""
        raise RunError(
            f"{run}: no readable checkpoint: {path} is damaged ({why}){more}; "
            f"train again with: ovseg3d train SCENE --output NEW_RUN"
        )
    return None


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with the run format and version) to ``path``, whole or not at all."""
    with replacing(path, "wb") as f:
        torch.save({"run_format": RUN_FORMAT, "ovseg3d_version": __version__, **state}, f)


def save_checkpoint(path: Path, state: dict[str, Any], keep: int = 2) -> None:
    """Atomically write ``state`` to ``path`` (a name from :func:`new_checkpoint_path`), then keep the newest
    ``keep`` checkpoints of its folder (in the order written; ``path`` itself is always kept), and remove what
    a killed run left half written there."""
    write_checkpoint(path, state)
    remove_dead_files(path.parent)
    older = [p for p in list_checkpoints(path.parent.parent) if p != path]
    intact = [p for p in older if not _known_damaged(p)]
    kept = set(intact[max(0, len(intact) - (keep - 1)) :]) if keep > 1 else set()
    for old in older:
        if old not in kept:
            old.unlink(missing_ok=True)


def _known_damaged(path: Path) -> bool:
    """Whether :func:`checkpoint_problem` found ``path`` damaged (without reading it again)."""
    try:
        st = path.stat()
    except OSError:
        return True
    return _readable_cache.get((str(path), st.st_size, st.st_mtime_ns)) is not None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise RunError(f"cannot read checkpoint {path}: {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(state, dict) or state.get("run_format") != RUN_FORMAT:
        found = state.get("run_format") if isinstance(state, dict) else None
        raise RunError(f"{path} has run format {found}, this ovseg3d reads {RUN_FORMAT}: retrain it")
    return state


# ------------------------------------------------------------------------------------------- log.jsonl


def trim_log(run: Path, step: int, distill_step: int | None) -> None:
    """Drop the lines of ``RUN/log.jsonl`` written after a checkpoint that a resumed run continues from: the
    geometry lines past ``step`` and the distillation lines past ``distill_step`` (all of them when ``None``:
    the distillation starts over). Lines that are not JSON objects are dropped too."""
    path = run / "log.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("stage") == "distill":
            if distill_step is not None and int(record.get("distill_step", 0)) <= distill_step:
                kept.append(line)
        elif int(record.get("step", 0)) <= step:
            kept.append(line)
    with replacing(path, "w") as f:
        f.write("".join(line + "\n" for line in kept))
