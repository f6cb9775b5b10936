"""How the ``ovseg3d`` command fails: expected failures (bad options, missing or unwritable folders, a full disk,
out of memory) in one line with exit status 2, bugs with their traceback and exit status 1, ``--debug`` showing
every traceback; folders asked for instead of defaulting to the demo; the viewer's port and host; an
interrupted synth that leaves nothing behind. Everything here runs in-process and in about a second."""

import os
import socket
import stat
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ovseg3d import cli
from ovseg3d.cli import main

TINY = ["--width", "16", "--height", "12", "--n-views", "3", "--n-annotated", "1", "--supersample", "1"]


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _raising(exc: BaseException):
    def command(args: list[str]) -> int:
        raise exc

    return command


# ------------------------------------------------------------------------------------ one line, or a traceback


def test_an_internal_bug_shows_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "export", (_raising(ZeroDivisionError("division by zero")), ""))
    assert main(["export", "runs/x"]) == 1
    err = _err(capsys)
    assert err[0].startswith("Traceback") and any("ZeroDivisionError" in line for line in err[:-1])
    assert err[-1].startswith("ovseg3d export: internal error: ZeroDivisionError") and "bug" in err[-1]


def test_a_usage_error_is_one_line_unless_debug(monkeypatch, capsys):
    assert main(["export"]) == 2
    assert _err(capsys) == ["ovseg3d export: error: give the run folder: ovseg3d export RUN [options]"]
    assert main(["--debug", "export"]) == 2
    err = _err(capsys)
    assert err[0].startswith("Traceback") and err[-1].endswith("give the run folder: ovseg3d export RUN [options]")
    monkeypatch.setenv("OVSEG3D_DEBUG", "1")
    assert main(["export"]) == 2
    assert _err(capsys)[0].startswith("Traceback")
    monkeypatch.setenv("OVSEG3D_DEBUG", "0")
    assert main(["export"]) == 2
    assert len(_err(capsys)) == 1


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PermissionError(13, "Permission denied", "/data/runs/x/export"), ["/data/runs/x/export", "--output"]),
        (OSError(30, "Read-only file system", "/mnt/ro/points.ply"), ["/mnt/ro/points.ply", "read-only"]),
        (OSError(28, "No space left on device", "/data/x.npz"), ["no space left", "/data/x.npz", "free"]),
        (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"), ["no space left"]),
        (FileExistsError(17, "File exists", "/data/out"), ["/data/out", "already exists"]),
        (IsADirectoryError(21, "Is a directory", "/data/out"), ["/data/out", "is a folder"]),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."), ["out of memory", "--chunk"]),
        (MemoryError("Unable to allocate 3.1 GiB for an array"), ["out of memory", "--device cpu"]),
    ],
)
def test_file_system_and_memory_failures_are_one_line(monkeypatch, capsys, exc, expected):
    monkeypatch.setitem(cli.COMMANDS, "export", (_raising(exc), ""))
    assert main(["export", "runs/x"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("ovseg3d export: error: "), err
    assert all(word in err[0] for word in expected), err


def test_ctrl_c_says_what_was_kept_and_only_train_offers_resume(monkeypatch, capsys):
    for name in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, name, (_raising(KeyboardInterrupt()), ""))
        assert main([name, "x"]) == 130
        err = _err(capsys)
        assert len(err) == 1 and err[0].startswith(f"ovseg3d {name}: interrupted: ")
        assert ("--resume" in err[0]) == (name == "train"), err


# ---------------------------------------------------------------------------- the folders a command works on


@pytest.mark.parametrize(
    ("args", "asks"),
    [
        (["export"], "ovseg3d export RUN"),
        (["export", "--device", "cpu"], "ovseg3d export RUN"),
        (["eval"], "ovseg3d eval RUN"),
        (["render"], "ovseg3d render RUN"),
        (["view"], "ovseg3d view RUN"),
        (["detect"], "ovseg3d detect RUN|CLOUD"),
        (["extract"], "ovseg3d extract SCENE"),
        (["synth"], "ovseg3d synth OUT"),
        (["train", "--preset", "tiny"], "ovseg3d train SCENE --output RUN"),
        (["train", "scenes/x"], "--output RUN"),
    ],
)
def test_commands_ask_for_their_run_or_scene(capsys, args, asks):
    assert main(args) == 2
    err = _err(capsys)
    assert len(err) == 1 and "error: give the" in err[0] and asks in err[0], err


def test_train_takes_its_scene_and_run_from_resume_or_a_config_file(tmp_path, monkeypatch, capsys):
    import ovseg3d.pipeline
    from ovseg3d.config import TrainConfig, write_toml

    trained = []
    monkeypatch.setattr(ovseg3d.pipeline, "train", trained.append)
    run = tmp_path / "run"
    run.mkdir()
    write_toml(TrainConfig(scene=tmp_path / "scene", output=run, preset="tiny"), run / "config.toml")
    assert main(["train", "--output", str(run), "--resume"]) == 0  # the scene from RUN/config.toml
    assert main(["train", "--config", str(run / "config.toml")]) == 0  # both from the file
    assert [(c.scene, c.output, c.resume) for c in trained] == [(tmp_path / "scene", run, True)] + [
        (tmp_path / "scene", run, False)
    ]
    assert main(["train", "--output", str(tmp_path / "new"), "--resume"]) == 2  # nothing to resume: no scene
    assert "give the scene folder" in _err(capsys)[-1]


def test_train_and_run_tell_the_pipeline_which_settings_the_user_chose(tmp_path, monkeypatch):
    """A flag at the preset's own value (--distortion-weight 0 on the cpu preset) must stand against the preset's
    [unbounded] table, which replaces only what the user left alone."""
    import ovseg3d.pipeline
    from ovseg3d.config import TrainConfig, read_toml, write_toml

    trained = []
    monkeypatch.setattr(ovseg3d.pipeline, "train", trained.append)
    done = types.SimpleNamespace(seconds={})
    monkeypatch.setattr(ovseg3d.pipeline, "run_scene", lambda scene, run, st, cfg, *a, **k: trained.append(cfg) or done)
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    (scene / "transforms.json").write_text("{}")
    assert main(["train", str(scene), "--output", str(tmp_path / "a"), "--distortion-weight", "0"]) == 0
    assert trained[-1].chosen == ("scene", "output", "distortion_weight")
    assert main(["run", str(scene), "--output", str(tmp_path / "b"), "--roi-scale", "1", "--teacher", "none"]) == 0
    assert trained[-1].chosen == ("roi_scale",)  # --teacher sets a nested table, which no [unbounded] has
    write_toml(TrainConfig(), tmp_path / "c.toml")
    written = read_toml(tmp_path / "c.toml")
    assert written["chosen"] == [] and TrainConfig(**{**written, "chosen": ()}).chosen == ()


def test_help_needs_no_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--help"])
    assert exit_.value.code == 0 and "--run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, says",
    [
        (["eval", "runs/x", "--no-such-option"], "Unrecognized options: --no-such-option"),
        (["train", "scenes/x", "--output", "runs/x", "--steps", "many"], "Error parsing --steps"),
        (["detect", "runs/x", "--min-points", "1.5"], "--min-points"),
    ],
)
def test_bad_options_are_one_line(capsys, args, says):
    assert main(args) == 2
    err = _err(capsys)
    assert len(err) == 1 and says in err[0] and f"ovseg3d {args[0]} --help" in err[0], err


def _read_only(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(path, os.W_OK):  # root: chmod does not stop it
        path.chmod(stat.S_IRWXU)
        pytest.skip("running as root: a read-only folder is writable")
    return path


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        ("synth", "another OUT"),
        ("train", "--output"),
        ("extract", "--cache-dir"),
        ("render", "copy the run"),
        ("eval", "copy the run"),
        ("export", "--output"),
        ("detect", "--output"),
    ],
)
def test_a_read_only_output_folder_fails_at_once_in_one_line(tmp_path, capsys, command, hint):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "room.ply").write_text("ply\n")
    _read_only(ro)
    try:
        args = {
            "synth": ["synth", str(ro / "scene"), *TINY],
            "train": ["train", str(tmp_path / "scene"), "--output", str(ro / "run"), "--preset", "tiny"],
            "extract": ["extract", str(ro), "--teacher", "synthetic"],
            "detect": ["detect", str(ro / "room.ply")],
        }.get(command, [command, str(ro)])
        assert main(args) == 2
        err = _err(capsys)
        assert len(err) == 1 and str(ro) in err[0] and "not writable" in err[0] and hint in err[0], err
        assert sorted(p.name for p in ro.iterdir()) == ["room.ply"]  # nothing written
    finally:
        ro.chmod(stat.S_IRWXU)


# ------------------------------------------------------------------------------------ options checked up front


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["export", "RUN", "--min-views", "0"], "--min-views 0"),
        (["export", "RUN", "--view-stride", "0"], "--view-stride 0"),
        (["export", "RUN", "--min-opacity", "1.5"], "--min-opacity 1.5"),
        (["export", "RUN", "--chunk", "-1"], "--chunk -1"),
        (["detect", "RUN", "--min-points", "0"], "--min-points 0"),
        (["detect", "RUN", "--nms-iou", "2"], "--nms-iou 2"),
        (["detect", "RUN", "--view", "-1"], "--view -1"),
        (["render", "RUN", "--views", "0", "-2"], "--views -2"),
        (["eval", "RUN", "--max-samples-per-ray", "-1"], "--max-samples-per-ray -1"),
        (["view", "RUN", "--max-points", "0"], "--max-points 0"),
        (["view", "RUN", "--port", "99999"], "--port 99999"),
        (["view", "RUN", "--port", "-5"], "--port -5"),
        (["extract", "SCENE", "--downscale", "-1"], "--downscale -1"),
        (["synth", "OUT", "--width", "0"], "--width 0"),
    ],
)
def test_bad_counts_are_rejected_before_any_work(tmp_path, capsys, args, option):
    args = [str(tmp_path / a) if a.isupper() else a for a in args]  # RUN, SCENE, OUT: missing folders
    assert main(args) == 2
    err = _err(capsys)
    assert len(err) == 1 and option in err[0], err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------- viewer


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["view", str(tmp_path / "run"), "--port", str(port)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and f"--port {port}: already in use" in err[0], err


def test_a_host_that_is_not_here_is_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path / "run"), "--host", "no.such.host.invalid"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--host no.such.host.invalid" in err[0], err


class _FakeServer:
    def get_port(self) -> int:
        return 8123

    def sleep_forever(self) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize(("host", "shared"), [(None, False), ("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_viewer_is_private_unless_shared(monkeypatch, tmp_path, capsys, host, shared):
    import ovseg3d.viewer as viewer

    seen = {}

    class FakeViewer:
        def __init__(self, queries, trainer, distiller, host, port, size, run, max_points):
            seen["host"], self.server = host, _FakeServer()

        def stop(self) -> None:
            seen["stopped"] = True

    class Cloud:
        voxel_size = 0.01
        xyz = np.arange(15, dtype=np.float32).reshape(5, 3)

        def __len__(self) -> int:
            return 5

    monkeypatch.setattr(viewer, "load_queries", lambda run, n, device: (type("Q", (), {"cloud": Cloud()})(), 0, 0))
    monkeypatch.setattr(viewer, "Viewer", FakeViewer)
    args = ["view", str(tmp_path), "--port", "0", *(["--host", host] if host else [])]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert seen == {"host": host or "127.0.0.1", "stopped": True}
    assert "http://localhost:8123" in captured.out
    assert ("anyone who can reach this machine" in captured.err) == shared, captured.err


def test_loopback_hosts():
    from ovseg3d.viewer import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("")


# ------------------------------------------------------------------------------------------------------ synth


def _interrupt_after(monkeypatch, views: int, exc: BaseException) -> None:
    import ovseg3d.synth.writers as writers  # the module whose _write_scene looks render_view up

    render = writers.render_view
    calls = {"n": 0}

    def render_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > views:
            raise exc
        return render(*args, **kwargs)

    monkeypatch.setattr(writers, "render_view", render_then_stop)


def test_an_interrupted_synth_leaves_nothing_and_runs_again(tmp_path, monkeypatch, capsys):
    out = tmp_path / "scene"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1, KeyboardInterrupt())
        assert main(["synth", str(out), *TINY]) == 130
    err = _err(capsys)
    assert len(err) == 1 and "interrupted" in err[0] and "--resume" not in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the scene nor its hidden partial folder
    assert main(["synth", str(out), *TINY]) == 0
    assert (out / "scene.json").exists() and len(list((out / "images").iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def test_a_failed_synth_over_a_scene_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "scene"
    assert main(["synth", str(out), *TINY]) == 0
    (out / "features").mkdir()  # a teacher cache of the scene: not synth's, kept
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with monkeypatch.context() as m:
        _interrupt_after(m, 2, ZeroDivisionError("a bug"))
        assert main(["synth", str(out), *TINY, "--seed", "3"]) == 1
    assert "internal error" in _err(capsys)[-1]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]
    assert main(["synth", str(out), *TINY, "--n-views", "2", "--format", "transforms", "--seed", "3"]) == 0
    assert len(list((out / "images").iterdir())) == 2 and not (out / "poses_bounds.npy").exists()
    assert (out / "features").is_dir() and (out / "transforms.json").exists()


def test_synth_tidies_what_a_killed_synth_left(tmp_path):
    leftover = tmp_path / ".scene.tmp-999999999"  # no such process
    (leftover / "images").mkdir(parents=True)
    assert main(["synth", str(tmp_path / "scene"), *TINY]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]
