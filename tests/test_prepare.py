"""`ovseg3d prepare`: photos or a video to a COLMAP scene with pycolmap. A generated scene's renders give back
its cameras (after a similarity alignment), a video gives the frames asked for, bad input is one line, and a
killed run resumes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ovseg3d.cli import main
from ovseg3d.data.colmap import c2w_opengl, read_model
from ovseg3d.data.loader import camera_up, load_scene
from ovseg3d.metrics import similarity_alignment, trajectory_error
from ovseg3d.prepare import (
    FAR_PAIR_MAX_PX,
    PrepareError,
    choose_frames,
    epipolar_agreement,
    image_pairs,
    sharpness,
    write_video_frames,
)

pytest.importorskip("pycolmap")

# a forward-facing room at 320x240: enough texture for SIFT at this size (an orbit of the same room, 18 deg a
# step, matched too few pairs: COLMAP's first pair wants 100 inliers)
SCENE = ["--width", "320", "--height", "240", "--n-views", "20", "--supersample", "1", "--n-annotated", "0"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    scene = tmp_path_factory.mktemp("prepare") / "scene"
    assert main(["synth", str(scene), *SCENE, "--seed", "3"]) == 0
    return scene


@pytest.fixture(scope="module")
def prepared(rendered, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    assert main(["prepare", str(rendered / "images"), str(out), "--max-features", "4096"]) == 0
    return out


def _centres(scene: Path) -> dict[str, np.ndarray]:
    s = load_scene(scene)
    c2w = s.cameras.c2w.double().numpy()
    return {Path(p).name: c2w[i] for i, p in enumerate(s.image_paths)}


def test_a_generated_scenes_renders_give_back_its_cameras(rendered, prepared):
    out = prepared
    stats = json.loads((out / "prepare.json").read_text())
    assert stats["registered"] == stats["images"] == 20
    assert stats["mean_reprojection_error_px"] < 1.5
    assert stats["sift_first_octave"] == -1  # few features at 320x240 as they are: doubled
    assert (out / "sparse" / "0" / "cameras.bin").is_file() and (out / "images_2").is_dir()
    assert len(read_model(out / "sparse" / "0").cameras) == 1  # one camera for all, across extraction chunks
    assert not (out.parent / "prepared.partial").exists()
    truth, found = _centres(rendered), _centres(out)
    names = sorted(found)
    est = np.stack([found[n][:, 3] for n in names])
    ref = np.stack([truth[n][:, 3] for n in names])
    assert trajectory_error(est, ref)["rmse_share"] < 0.02
    # turned so that the cameras' up is +z; and the same up as the truth's, once aligned
    up = camera_up(np.stack([found[n] for n in names]))
    assert math.degrees(math.acos(min(1.0, up[2]))) < 1.0
    _, rot, _ = similarity_alignment(est, ref)
    truth_up = camera_up(np.stack([truth[n] for n in names]))
    assert float(rot @ up @ truth_up) > math.cos(math.radians(3.0))


def test_a_killed_prepare_resumes_from_its_work_folder(rendered, tmp_path):
    out = tmp_path / "scene"
    cmd = [sys.executable, "-m", "ovseg3d.cli", "prepare", str(rendered / "images"), str(out), "--max-features", "4096"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "scene.partial" / "prepare_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and "images" in json.loads(state.read_text() or "{}").get("done", []):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its pycolmap child
    proc.wait()
    assert not out.exists() and state.is_file()
    said = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "resuming after" in said
    assert json.loads((out / "prepare.json").read_text())["registered"] == 20


MAP_TWICE = """
import json, shutil, sys
from pathlib import Path
import numpy as np, pycolmap
from ovseg3d.prepare import PrepareConfig, _map
scene, work = Path(sys.argv[1]), Path(sys.argv[2])
centres = []
for k in range(2):
    db = work / f"run{k}.db"
    shutil.copy(scene / "database.db", db)
    rec = _map(pycolmap, db, scene / "images", work, 20, PrepareConfig())
    centres.append({im.name: im.projection_center().tolist() for im in rec.images.values() if im.has_pose})
print(json.dumps(centres))
"""


def test_mapping_the_same_matches_twice_gives_the_same_cameras(prepared, tmp_path):
    """The mapper's result depends on its thread count (COLMAP's bundle adjustment): with the default of one thread
    it is the same every time (run in a child process: pycolmap stays out of this one)."""
    said = subprocess.run(
        [sys.executable, "-c", MAP_TWICE, str(prepared), str(tmp_path)], capture_output=True, text=True
    )
    assert said.returncode == 0, said.stderr[-2000:]
    first, second = json.loads(said.stdout.strip().splitlines()[-1])
    # from scratch (prepare itself starts from a chain of neighbours), so how many register depends on the matches
    # the machine's SIFT found; the point is that the same matches give the same cameras
    assert len(first) >= 10 and first.keys() == second.keys(), (sorted(first), sorted(second))
    assert max(float(np.abs(np.subtract(first[n], second[n])).max()) for n in first) < 1e-9


MAP_GLOBAL = """
import json, shutil, sys
from dataclasses import replace
from pathlib import Path
import pycolmap
from ovseg3d.prepare import PrepareConfig, _map
scene, work = Path(sys.argv[1]), Path(sys.argv[2])
db = work / "global.db"
shutil.copy(scene / "database.db", db)
rec = _map(pycolmap, db, scene / "images", work, 20, replace(PrepareConfig(), mapper="global"))
centres = {im.name: im.projection_center().tolist() for im in rec.images.values() if im.has_pose}
print(json.dumps({"centres": centres, "error_px": rec.compute_mean_reprojection_error()}))
"""


def test_the_global_mapper_gives_back_the_cameras_of_the_incremental_one(prepared, tmp_path):
    """``--mapper global`` (COLMAP's global mapper) places every photo of the generated scene where the incremental
    mapper did, after a similarity alignment."""
    said = subprocess.run(
        [sys.executable, "-c", MAP_GLOBAL, str(prepared), str(tmp_path)], capture_output=True, text=True, check=True
    )
    found = json.loads(said.stdout.strip().splitlines()[-1])
    assert len(found["centres"]) == 20 and found["error_px"] < 1.5
    incremental = {im.name: im for im in read_model(prepared / "sparse" / "0").images.values()}
    names = sorted(found["centres"])
    est = np.array([found["centres"][n] for n in names])
    ref = np.stack([c2w_opengl(incremental[n])[:, 3] for n in names])
    assert trajectory_error(est, ref)["rmse_share"] < 0.01


FAR_PAIRS = """
import json, shutil, sys
from dataclasses import replace
from pathlib import Path
import numpy as np, pycolmap
from ovseg3d.prepare import PrepareConfig, check_far_pairs
scene, work = Path(sys.argv[1]), Path(sys.argv[2])
db = work / "database.db"
shutil.copy(scene / "database.db", db)
names = sorted(p.name for p in (scene / "images").iterdir())
with pycolmap.Database.open(db) as database:
    ids = {im.name: im.image_id for im in database.read_all_images()}
    a, b = ids[names[0]], ids[names[-1]]  # 19 apart: a far pair
    rng = np.random.default_rng(0)
    n_a, n_b = database.num_keypoints_for_image(a), database.num_keypoints_for_image(b)
    false = pycolmap.TwoViewGeometry()
    false.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
    false.inlier_matches = np.stack([rng.choice(n_a, 200, replace=False), rng.choice(n_b, 200, replace=False)], 1).astype(np.uint32)
    if database.exists_two_view_geometry(a, b):
        database.delete_two_view_geometry(a, b)
    database.write_two_view_geometry(a, b, false)
for overlap in (10, 25, 0):
    stats = check_far_pairs(pycolmap, db, scene / "images", work, names, replace(PrepareConfig(), overlap=overlap))
    stats["mapped"] = (work / "chain_model").is_dir()
    with pycolmap.Database.open(db) as database:
        stats["planted_left"] = database.exists_two_view_geometry(a, b)
    print(json.dumps(stats))
"""


def test_far_pairs_that_contradict_the_near_pairs_cameras_are_dropped(prepared, tmp_path):
    """A false pair planted between the first and the last photo (200 random matches) is dropped; the true far
    pairs of the generated scene are kept; with every pair near (--overlap 25 of 20 photos) nothing is checked;
    with none near (--overlap 0) the near pairs join no photos, and nothing is mapped."""
    said = subprocess.run(
        [sys.executable, "-c", FAR_PAIRS, str(prepared), str(tmp_path)], capture_output=True, text=True, check=True
    )
    checked, none, unjoined = (json.loads(line) for line in said.stdout.strip().splitlines()[-3:])
    assert checked["far_pairs"] > 20 and "skipped" not in checked and checked["mapped"]
    assert checked["far_pairs_dropped"] == 1 and not checked["planted_left"]
    assert none == {"far_pairs": 0, "far_pairs_dropped": 0, "mapped": False, "planted_left": False}
    assert "join only 1 of 20" in unjoined["skipped"] and not unjoined["mapped"]
    assert json.loads((prepared / "prepare.json").read_text())["far_pair_check"]["far_pairs_dropped"] == 0


def test_epipolar_agreement_tells_a_true_pose_from_a_mirrored_one():
    rng = np.random.default_rng(1)
    world = rng.uniform([-1, -1, 4], [1, 1, 6], (300, 3))
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    b_from_a = np.c_[rot, [-1.5, 0.1, 0.3]]
    in_b = world @ rot.T + b_from_a[:, 3]
    xa, xb = world[:, :2] / world[:, 2:], in_b[:, :2] / in_b[:, 2:]
    focal = 500.0
    assert epipolar_agreement(xa, xb, b_from_a, focal, FAR_PAIR_MAX_PX) == 1.0
    noisy = xb + rng.normal(0, 1.0 / focal, xb.shape)  # 1 px of noise: still agrees
    assert epipolar_agreement(xa, noisy, b_from_a, focal, FAR_PAIR_MAX_PX) > 0.95
    flipped = np.c_[np.diag([-1.0, 1.0, -1.0]) @ rot, b_from_a[:, 3]]  # turned 180 deg about the vertical
    assert epipolar_agreement(xa, xb, flipped, focal, FAR_PAIR_MAX_PX) < 0.2
    assert epipolar_agreement(xa, xb[rng.permutation(len(xb))], b_from_a, focal, FAR_PAIR_MAX_PX) < 0.2


def test_too_few_photos_or_no_video_is_one_line(tmp_path, rendered, capsys):
    two = tmp_path / "two"
    two.mkdir()
    for name in ("00.png", "01.png"):
        (two / name).write_bytes((rendered / "images" / name).read_bytes())
    assert main(["prepare", str(two), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds 2 photos" in err and "at least 3" in err
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video at all")
    assert main(["prepare", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot read it as a video" in err
    assert not (tmp_path / "out").exists()


def _blurred(frame: np.ndarray) -> np.ndarray:
    out = frame.astype(np.float32)
    for _ in range(6):  # a box blur, six times
        out = (out + np.roll(out, 1, 0) + np.roll(out, 1, 1) + np.roll(out, -1, 0)) / 4
    return out.astype(np.uint8)


def _pan(texture: np.ndarray, shifts: list[int]) -> list[np.ndarray]:
    return [(texture[:96, x : x + 128] * 255).astype(np.uint8) for x in shifts]


@pytest.fixture(scope="module")
def texture():
    rng = np.random.default_rng(0)
    return np.kron(rng.random((40, 100, 3)), np.ones((4, 4, 1)))  # 160x400 of 4x4 blocks: survives H.264


def test_a_video_gives_the_sharpest_frame_of_each_stretch(tmp_path, texture):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = _pan(texture, [8 * i for i in range(10)])  # a steady pan
    frames = [f if i in (1, 2, 5, 6, 9) else _blurred(f) for i, f in enumerate(frames)]
    video = tmp_path / "walk.mp4"
    iio.mimwrite(video, frames, fps=10, macro_block_size=16)
    names, said = write_video_frames(video, tmp_path / "frames", frames=5, max_long_side=0)
    assert names == [f"frame_{k:05d}.jpg" for k in range(1, 6)] and said.startswith("5 of 10 frames")
    kept = [sharpness(np.asarray(iio.imread(tmp_path / "frames" / n))) for n in names]
    assert min(kept) > 4 * max(sharpness(f) for i, f in enumerate(frames) if i not in (1, 2, 5, 6, 9))


def test_a_video_is_read_with_opencv_where_imageio_ffmpeg_is_missing(tmp_path, texture, monkeypatch):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")  # to write the video
    pytest.importorskip("cv2")
    frames = _pan(texture, [8 * i for i in range(10)])
    video = tmp_path / "walk.mp4"
    iio.mimwrite(video, frames, fps=10, macro_block_size=16)
    with_ffmpeg, _ = write_video_frames(video, tmp_path / "ffmpeg", frames=5, max_long_side=0)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # its import now fails
    names, said = write_video_frames(video, tmp_path / "opencv", frames=5, max_long_side=0)
    assert names == with_ffmpeg and said.startswith("5 of 10 frames")
    for name in names:  # the same frames, in RGB (OpenCV decodes to BGR)
        a = np.asarray(iio.imread(tmp_path / "ffmpeg" / name), np.float32)
        b = np.asarray(iio.imread(tmp_path / "opencv" / name), np.float32)
        assert a.shape == b.shape and np.abs(a - b).mean() < 3.0
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    with pytest.raises(PrepareError, match="OpenCV cannot read it"):
        write_video_frames(broken, tmp_path / "none", frames=5, max_long_side=0)


def test_a_video_whose_camera_stands_still_half_the_time_gives_its_frames_where_it_moves(tmp_path, texture):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = _pan(texture, [0] * 16 + [16 * i for i in range(1, 17)])  # 16 frames still, then 16 of a pan
    video = tmp_path / "stop_and_go.mp4"
    iio.mimwrite(video, frames, fps=10, macro_block_size=16)
    names, said = write_video_frames(video, tmp_path / "frames", frames=8, max_long_side=0)
    assert len(names) == 8
    assert "7 from its second half" in said or "8 from its second half" in said  # equal stretches of time: 4


def test_frames_are_chosen_by_change_of_view_then_sharpness():
    change = np.r_[0.0, np.zeros(9), np.ones(10)]  # still for 10 frames, then moving
    sharp = np.arange(20.0) % 3  # sharpest: every third frame
    chosen = choose_frames(change, sharp, 5)
    # progress (a fifth time, the rest change): frames 0-10 in the first fifth, then two frames a stretch
    assert chosen == [2, 11, 14, 16, 17]  # the first sharpest of 0-10, of 11-12, 13-14, 15-16, 17-19
    even = choose_frames(np.ones(20), sharp, 5)  # moving steadily: equal stretches of time
    assert [i // 4 for i in even] == [0, 1, 2, 3, 4]
    assert choose_frames(np.zeros(20), sharp, 5) == even  # no change at all: time alone


EXTRACT = """
import sys
from pathlib import Path
import pycolmap
from ovseg3d.prepare import PrepareConfig, _extract
images, db = Path(sys.argv[1]), Path(sys.argv[2])
names = sorted(p.name for p in images.iterdir())[:3]
octave = _extract(pycolmap, db, images, names, PrepareConfig())
with pycolmap.Database.open(db) as database:
    print(octave, min(database.num_keypoints_for_image(im.image_id) for im in database.read_all_images()))
"""


def test_photos_with_few_features_as_they_are_are_doubled_for_sift(rendered, tmp_path):
    """--sift-first-octave None: a fine texture keeps its size (first octave 0); the generated room at 320x240
    finds under 400 keypoints an image as it is, so SIFT runs again on it doubled (-1), finding more."""
    iio = pytest.importorskip("imageio.v2")
    fine = tmp_path / "fine"
    fine.mkdir()
    cloth = np.kron(np.random.default_rng(1).random((120, 200, 3)), np.ones((4, 4, 1)))  # 4x4 blocks: 480x800
    for i in range(3):
        iio.imwrite(fine / f"{i:02d}.png", (cloth[:, 48 * i : 48 * i + 640] * 255).astype(np.uint8))
    said = {}
    for name, images in (("fine", fine), ("room", rendered / "images")):
        out = subprocess.run(
            [sys.executable, "-c", EXTRACT, str(images), str(tmp_path / f"{name}.db")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        said[name] = [int(x) for x in out.strip().splitlines()[-1].split()]
    assert said["fine"][0] == 0 and said["fine"][1] >= 400
    assert said["room"][0] == -1


def test_sequential_pairs_close_the_loop_and_exhaustive_pairs_are_all():
    assert len(image_pairs(20, "exhaustive", 10, 20)) == 190
    pairs = set(image_pairs(100, "sequential", 5, 10))
    assert (0, 5) in pairs and (0, 6) not in pairs  # neighbours
    assert (0, 99) in pairs  # the last frame meets the first: a loop
    assert len(pairs) < 100 * 5 + 45


def test_run_prepares_a_folder_of_photos_into_the_run_then_trains_on_it(rendered, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", str(rendered / "images"), "--output", str(run), "--preset", "tiny", "--teacher", "none"]
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (run / "scene" / "sparse" / "0").is_dir() and (run / "config.toml").exists()
    assert any(line.split()[:1] == ["prepare"] for line in out.splitlines())
    assert f"next: ovseg3d eval {run}" in out  # no semantic field: no viewer to offer
    assert main([*args, "--device", "cpu"]) == 0  # again: the scene is kept, nothing is redone
    said = capsys.readouterr()
    assert "is prepared already" in said.out + said.err


def test_bench_prepare_refilter_measures_the_models_errors_and_how_far_a_refilter_moves_its_cameras(prepared):
    """ovseg3d bench prepare's refilter study: its per-observation errors average per point to COLMAP's own; a
    refilter at a tenth of the largest error leaves fewer observations, none above it, and gives a camera motion it
    measures after a similarity alignment (a scaled, turned, moved copy of the cameras counts as not moved)."""
    import pycolmap

    from ovseg3d.bench import prepare as bench

    model = prepared / "sparse" / "0"
    rec = pycolmap.Reconstruction(model)
    errors, ids = bench.observation_errors(rec)
    per_point = np.bincount(ids, errors) / np.maximum(np.bincount(ids), 1)  # COLMAP keeps each track's mean error
    stored = np.array([rec.points3D[i].error for i in np.unique(ids)])
    np.testing.assert_allclose(per_point[np.unique(ids)], stored, rtol=1e-3, atol=1e-4)
    cut = float(np.percentile(errors, 90))
    got = bench.refilter(model, cut)
    assert got["colmap_mean_px"] == pytest.approx(rec.compute_mean_reprojection_error(), abs=1e-3)
    assert got["refiltered_observations"] < got["observations"] and got["refiltered_p99_px"] <= cut + 1e-6
    assert 0 <= got["cameras_moved_median"] <= got["cameras_moved_max"] < 0.05
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 3))
    turn = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    turn *= np.sign(np.linalg.det(turn))
    assert bench.aligned_motion(centres, 2.5 * centres @ turn.T + 1.0).max() < 1e-9
    moved = centres.copy()
    moved[0] += 1.0
    assert bench.aligned_motion(centres, moved).max() > 0.01


def test_sift_runs_on_the_gpu_only_where_pycolmap_has_cuda():
    from types import SimpleNamespace

    from ovseg3d.prepare import PrepareError, sift_on_gpu

    with_cuda, without = SimpleNamespace(has_cuda=True), SimpleNamespace(has_cuda=False)
    assert sift_on_gpu(with_cuda, "auto") and not sift_on_gpu(without, "auto")
    assert not sift_on_gpu(with_cuda, "cpu") and sift_on_gpu(with_cuda, "cuda")
    with pytest.raises(PrepareError, match="pycolmap-cuda12"):
        sift_on_gpu(without, "cuda")
