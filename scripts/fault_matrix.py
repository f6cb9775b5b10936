#!/usr/bin/env python
"""Fault matrix (issue 26): bad inputs and bad options against the ``ovseg3d`` command, case by case.

Makes one tiny scene (``ovseg3d synth``: 64x48, 8 views, LLFF; and the same as transforms.json) and one tiny
run (``ovseg3d train --preset tiny --teacher synthetic``, then ``ovseg3d export``), copies what each case needs
into a folder of its own, damages the copy (a missing or truncated image, a bad pose file, a truncated
checkpoint, a changed scene, ...) or passes a bad option, and runs the command as a subprocess
(``python -m ovseg3d.cli``) with a time limit (one training is stopped with Ctrl-C after its first checkpoint).
Prints a table: case, exit status, lines printed (stdout and stderr), temporary files left in the case folder
(names with ``.tmp`` or ``.old-``) and the verdict.

Verdict "ok": a non-zero exit for a bad case (0 for a case meant to succeed); for a bad case one line of output
and no traceback (``--debug`` cases: a traceback is wanted); no temporary file left; and the case's own check
(previous outputs intact, no half-made run folder, the warning printed, ...). "hang": it ran past the limit
(120 s, view cases 20 s). "skipped (root)": read-only folder cases, which root can write anyway. Writes JSON
(default ``bench/fault_matrix.json``).

    python scripts/fault_matrix.py
    python scripts/fault_matrix.py --only eval detect --keep --workdir /tmp/faults
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from ovseg3d.run import checkpoint_step, list_checkpoints

TEMP_MARKERS = (".tmp", ".old-")  # ovseg3d.atomic's .NAME.tmp-PID / .NAME.old-PID
POSES = "poses_bounds.npy"


@dataclass
class Args:
    out: Path = Path("bench/fault_matrix.json")
    """Where to write the results (JSON)."""
    workdir: Path | None = None
    """Folder for the scene, the run and the cases (default: a new temporary folder, removed at the end)."""
    keep: bool = False
    """Keep the work folder."""
    timeout: float = 120.0
    """Seconds a case may run before it counts as a hang (view cases: 20)."""
    jobs: int = 2
    """Cases run at once."""
    only: list[str] = field(default_factory=list)
    """Run only the cases whose name contains one of these."""


@dataclass
class Base:
    """The tiny inputs the cases copy from."""

    scene: Path
    """LLFF scene (poses_bounds.npy)."""
    scene_tf: Path
    """The same kind of scene with a transforms.json."""
    run: Path
    """Trained on ``scene``, with export/."""


@dataclass
class Outcome:
    code: int | None
    """Exit status; None when it ran past its time limit and was killed."""
    lines: list[str]
    """Non-empty lines of stdout, then of stderr (a progress bar's last state only)."""
    seconds: float


Check = Callable[[Base, Path, Outcome], str | None]
Setup = Callable[[Base, Path], list[str]]


@dataclass
class Case:
    name: str
    setup: Setup
    """Fill the case folder (copies, damage); returns the ovseg3d arguments."""
    succeed: bool = False
    """Meant to succeed (exit 0) rather than to fail."""
    check: Check | None = None
    """What else is wrong after the command (lost work, a folder left behind), in words; None when nothing."""
    timeout: float | None = None
    """Seconds (default --timeout)."""
    usage_after: bool = False
    """A bad case that may print the usage after its one error line (an unknown command)."""
    traceback: bool = False
    """A traceback is wanted (--debug)."""
    needs_non_root: bool = False
    """Read-only folder cases: root writes anyway."""
    interrupt: Callable[[Path], bool] | None = None
    """Send Ctrl-C (SIGINT) once this is true of the case folder."""
    last_line: str = ""
    """A bad case whose output may be longer (an interrupted command): its last line must start with this."""


# ------------------------------------------------------------------------------------------- running


def visible_lines(text: str) -> list[str]:
    """Non-empty lines as a terminal leaves them: of a line rewritten with carriage returns (tqdm), its last
    state."""
    return [s for raw in text.split("\n") if (s := raw.rstrip("\r").split("\r")[-1]).strip()]


def run_cli(
    argv: list[str],
    timeout: float,
    env: dict[str, str],
    logs: Path,
    interrupt: Callable[[], bool] | None = None,
    sig: int = signal.SIGINT,
) -> Outcome:
    """``python -m ovseg3d.cli ARGV`` in its own process group, its stdout and stderr in ``logs``.out / .err;
    ``sig`` (Ctrl-C: SIGINT) sent to it once ``interrupt()`` is true; the group killed after ``timeout`` s."""
    start = time.perf_counter()
    out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
    with open(out, "wb") as fout, open(err, "wb") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ovseg3d.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=fout,
            stderr=ferr,
            env=env,
            start_new_session=True,
        )
    code: int | None = None
    interrupted = False
    while time.perf_counter() - start < timeout:
        try:
            code = proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if interrupt is not None and not interrupted and interrupt():
                proc.send_signal(sig)
                interrupted = True
    if code is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    lines = [*visible_lines(out.read_text(errors="replace")), *visible_lines(err.read_text(errors="replace"))]
    return Outcome(code, lines, time.perf_counter() - start)


def child_env(threads: int = 0) -> dict[str, str]:
    """The environment of the commands: no OVSEG3D_DEBUG; ``threads`` > 0: that many OpenMP threads each."""
    env = {k: v for k, v in os.environ.items() if k != "OVSEG3D_DEBUG"}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def make_base(root: Path, logs: Path) -> tuple[Base, list[dict]]:
    """Synthesize the scenes, train and export the run (stdout, stderr in ``logs``); stops the script if any of
    it fails."""
    base = Base(root / "scene", root / "scene_tf", root / "run")
    size = ["--width", "80", "--height", "60", "--n-views", "16", "--n-annotated", "2", "--supersample", "1"]
    # the cpu preset's field on a step budget: the tiny preset's is too faint to export a cloud from
    budget = ["--preset", "cpu", "--no-compile-grid", "--steps", "400", "--max-minutes", "0"]
    budget += ["--distill-steps", "60", "--distill-minutes", "0", "--teacher", "synthetic"]
    steps = [
        ["synth", str(base.scene), *size],
        ["synth", str(base.scene_tf), *size, "--format", "transforms"],
        ["train", str(base.scene), "--output", str(base.run), *budget],
        ["export", str(base.run), "--max-spread", "0"],
    ]
    done = []
    for i, argv in enumerate(steps):
        full = [*argv, "--device", "cpu"] if argv[0] != "synth" else argv
        o = run_cli(full, 600, child_env(), logs / f"setup{i}")
        done.append({"argv": argv, "exit": o.code, "seconds": round(o.seconds, 1)})
        print(f"setup: ovseg3d {' '.join(argv[:1])} ... exit {o.code} in {o.seconds:.1f} s", flush=True)
        if o.code != 0:
            sys.exit(f"setup failed: ovseg3d {' '.join(argv)}:\n" + "\n".join(o.lines[-20:]))
    return base, done


# -------------------------------------------------------------------------------- making broken copies


def copy_scene(src: Path, d: Path, features: bool = False) -> Path:
    """A copy of a scene in the case folder (without its teacher feature cache unless ``features``)."""
    dst = d / src.name
    ignore = None if features else shutil.ignore_patterns("features")
    shutil.copytree(src, dst, symlinks=True, ignore=ignore)
    return dst


def copy_run(b: Base, d: Path, scene: Path | None = None) -> Path:
    """A copy of the run in ``d/run``; with ``scene``, pointed at that copy of its scene."""
    run = d / "run"
    shutil.copytree(b.run, run, symlinks=True)
    if scene is not None:
        for name in ("config.toml", "run.json"):
            path = run / name
            path.write_text(path.read_text().replace(str(b.scene.resolve()), str(scene.resolve())))
    return run


def images(scene: Path) -> list[Path]:
    return sorted(p for p in (scene / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def add_mask(scene: Path, size: tuple[int, int] | None = None, damaged: bool = False) -> None:
    """``masks/<stem>.png`` for the first image: all kept, of ``size`` ``(w, h)`` (default: the image's);
    ``damaged``: cut to half its bytes."""
    from PIL import Image

    image = images(scene)[0]
    with Image.open(image) as im:
        w, h = size or im.size
    (scene / "masks").mkdir(exist_ok=True)
    mask = scene / "masks" / f"{image.stem}.png"
    Image.fromarray(np.full((h, w), 255, np.uint8)).save(mask)
    if damaged:
        truncate(mask)


def edit_poses(scene: Path, edit: Callable[[np.ndarray], None]) -> None:
    """Change ``poses_bounds.npy`` (N x 17: a 3x5 matrix per view, then near, far) in place."""
    path = scene / POSES
    arr = np.load(path)
    edit(arr)
    with open(path, "wb") as f:
        np.save(f, arr)


def zero_rotation(arr: np.ndarray) -> None:
    m = arr[0, :15].reshape(3, 5).copy()
    m[:, :3] = 0.0
    arr[0, :15] = m.ravel()


def zero_bounds(arr: np.ndarray) -> None:
    arr[0, 15:17] = 0.0


def latest_checkpoint(run: Path) -> Path:
    """The newest checkpoint written, damaged or not (ovseg3d's own choice skips a damaged one)."""
    return list_checkpoints(run)[-1]


def write_ply(path: Path, xyz: np.ndarray) -> None:
    """A binary PLY of bare x y z points."""
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    )
    path.write_bytes(header.encode() + np.asarray(xyz, "<f4").tobytes())


def set_writable(path: Path, writable: bool) -> None:
    """Folders (and files) under ``path`` read-only (``writable`` False) or writable again."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o755 if writable else 0o555)
        else:
            p.chmod(0o644 if writable else 0o444)


# ------------------------------------------------------------------------------------------- checks


def tree_digest(root: Path) -> dict[str, str]:
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_intact(b: Base, d: Path, o: Outcome) -> str | None:
    """The copied run is byte for byte the trained one."""
    before, after = tree_digest(b.run), tree_digest(d / "run")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return f"run changed: {', '.join(changed[:3])}" if changed else None


def no_run_left(b: Base, d: Path, o: Outcome) -> str | None:
    """A failed fresh training leaves no run folder."""
    return "a run folder was left behind" if (d / "run").exists() else None


def eval_written(d: Path) -> str | None:
    path = d / "run" / "eval.json"
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return "no valid run/eval.json"
    return None


def warned(o: Outcome, start: str) -> str | None:
    return None if any(line.startswith(start) for line in o.lines) else f"no '{start}' line"


def changed_scene_forced(b: Base, d: Path, o: Outcome) -> str | None:
    return warned(o, "warning: the scene") or eval_written(d)


def checkpoint_fallback(b: Base, d: Path, o: Outcome) -> str | None:
    return warned(o, "warning: damaged checkpoint") or eval_written(d)


def one_export(b: Base, d: Path, o: Outcome) -> str | None:
    """A second export replaces the first: one export folder, whole."""
    run = d / "run"
    folders = sorted(p.name for p in run.iterdir() if "export" in p.name)
    if folders != ["export"]:
        return f"export folders: {folders}"
    missing = [n for n in ("points.ply", "points.npz", "points.json") if not (run / "export" / n).is_file()]
    return f"export lacks {', '.join(missing)}" if missing else None


def detections_replaced(b: Base, d: Path, o: Outcome) -> str | None:
    try:
        info = json.loads((d / "old.json").read_text())
    except (OSError, ValueError):
        return "--output file is not valid JSON afterwards"
    return None if isinstance(info, dict) and "boxes" in info else "--output file holds no detections"


# -------------------------------------------------------------------------------------------- cases


def train_on(scene: Path, d: Path, *extra: str) -> list[str]:
    return ["train", str(scene), "--output", str(d / "run"), "--preset", "tiny", "--teacher", "synthetic", *extra]


def broken_scene(damage: Callable[[Path], None], transforms: bool = False) -> Setup:
    """Train on a copy of the scene after ``damage``."""

    def setup(b: Base, d: Path) -> list[str]:
        scene = copy_scene(b.scene_tf if transforms else b.scene, d)
        damage(scene)
        return train_on(scene, d, "--device", "cpu")

    return setup


def bad_train_option(*flags: str) -> Setup:
    def setup(b: Base, d: Path) -> list[str]:
        return train_on(b.scene, d, "--device", "cpu", *flags)

    return setup


def on_run(command: str, *flags: str, damage: Callable[[Path], None] | None = None) -> Setup:
    """``command`` on a copy of the run, after ``damage`` to it."""

    def setup(b: Base, d: Path) -> list[str]:
        run = copy_run(b, d)
        if damage is not None:
            damage(run)
        return [command, str(run), *flags]

    return setup


def changed_scene(*flags: str) -> Setup:
    """eval on a run whose scene copy had an image rewritten (its modification time moved) since training."""

    def setup(b: Base, d: Path) -> list[str]:
        scene = copy_scene(b.scene, d, features=True)
        run = copy_run(b, d, scene)
        image = images(scene)[1]
        st = image.stat()
        os.utime(image, (st.st_atime, st.st_mtime + 3600))
        return ["eval", str(run), "--device", "cpu", *flags]

    return setup


def train_over_run(*flags: str) -> Setup:
    def setup(b: Base, d: Path) -> list[str]:
        copy_run(b, d)
        return ["train", str(b.scene), "--output", str(d / "run"), "--device", "cpu", *flags]

    return setup


def not_a_run(b: Base, d: Path) -> list[str]:
    (d / "notrun").mkdir()
    (d / "notrun" / "notes.txt").write_text("not a run\n")
    return ["eval", str(d / "notrun"), "--device", "cpu"]


def run_json_list(run: Path) -> None:
    (run / "run.json").write_text("[]\n")


def cloud_file(xyz: np.ndarray) -> Setup:
    def setup(b: Base, d: Path) -> list[str]:
        write_ply(d / "cloud.ply", xyz)
        return ["detect", str(d / "cloud.ply"), "--device", "cpu"]

    return setup


def truncated_npz(b: Base, d: Path) -> list[str]:
    shutil.copy2(b.run / "export" / "points.npz", d / "points.npz")
    truncate(d / "points.npz")
    return ["detect", str(d / "points.npz"), "--device", "cpu"]


def detect_over_file(b: Base, d: Path) -> list[str]:
    shutil.copy2(b.run / "export" / "points.npz", d / "points.npz")
    (d / "old.json").write_text("old\n")
    return ["detect", str(d / "points.npz"), "--output", str(d / "old.json"), "--device", "cpu"]


def read_only_run(command: str, *flags: str) -> Setup:
    def setup(b: Base, d: Path) -> list[str]:
        run = copy_run(b, d)
        set_writable(run, False)
        return [command, str(run), "--device", "cpu", *flags]

    return setup


def train_long(b: Base, d: Path) -> list[str]:
    """A fresh training long enough to be stopped after its first checkpoints."""
    run = str(d / "run")
    flags = ["--preset", "tiny", "--teacher", "none", "--steps", "100000", "--checkpoint-every", "5"]
    return ["train", str(b.scene), "--output", run, *flags, "--device", "cpu"]


def has_checkpoint(d: Path) -> bool:
    return any((d / "run" / "checkpoints").glob("ckpt_*_step_*.pt"))


def checkpoint_kept(b: Base, d: Path, o: Outcome) -> str | None:
    """After Ctrl-C the run keeps a whole checkpoint to --resume from."""
    ckpts = sorted((d / "run" / "checkpoints").glob("ckpt_*_step_*.pt"))
    if not ckpts or not (d / "run" / "run.json").is_file():
        return "no run / checkpoint kept"
    try:
        with zipfile.ZipFile(ckpts[-1]) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"latest checkpoint damaged ({exc})"
    return f"latest checkpoint damaged ({bad})" if bad else None


def extend_finished(b: Base, d: Path) -> list[str]:
    """``train --resume --steps`` past the end of a finished run (geometry and distillation done)."""
    run = copy_run(b, d)
    steps = str(checkpoint_step(latest_checkpoint(run)) + 40)
    return ["train", str(b.scene), "--output", str(run), "--resume", "--steps", steps, "--device", "cpu"]


def extended(b: Base, d: Path, o: Outcome) -> str | None:
    """The newest checkpoint holds the new steps (it is not deleted for sorting before the old ones)."""
    old = checkpoint_step(latest_checkpoint(b.run))
    new = checkpoint_step(latest_checkpoint(d / "run"))
    return None if new > old else f"newest checkpoint at step {new}, not past {old}"


def killed_then_resumed(b: Base, d: Path) -> list[str]:
    """A training killed (SIGKILL: no handler runs) after its first checkpoints, then ``train --resume``."""
    flags = ["--preset", "tiny", "--teacher", "none", "--steps", "100000", "--checkpoint-every", "5"]
    argv = ["train", str(b.scene), "--output", str(d / "run"), *flags, "--device", "cpu"]
    (d / "kill").mkdir()
    run_cli(argv, 60, child_env(1), d / "kill" / "train", lambda: has_checkpoint(d), sig=signal.SIGKILL)
    return ["train", str(b.scene), "--output", str(d / "run"), "--resume", "--steps", "60", "--device", "cpu"]


def resumed(b: Base, d: Path, o: Outcome) -> str | None:
    steps = max((checkpoint_step(c) for c in list_checkpoints(d / "run")), default=0)
    return None if steps >= 60 else f"newest checkpoint at step {steps}, not 60"


def synth_after_interrupt(b: Base, d: Path) -> list[str]:
    """``synth`` stopped with Ctrl-C half-way, then the same ``synth`` again."""
    argv = ["synth", str(d / "scene"), "--width", "320", "--height", "240", "--n-views", "64"]
    (d / "stop").mkdir()
    started = time.perf_counter()
    run_cli(argv, 60, child_env(1), d / "stop" / "synth", lambda: time.perf_counter() - started > 3.0)
    return ["synth", str(d / "scene"), "--width", "64", "--height", "48", "--n-views", "8"]


def synth_whole(b: Base, d: Path, o: Outcome) -> str | None:
    return None if (d / "scene" / POSES).is_file() else "no scene written"


def render_then_eval(b: Base, d: Path) -> list[str]:
    """``render`` then ``eval`` on the same run: each keeps its own pictures."""
    run = copy_run(b, d)
    (d / "render").mkdir()
    run_cli(["render", str(run), "--device", "cpu"], 120, child_env(1), d / "render" / "render")
    return ["eval", str(run), "--device", "cpu"]


def both_pictures(b: Base, d: Path, o: Outcome) -> str | None:
    renders = d / "run" / "renders"
    seg = [p for p in renders.glob("seg_*.png") if not p.name.startswith("seg_eval_")]
    seg_eval = list(renders.glob("seg_eval_*.png"))
    return None if seg and seg_eval else f"render's seg_NNN.png: {len(seg)}, eval's seg_eval_NNN.png: {len(seg_eval)}"


def truncated_eval_json(run: Path) -> None:
    (run / "eval.json").write_text('{"psnr": 3')


def eval_json_whole(b: Base, d: Path, o: Outcome) -> str | None:
    try:
        metrics = json.loads((d / "run" / "eval.json").read_text())
    except (OSError, ValueError) as exc:
        return f"eval.json unreadable ({exc})"
    if "psnr" not in metrics or metrics["psnr"] == 3:
        return "eval.json lacks the new PSNR"
    return warned(o, "warning:")


def fixed(*argv: str) -> Setup:
    return lambda b, d: list(argv)


def cases() -> list[Case]:
    nan_xyz = np.full((4, 3), np.nan)
    return [
        Case("scene: image missing", broken_scene(lambda s: images(s)[0].unlink()), check=no_run_left),
        Case("scene: image truncated", broken_scene(lambda s: truncate(images(s)[1])), check=no_run_left),
        Case("scene: poses_bounds.npy missing", broken_scene(lambda s: (s / POSES).unlink()), check=no_run_left),
        Case("scene: poses_bounds.npy truncated", broken_scene(lambda s: truncate(s / POSES, 0.3)), check=no_run_left),
        Case(
            "scene: transforms.json not JSON",
            broken_scene(lambda s: (s / "transforms.json").write_text('{"frames": [\n'), transforms=True),
            check=no_run_left,
        ),
        Case("scene: mask of another size", broken_scene(lambda s: add_mask(s, (7, 5))), check=no_run_left),
        Case("scene: mask truncated", broken_scene(lambda s: add_mask(s, damaged=True)), check=no_run_left),
        Case("scene: all-zero rotation", broken_scene(lambda s: edit_poses(s, zero_rotation)), check=no_run_left),
        Case("scene: near = far = 0", broken_scene(lambda s: edit_poses(s, zero_bounds)), check=no_run_left),
        Case("train --rays-per-step 0", bad_train_option("--rays-per-step", "0"), check=no_run_left),
        Case("train --checkpoint-every 0", bad_train_option("--checkpoint-every", "0"), check=no_run_left),
        Case("train --log-every 0", bad_train_option("--log-every", "0"), check=no_run_left),
        Case("train --steps -1", bad_train_option("--steps", "-1"), check=no_run_left),
        Case("train --lr 0", bad_train_option("--lr", "0"), check=no_run_left),
        Case(
            "train --lr 1e6 (diverges)",
            bad_train_option("--lr", "1e6"),
            check=no_run_left,
            last_line="ovseg3d train: error: training diverged by step",
        ),
        Case("train --preset nosuch", bad_train_option("--preset", "nosuch"), check=no_run_left),
        Case("train without SCENE", lambda b, d: ["train", "--output", str(d / "run")], check=no_run_left),
        Case(
            "train, Ctrl-C after a checkpoint",
            train_long,
            check=checkpoint_kept,
            timeout=60,
            interrupt=has_checkpoint,
            last_line="ovseg3d train: interrupted",
        ),
        Case("train, SIGKILL, then --resume", killed_then_resumed, succeed=True, check=resumed),
        Case("train --resume --steps past the end", extend_finished, succeed=True, check=extended),
        Case("train onto a run, no --resume", train_over_run("--preset", "tiny"), check=run_intact),
        Case("train --resume --n-levels 3", train_over_run("--resume", "--n-levels", "3"), check=run_intact),
        Case("eval: scene changed", changed_scene()),
        Case("eval: scene changed, --force", changed_scene("--force"), succeed=True, check=changed_scene_forced),
        Case(
            "eval: latest ckpt truncated",
            on_run("eval", "--device", "cpu", damage=lambda r: truncate(latest_checkpoint(r))),
            succeed=True,
            check=checkpoint_fallback,
        ),
        Case(
            "eval: eval.json truncated",
            on_run("eval", "--device", "cpu", damage=truncated_eval_json),
            succeed=True,
            check=eval_json_whole,
        ),
        Case("render, then eval", render_then_eval, succeed=True, check=both_pictures),
        Case("eval: run.json is a list", on_run("eval", "--device", "cpu", damage=run_json_list)),
        Case("eval: not a run folder", not_a_run),
        Case("eval: no such folder", lambda b, d: ["eval", str(d / "nosuch"), "--device", "cpu"]),
        Case("eval: unknown option", on_run("eval", "--device", "cpu", "--no-such-option")),
        Case("export without RUN", fixed("export")),
        # --max-spread 0 as the base run's own export: on its 400 steps the default filters keep 0 to 3 points
        Case("export twice", on_run("export", "--device", "cpu", "--max-spread", "0"), succeed=True, check=one_export),
        Case("detect: NaN cloud", cloud_file(nan_xyz)),
        Case("detect: empty cloud", cloud_file(np.zeros((0, 3)))),
        Case("detect: truncated points.npz", truncated_npz),
        Case("detect --output existing file", detect_over_file, succeed=True, check=detections_replaced),
        Case("view --port 99999", on_run("view", "--port", "99999", "--device", "cpu"), timeout=20),
        Case("view --port -5", on_run("view", "--port", "-5", "--device", "cpu"), timeout=20),
        Case("synth after an interrupted synth", synth_after_interrupt, succeed=True, check=synth_whole),
        Case("unknown command", fixed("frobnicate"), usage_after=True),
        Case("--debug, bad option", bad_train_option("--rays-per-step", "0", "--debug"), traceback=True),
        Case("eval: read-only run", read_only_run("eval"), needs_non_root=True),
        Case("export: read-only run", read_only_run("export"), needs_non_root=True, check=run_intact),
    ]


# ------------------------------------------------------------------------------------------ verdicts


def temp_files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if any(m in p.name for m in TEMP_MARKERS))


def verdict(case: Case, o: Outcome, left: list[str], extra: str | None) -> str:
    if o.code is None:
        return "hang"
    problems = []
    if case.succeed and o.code != 0:
        problems.append(f"exit {o.code}")
    if not case.succeed and o.code == 0:
        problems.append("exit 0")
    traceback = any(line.startswith("Traceback") for line in o.lines)
    if case.traceback and not traceback:
        problems.append("no traceback")
    if not case.traceback and traceback:
        problems.append("traceback")
    if not case.succeed and not case.traceback:
        if case.last_line:
            if not o.lines or not o.lines[-1].startswith(case.last_line):
                problems.append(f"last line is not '{case.last_line}...'")
        elif case.usage_after:
            errors = sum("error" in line for line in o.lines)
            if errors != 1:
                problems.append(f"{errors} error lines")
        elif len(o.lines) != 1:
            problems.append(f"{len(o.lines)} lines")
    if left:
        problems.append("temporary files left")
    if extra:
        problems.append(extra)
    return "; ".join(problems) or "ok"


def run_case(case: Case, b: Base, d: Path, argv: list[str], timeout: float, env: dict[str, str]) -> dict:
    """Run a prepared case (logs beside its folder, in logs/) and judge it."""
    when = case.interrupt
    o = run_cli(argv, case.timeout or timeout, env, d.parent / "logs" / d.name, (lambda: when(d)) if when else None)
    left = temp_files(d)
    extra = case.check(b, d, o) if case.check is not None and o.code is not None else None
    return {
        "case": case.name,
        "argv": argv,
        "expect": "success" if case.succeed else "failure",
        "exit": o.code,
        "lines": len(o.lines),
        "files_left": left,
        "verdict": verdict(case, o, left, extra),
        "seconds": round(o.seconds, 1),
        "output": [line[:400] for line in o.lines[-15:]],
    }


def skipped(case: Case, why: str) -> dict:
    return {"case": case.name, "argv": [], "exit": None, "lines": 0, "files_left": [], "verdict": why}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':<34} {'exit':>4} {'lines':>5} {'left':>4}  verdict")
    for r in rows:
        code = "-" if r["exit"] is None else str(r["exit"])
        print(f"{r['case']:<34} {code:>4} {r['lines']:>5} {len(r['files_left']):>4}  {r['verdict']}")
    bad = [r for r in rows if r["verdict"] not in ("ok", "skipped (root)")]
    for r in bad:
        print(f"\n{r['case']}: {r['verdict']}: ovseg3d {' '.join(r['argv'])}")
        for line in r["output"][-6:]:
            print(f"    {line[:300]}")
        for name in r["files_left"]:
            print(f"    left: {name}")


def main(args: Args) -> None:
    start = time.perf_counter()
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # started in the background (`nohup ... &`): the shell ignores SIGINT there, the commands would inherit
        # that, and Ctrl-C cases would never see their Ctrl-C. A handled SIGINT is reset to the default on exec.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ovseg3d-faults-"))
    root = root.absolute()
    if args.workdir is not None and root.exists() and any(root.iterdir()):
        sys.exit(f"--workdir {root}: give a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in cases() if not args.only or any(s in c.name for s in args.only)]
    try:
        (root / "logs").mkdir(exist_ok=True)
        base, setup = make_base(root / "base", root / "logs")
        env = child_env(max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
        planned: list[tuple[Case, Path, list[str]]] = []
        rows: dict[str, dict] = {}
        for i, case in enumerate(chosen):
            if case.needs_non_root and os.geteuid() == 0:
                rows[case.name] = skipped(case, "skipped (root)")
                continue
            d = root / f"case{i:02d}"
            d.mkdir()
            planned.append((case, d, case.setup(base, d)))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_case, c, base, d, argv, args.timeout, env) for c, d, argv in planned]
            for f in futures:
                row = f.result()
                rows[row["case"]] = row
                print(f"  {row['case']:<34} {row['verdict']} ({row['seconds']} s)", flush=True)
        ordered = [rows[c.name] for c in chosen]
        print_table(ordered)
        total = time.perf_counter() - start
        n_ok = sum(r["verdict"] == "ok" for r in ordered)
        print(f"\n{n_ok} of {len(ordered)} ok; {total:.0f} s in all")
        base_left = temp_files(root / "base")
        if base_left:
            print(f"temporary files in the shared scene / run: {', '.join(base_left)}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"seconds": round(total, 1), "jobs": args.jobs, "setup": setup, "base_left": base_left}
        args.out.write_text(json.dumps({**result, "cases": ordered}, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        if root.exists():
            set_writable(root, True)
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
