"""Outputs whole or absent (issue 26): an export is one folder swapped in, single files are written beside and
renamed over, a damaged eval.json never costs a new evaluation, eval and render pictures have their own
names, an export's PLY and NPZ give the same boxes, bad clouds are one line, and a stale teacher cache is
said even by the stages that silence its log."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch

from ovseg3d import atomic
from ovseg3d.cli import main
from ovseg3d.errors import UsageError
from ovseg3d.evaluate import update_eval_json
from ovseg3d.export import EXPORT_FILES, ExportOptions, LabelledCloud, load_export, read_ply, write_export, write_ply
from ovseg3d.images import save_png

STEP = 0.005
CLASSES = ["book", "tissue box", "rubik cube", "bottle", "floor", "wall"]
OBJECTS = [  # (class index, centre of the bottom face, size, yaw): four objects standing on the floor
    (0, [0.3, 0.2], [0.24, 0.17, 0.04], 0.5),
    (1, [-0.3, 0.25], [0.24, 0.12, 0.1], 1.2),
    (2, [0.25, -0.3], [0.06, 0.06, 0.06], 0.3),
    (3, [-0.25, -0.25], [0.08, 0.08, 0.25], 0.0),
]
DEAD_PID = 999_999_999  # no process has it


def _grid(u: float, v: float, rng: np.random.Generator) -> np.ndarray:
    a, b = np.meshgrid(np.arange(-u / 2, u / 2 + 1e-9, STEP), np.arange(-v / 2, v / 2 + 1e-9, STEP))
    return np.stack([a.ravel(), b.ravel()], 1) + rng.normal(0, STEP / 10, (a.size, 2))


def _box(center, size, yaw: float, rng: np.random.Generator) -> np.ndarray:
    """Points on the top and the four sides of an upright box standing at ``center`` (x, y) on z = 0."""
    L, W, H = size
    top = _grid(L, W, rng)
    faces = [np.c_[top, np.full(len(top), H / 2)]]
    for sign in (1, -1):
        g = _grid(W, H, rng)
        faces.append(np.c_[np.full(len(g), sign * L / 2), g])
        g = _grid(L, H, rng)
        faces.append(np.c_[g[:, 0], np.full(len(g), sign * W / 2), g[:, 1]])
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.concatenate(faces) @ rot.T + [center[0], center[1], H / 2]


def weak_room(seed: int = 0) -> LabelledCloud:
    """A floor and four objects labelled by a weak field: each point's own class has probability 0.4, the
    other 0.6 is spread over the other five classes (as a blurry semantic field's softmax is)."""
    rng = np.random.default_rng(seed)
    floor = np.c_[_grid(1.2, 1.2, rng), np.zeros(len(_grid(1.2, 1.2, rng)))]
    parts = [(floor, 4)] + [(_box(c, s, y, rng), k) for k, c, s, y in OBJECTS]
    xyz = np.concatenate([p for p, _ in parts]).astype(np.float32)
    label = np.concatenate([np.full(len(p), k, np.int32) for p, k in parts])
    n, c = len(xyz), len(CLASSES)
    rest = rng.dirichlet(np.full(c - 1, 30.0), n) * 0.6
    probs = np.zeros((n, c))
    for i in range(c):
        mask = label == i
        probs[mask, i] = 0.4
        probs[np.ix_(mask, [j for j in range(c) if j != i])] = rest[mask]
    probs = probs.astype(np.float16)
    assert (probs.argmax(1) == label).all()
    return LabelledCloud(
        xyz=xyz,
        rgb=rng.integers(0, 256, (n, 3), dtype=np.uint8),
        views=np.full(n, 3, np.int32),
        label=label,
        confidence=probs.max(1).astype(np.float32),
        probs=probs,
        relevancy={"red book": rng.random(n).astype(np.float32)},
        feature=rng.normal(size=(n, 8)).astype(np.float16),
        classes=list(CLASSES),
        voxel_size=0.005,
    )


def _export(tmp_path, cloud: LabelledCloud | None = None):
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    write_export(cloud if cloud is not None else weak_room(), run / "export", run, ExportOptions())
    return run, run / "export"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _hidden(folder):
    """Temporary leftovers in ``folder``: hidden ``.NAME.tmp-PID`` / ``.NAME.old-PID`` entries and ``*.tmp``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------ export


def _fail_after_ply(monkeypatch):
    """The PLY written whole, then the disk is full."""
    import ovseg3d.export as export

    real = export.write_ply

    def ply_then_full(path, cloud):
        real(path, cloud)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_ply", ply_then_full)
    return OSError


def _fail_inside_ply(monkeypatch):
    """Ctrl-C with the PLY's bytes written but not yet flushed and renamed into place."""

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    return KeyboardInterrupt


def _fail_in_npz(monkeypatch):
    """Part of the NPZ written, then the disk is full."""

    def partial(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", partial)
    return OSError


def _fail_in_swap(monkeypatch):
    """The new folder complete, but renaming it in fails (after the old one was moved aside)."""
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    return OSError


@pytest.mark.parametrize("fail", [_fail_after_ply, _fail_inside_ply, _fail_in_npz, _fail_in_swap])
def test_a_failed_export_leaves_the_previous_one_whole_and_no_temporary_file(tmp_path, monkeypatch, fail):
    run, out = _export(tmp_path)
    before = _snapshot(out)
    other = weak_room(seed=1).subset(np.arange(500))
    exc = fail(monkeypatch)
    with pytest.raises(exc):
        write_export(other, out, run, ExportOptions())
    monkeypatch.undo()
    assert _snapshot(out) == before  # the three files of the previous export, byte for byte
    assert _hidden(run) == [] and _hidden(out) == []
    assert len(load_export(out)) == len(read_ply(out / "points.ply")) == len(weak_room())


def test_an_export_replaces_its_files_together_and_keeps_other_files(tmp_path):
    run, out = _export(tmp_path)
    (out / "detections.json").write_text("{}\n")
    (out / "points.tmp").write_bytes(b"stray of an old writer")
    paths = write_export(weak_room(seed=1).subset(np.arange(700)), out, run, ExportOptions())
    assert paths == [out / name for name in EXPORT_FILES]
    assert sorted(p.name for p in run.iterdir()) == ["export"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPORT_FILES, "detections.json"])
    assert len(load_export(out)) == len(read_ply(out / "points.ply")) == 700
    assert json.loads((out / "points.json").read_text())["n_points"] == 700
    (out / "keep").mkdir()
    with pytest.raises(UsageError, match="keep"):  # not an export folder: nothing replaced
        write_export(weak_room(), out, run, ExportOptions())
    assert len(load_export(out)) == 700


def test_what_a_killed_export_left_is_tidied_by_the_next(tmp_path):
    run, out = _export(tmp_path)
    old = run / f".export.old-{DEAD_PID}"
    out.rename(old)  # killed between its two renames: the previous export moved aside, none in place
    (run / f".export.tmp-{DEAD_PID}").mkdir()
    (run / f".export.tmp-{DEAD_PID}" / "points.ply").write_bytes(b"ply\npartial")
    atomic.recover_folder(out)
    assert sorted(p.name for p in run.iterdir()) == ["export"] and len(load_export(out)) == len(weak_room())
    (run / f".export.old-{DEAD_PID}").mkdir()  # killed after both renames: the old one not yet deleted
    write_export(weak_room().subset(np.arange(300)), out, run, ExportOptions())
    assert sorted(p.name for p in run.iterdir()) == ["export"] and len(load_export(out)) == 300


def test_a_checkpoint_half_written_by_a_killed_run_is_removed_by_the_next_checkpoint(tmp_path):
    """A SIGKILL during a checkpoint's write leaves ``.ckpt_..._step_N.pt.tmp-PID``; that name is never written
    again (the step is in it), so the next checkpoint of the run removes it. A live process's file stays."""
    from ovseg3d.run import list_checkpoints, new_checkpoint_path, save_checkpoint

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    dead = folder / f".ckpt_000005_step_0000025.pt.tmp-{DEAD_PID}"
    dead.write_bytes(b"PK partial")
    live = folder / f".ckpt_000009_step_0000090.pt.tmp-{os.getpid()}"
    live.write_bytes(b"PK being written")
    path = new_checkpoint_path(tmp_path / "run", 30)
    save_checkpoint(path, {"step": 30})
    assert not dead.exists() and live.exists() and list_checkpoints(tmp_path / "run") == [path]


# ----------------------------------------------------------------------------------- single files


def _fail_replace(monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)


def test_png_and_json_writers_leave_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    png, js = tmp_path / "a.png", tmp_path / "m.json"
    save_png(png, np.zeros((4, 5, 3)))
    atomic.write_json(js, {"a": 1})
    before = png.read_bytes(), js.read_bytes()
    _fail_replace(monkeypatch)
    with pytest.raises(OSError):
        save_png(png, np.ones((4, 5, 3)))
    with pytest.raises(OSError):
        atomic.write_json(js, {"a": 2})
    with pytest.raises(OSError):
        write_ply(tmp_path / "c.ply", weak_room().subset(np.arange(10)))
    monkeypatch.undo()
    assert (png.read_bytes(), js.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.json"]


def test_detect_output_is_whole_or_absent(tmp_path, monkeypatch, capsys):
    _, out = _export(tmp_path)
    dest = tmp_path / "boxes"
    _fail_replace(monkeypatch)
    assert main(["detect", str(out / "points.npz"), "--up", "0", "0", "1", "--output", str(dest)]) != 0
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no boxes, boxes.tmp nor .boxes.tmp-PID
    dest.mkdir()  # an existing folder: detections.json goes in it
    assert main(["detect", str(out / "points.npz"), "--up", "0", "0", "1", "--output", str(dest)]) == 0
    assert [p.name for p in dest.iterdir()] == ["detections.json"]


def test_a_truncated_eval_json_does_not_cost_the_new_metrics(tmp_path, capsys):
    (tmp_path / "eval.json").write_text('{"psnr": 25.1, "map25"')
    update_eval_json(tmp_path, {"miou": 61.5})
    err = capsys.readouterr().out.strip().splitlines()
    assert len(err) == 1 and "eval.json" in err[0] and "unreadable" in err[0]
    assert json.loads((tmp_path / "eval.json").read_text()) == {"miou": 61.5}
    update_eval_json(tmp_path, {"psnr": 20.0})  # a readable one is merged into, silently
    assert json.loads((tmp_path / "eval.json").read_text()) == {"miou": 61.5, "psnr": 20.0}
    assert capsys.readouterr().out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


# ------------------------------------------------------------------------------- one cloud, one answer


def _boxes(path):
    info = json.loads(path.read_text())
    return {k: v for k, v in info.items() if k not in ("source", "seconds")}


def test_the_ply_and_the_npz_of_one_export_give_the_same_boxes(tmp_path):
    """A weak field (labels at 0.4): the PLY used to carry only label and confidence, read back as 0.4 for the
    label and nothing for the other classes, so 0.6 went to background and every object was dropped, where
    the NPZ's probabilities found them all; it also lost the voxel size (the instances' link distance)."""
    _, out = _export(tmp_path)
    found = {}
    for name in ("points.ply", "points.npz"):
        dest = tmp_path / f"{name}.json"
        assert main(["detect", str(out / name), "--up", "0", "0", "1", "--output", str(dest)]) == 0
        found[name] = _boxes(dest)
    assert found["points.ply"] == found["points.npz"]
    assert sorted(b["class"] for b in found["points.npz"]["boxes"]) == sorted(CLASSES[:4])

    ply, npz = read_ply(out / "points.ply"), load_export(out / "points.npz")
    for key in ("xyz", "rgb", "views", "label", "confidence", "probs"):
        np.testing.assert_array_equal(getattr(ply, key), getattr(npz, key), err_msg=key)
    assert ply.classes == npz.classes and ply.voxel_size == npz.voxel_size
    np.testing.assert_array_equal(ply.relevancy["red book"], npz.relevancy["red book"])


def test_a_ply_with_labels_and_confidences_alone_still_finds_a_weak_fields_objects(tmp_path):
    cloud = weak_room()
    bare = dataclasses.replace(cloud, probs=np.zeros((len(cloud), 0), np.float16), relevancy={}, voxel_size=0.0)
    write_ply(tmp_path / "bare.ply", bare)  # another tool's PLY: no prob_<i> columns
    assert main(["detect", str(tmp_path / "bare.ply"), "--up", "0", "0", "1"]) == 0
    boxes = json.loads((tmp_path / "detections.json").read_text())["boxes"]
    assert sorted(b["class"] for b in boxes) == sorted(CLASSES[:4])


def test_ply_header_keeps_odd_class_names_and_queries(tmp_path):
    cloud = weak_room().subset(np.arange(50))
    cloud.classes = ["café table", "a\\b", "two\nlines", "bottle", "floor", "wall"]
    cloud.relevancy = {"Red  Mug!": cloud.relevancy["red book"]}
    write_ply(tmp_path / "c.ply", cloud)
    back = read_ply(tmp_path / "c.ply")
    assert back.classes == cloud.classes and list(back.relevancy) == ["Red  Mug!"]
    np.testing.assert_array_equal(back.probs, cloud.probs)


# ----------------------------------------------------------------------------------------- bad clouds


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(n in err[0] for n in needles), err[0]
    return err[0]


def test_bad_clouds_are_one_line_naming_the_file(tmp_path, capsys):
    _, out = _export(tmp_path)
    npz = out / "points.npz"
    cut = tmp_path / "cut.npz"
    cut.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    assert main(["detect", str(cut)]) == 2
    _one_error_line(capsys, str(cut), "truncated")
    with pytest.raises(UsageError, match="truncated"):
        load_export(cut)  # as the viewer reads it

    cloud = weak_room()
    empty = tmp_path / "empty"
    write_export(cloud.subset(np.zeros(len(cloud), bool)), empty, tmp_path, ExportOptions())
    for name in EXPORT_FILES[:2]:
        assert main(["detect", str(empty / name)]) == 2
        _one_error_line(capsys, str(empty / name), "empty")

    nan = dataclasses.replace(cloud, xyz=np.full_like(cloud.xyz, np.nan))
    write_ply(tmp_path / "nan.ply", nan)
    assert main(["detect", str(tmp_path / "nan.ply")]) == 2
    _one_error_line(capsys, "nan.ply", "NaN")


def test_points_with_nan_or_inf_coordinates_are_left_out_with_a_warning(tmp_path, capsys):
    cloud = weak_room()
    xyz = cloud.xyz.copy()
    bad = np.random.default_rng(0).choice(len(xyz), 40, replace=False)
    xyz[bad[:20], 1] = np.nan
    xyz[bad[20:], 2] = np.inf
    dirty = dataclasses.replace(cloud, xyz=xyz)
    _, out_dirty = _export(tmp_path / "dirty", dirty)
    capsys.readouterr()
    for name in EXPORT_FILES[:2]:
        assert main(["detect", str(out_dirty / name), "--up", "0", "0", "1"]) == 0
        warned = [line for line in capsys.readouterr().out.splitlines() if "NaN" in line]
        assert len(warned) == 1 and "40 of" in warned[0] and name in warned[0]
        boxes = json.loads((out_dirty / "detections.json").read_text())["boxes"]
        assert sorted(b["class"] for b in boxes) == sorted(CLASSES[:4])


# -------------------------------------------------------------------------------------- teacher cache


def test_a_stale_teacher_cache_is_said_even_where_the_log_is_silenced(tmp_path, capsys, monkeypatch):
    """eval, render, export and view load the teacher features with ``log`` silenced (load_distiller): a cache
    they find missing, stale, unreadable or unfinished is still one line before it is (re)built."""
    import ovseg3d.teachers.extract as extract
    from ovseg3d.data.loader import load_scene
    from ovseg3d.teachers import cache
    from ovseg3d.teachers.config import TeacherConfig

    class Built(Exception):
        """Stands for the extraction itself (test_teachers.py runs it)."""

    def build(*args):
        raise Built

    monkeypatch.setattr(extract, "build_teachers", build)
    scene_dir = tmp_path / "scene"
    args = ["--width", "32", "--height", "24", "--n-views", "3", "--n-annotated", "1", "--supersample", "1"]
    assert main(["synth", str(scene_dir), *args]) == 0
    scene = load_scene(scene_dir)
    cfg = TeacherConfig(kind="synthetic", cache_dir=tmp_path / "cache", feature_long_side=16)
    cpu, quiet = torch.device("cpu"), lambda s: None
    capsys.readouterr()

    def said(config: TeacherConfig = cfg) -> str:
        with pytest.raises(Built):
            extract.ensure_features(scene, config, cpu, log=quiet)
        lines = [line for line in capsys.readouterr().out.splitlines() if "teacher features" in line]
        assert len(lines) == 1, lines
        return lines[0]

    line = said()
    assert "none in" in line and "extracting" in line
    cfg.cache_dir.mkdir()
    cache.write_meta(cfg.cache_dir, {**cache.new_meta(extract.expected_meta(scene, cfg)), "complete": True})
    line = said(dataclasses.replace(cfg, syn_noise=(0.1, 0.2, 0.3)))
    assert "stale" in line and "syn_noise" in line and "rebuilding" in line and str(cfg.cache_dir) in line
    cache.write_meta(cfg.cache_dir, {**cache.new_meta(extract.expected_meta(scene, cfg)), "done": [0]})
    line = said()
    assert "continuing" in line and "1/3" in line
    (cfg.cache_dir / "meta.json").write_text('{"format": 2, "teach')  # truncated
    assert "unreadable" in said()
    assert sorted(p.name for p in cfg.cache_dir.iterdir()) == [".lock", "meta.json"]  # .lock: who reads it


# ------------------------------------------------------------------------------ render and eval pictures


def test_render_and_eval_pictures_have_their_own_names(toy_run, tmp_path):
    _, toy = toy_run
    run = tmp_path / "run"
    shutil.copytree(toy, run)
    shutil.rmtree(run / "renders", ignore_errors=True)
    from ovseg3d.run import load_run_config
    from ovseg3d.train import scene_of

    v = min(scene_of(load_run_config(run)).segmentations)  # an annotated view: eval paints it too
    assert main(["render", str(run), "--device", "cpu", "--views", str(v)]) == 0
    seg = run / "renders" / f"seg_{v:03d}.png"
    rendered = seg.read_bytes()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert seg.read_bytes() == rendered  # eval's panels no longer overwrite render's labels
    panel = run / "renders" / f"seg_eval_{v:03d}.png"
    assert panel.exists() and panel.read_bytes() != rendered
