"""The viewer: queries over the cloud, and the viser server driven headlessly by a websocket client that speaks
viser's wire protocol (pinned by the installed viser version: the server rejects other client versions)."""

import dataclasses
import io
import json
import socket
import time

import numpy as np
import pytest
import torch

from ovseg3d.export import LabelledCloud
from ovseg3d.viewer import (
    CloudQueries,
    browser_camera,
    load_queries,
    matrix_to_quaternion,
    point_size,
    quaternion_to_matrix,
    size_slider,
    start_view,
)

viser = pytest.importorskip("viser")
websockets_sync = pytest.importorskip("websockets.sync.client")
zstandard = pytest.importorskip("zstandard")
msgspec = pytest.importorskip("msgspec")


def test_quaternions_round_trip():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        q = torch.nn.functional.normalize(torch.randn(4, generator=g, dtype=torch.float64), dim=0).numpy()
        q = q if q[0] >= 0 else -q
        rot = quaternion_to_matrix(q)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(matrix_to_quaternion(rot), q, atol=1e-9)


def test_browser_camera_looks_along_opencv_z():
    # identity pose in OpenCV axes: the camera looks down +z of the world, y down
    cam = browser_camera(np.array([1.0, 0, 0, 0]), np.zeros(3), fov_y=np.pi / 2, aspect=2.0, height=10)
    assert (cam.width, cam.height) == (20, 10) and float(cam.fy[0]) == pytest.approx(5.0)
    from ovseg3d.data.cameras import pixel_rays

    _, d = pixel_rays(cam, torch.zeros(2, dtype=torch.long), torch.tensor([9.5, 9.5]), torch.tensor([4.5, 9.5]))
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, 1.0]))
    assert float(d[1, 1]) > 0  # a lower pixel looks down: +y in OpenCV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(frame: bytes) -> list[dict]:
    """One server -> client frame: zstd-compressed msgpack messages, then 8-byte aligned raw arrays."""
    inner_len = int.from_bytes(frame[:8], "little")
    comp_len = int.from_bytes(frame[8:16], "little")
    payload = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(frame[16 : 16 + comp_len], inner_len))
    buffers, offset = [], 16 + comp_len
    for n in payload["binaryBufferLengths"]:
        offset += (8 - offset % 8) % 8
        buffers.append(frame[offset : offset + n])
        offset += n

    def resolve(x):
        if isinstance(x, dict) and "__binary_index" in x:
            return np.frombuffer(buffers[x["__binary_index"]], dtype=np.dtype(x["dtype"]))
        if isinstance(x, dict):
            return {k: resolve(v) for k, v in x.items()}
        if isinstance(x, list):
            return [resolve(v) for v in x]
        return x

    return [resolve(m) for m in payload["messages"]]


def _send(ws, message) -> None:
    ws.send(msgspec.msgpack.encode(message.as_serializable_dict()))


def _wait_for(ws, accept, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            frame = ws.recv(timeout=max(0.1, end - time.monotonic()))
        except TimeoutError:
            break
        for m in _decode(frame):
            if accept(m):
                return m
    raise AssertionError("the server did not send the expected message")


@pytest.fixture(scope="module")
def viewer(exported, module_copy_run):
    """The viewer on a copy of the exported toy run (conftest.py): its cloud is RUN/export, and the detections
    file written here stays in the copy."""
    from ovseg3d.viewer import Viewer

    scene, run = exported[0], module_copy_run(exported[1])
    queries, trainer, distiller = load_queries(run, max_points=3000, device_name="cpu", log=lambda s: None)
    # the true objects as detections, in objects.json's own format
    objects = json.loads((scene / "objects.json").read_text())["objects"]
    boxes = [{k: o[k] for k in ("class", "center", "size", "yaw")} | {"score": 1.0} for o in objects]
    (run / "detections.json").write_text(json.dumps({"up": [0, 0, 1], "boxes": boxes}))
    v = Viewer(queries, trainer, distiller, "127.0.0.1", _free_port(), 0.01, run)
    yield v
    v.stop()


def test_a_malformed_detections_file_is_one_clear_error(tmp_path):
    from ovseg3d.detect.results import read_detections

    assert read_detections(tmp_path / "none.json") == []
    (tmp_path / "d.json").write_text('{"boxes": [{"class": "mug", "center": [0, 0], "size": [1, 1, 1]}]}')
    with pytest.raises(ValueError, match="not a detections file"):
        read_detections(tmp_path / "d.json")


def test_a_query_ranks_the_points_of_its_class_first(viewer):
    q: CloudQueries = viewer.q
    mug = q.cloud.classes.index("mug") if "mug" in q.cloud.classes else 0
    name = q.cloud.classes[mug]
    rel = q.relevancy(name)
    on = q.cloud.label == mug
    assert on.any() and (~on).any()
    assert float(np.median(rel[on])) > float(np.median(rel[~on]))
    with pytest.raises(ValueError, match="empty query"):
        q.relevancy("  ")


def _camera_message(viewer, view: int):
    """The message a browser sends for its camera, here at the pose of a training view."""
    from viser import _messages as msg

    from ovseg3d.data.cameras import opencv_to_opengl

    cams = viewer.trainer.scene.cameras
    c2w_cv = opencv_to_opengl(cams.c2w[view].double().numpy())  # the axis flip is its own inverse
    fov = float(2 * np.arctan(0.5 * cams.height / float(cams.fy[view])))
    pose = (tuple(matrix_to_quaternion(c2w_cv[:, :3])), tuple(c2w_cv[:, 3]))
    return msg.ViewerCameraMessage(*pose, fov, 0.01, 100.0, cams.height, cams.width, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))


def test_the_viewer_answers_a_websocket_client(viewer):
    from viser import _messages as msg

    url = f"ws://127.0.0.1:{viewer.server.get_port()}"
    with websockets_sync.connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as ws:
        first = _wait_for(ws, lambda m: m["type"] == "PointCloudMessage")
        assert len(first["props"]["colors"]) == 3 * len(viewer.q.cloud)
        seen: list[dict] = []
        _wait_for(ws, lambda m: seen.append(m) or m["type"] == "ReplayDoneMessage")
        # the detections are drawn: one box and one label per box
        assert sum(m["type"] == "BoxMessage" for m in seen) == len(viewer.boxes) > 0
        names = {m["props"]["text"] for m in seen if m["type"] == "LabelMessage"}
        assert {f"{b['class']} 1.00" for b in viewer.boxes} <= names
        _send(ws, _camera_message(viewer, 0))  # a browser announces its camera first; viser registers it then

        # type a query in the panel: the cloud comes back recoloured by its relevancy
        name = viewer.q.cloud.classes[0]
        _send(ws, msg.GuiUpdateMessage(viewer.query_box._impl.uuid, {"value": name}))
        update = _wait_for(ws, lambda m: m["type"] == "SceneNodeUpdateMessage" and "colors" in m["updates"])
        expected = viewer.q.colours("relevancy", viewer.q.relevancy(name))
        np.testing.assert_array_equal(update["updates"]["colors"].reshape(-1, 3), expected)
        assert viewer.mode == "relevancy" and viewer.last_query_ms > 0

        # press "render": the field rendered from the browser's camera comes back as the background
        _send(ws, msg.GuiUpdateMessage(viewer.render_rows._impl.uuid, {"value": 60}))
        _send(ws, msg.GuiUpdateMessage(viewer.render_button._impl.uuid, {"value": True}))
        image = _wait_for(ws, lambda m: m["type"] == "BackgroundImageMessage" and m["rgb_data"])
        import imageio.v3 as iio

        pixels = iio.imread(io.BytesIO(image["rgb_data"]))
        cams = viewer.trainer.scene.cameras
        assert pixels.shape == (60, round(60 * cams.width / cams.height), 3)
        # the render of a training view looks like that view's photo
        photo = viewer.trainer.scene.images[0].float().permute(2, 0, 1)[None]
        small = torch.nn.functional.interpolate(photo, size=pixels.shape[:2], mode="area")[0].permute(1, 2, 0)
        err = float(np.abs(small.numpy() - pixels.astype(np.float32)).mean())
        assert err < 25.0, err


def test_boxes_turn_by_their_rotation_or_else_their_yaw():
    from ovseg3d.detect.gravity import rotation_between
    from ovseg3d.detect.metrics import rot_z
    from ovseg3d.viewer import box_orientation, quaternion_to_matrix

    tilted = rotation_between(np.array([0.0, 0.0, 1.0]), np.array([0.1, 0.0, 1.0])) @ rot_z(0.7)
    np.testing.assert_allclose(
        quaternion_to_matrix(np.array(box_orientation({"rotation": tilted.tolist()}))), tilted, atol=1e-9
    )
    np.testing.assert_allclose(quaternion_to_matrix(np.array(box_orientation({"yaw": 0.7}))), rot_z(0.7), atol=1e-9)


def test_the_first_view_stands_at_a_training_camera_and_frames_the_objects():
    """An orbit room: cameras on a ring inside the walls, all looking at a table of objects in the middle. The
    cameras' mean position is the middle of the objects (the first view used to stand there, 1.6x that from
    the target: inside the cloud); the first view now stands at a training camera, looks at the objects and
    keeps all of them in its frame."""
    rng = np.random.default_rng(0)
    objects = rng.uniform([-0.4, -0.4, 0.0], [0.4, 0.4, 0.5], (3000, 3))
    t = rng.uniform(0, 2 * np.pi, 6000)
    walls = np.c_[3 * np.cos(t), 3 * np.sin(t), rng.uniform(0, 2.5, 6000)]  # a round room, 3 m in radius
    xyz = np.vstack([objects, walls])
    c2w = []
    for a in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        eye = np.array([1.8 * np.cos(a), 1.8 * np.sin(a), 1.2])
        back = (eye - [0, 0, 0.25]) / np.linalg.norm(eye - [0, 0, 0.25])
        right = np.cross([0, 0, 1.0], back)
        right /= np.linalg.norm(right)
        c2w.append(np.c_[right, np.cross(back, right), back, eye])
    c2w = np.stack(c2w)
    n = len(c2w)
    fy, cx, cy = np.full(n, 100.0), np.full(n, 80.0), np.full(n, 60.0)
    view = start_view(xyz, c2w, fy, cx, cy, (160, 120))
    assert np.linalg.norm(c2w[:, :, 3].mean(0) - [0, 0, 1.2]) < 1e-6  # the old rule's eye: amid the objects
    assert min(np.linalg.norm(c2w[:, :, 3] - view.position, axis=1)) < 1e-9  # a training camera's centre
    np.testing.assert_allclose(view.up, [0, 0, 1], atol=1e-6)
    # every object point is in front of it and inside its field of view
    forward = (view.look_at - view.position) / np.linalg.norm(view.look_at - view.position)
    rel = objects - view.position
    cos = (rel @ forward) / np.linalg.norm(rel, axis=1)
    assert (cos > np.cos(view.fov / 2)).all()
    assert np.linalg.norm(view.look_at - view.position) < 3.0  # looking into the room, not at a far wall


def test_points_are_sized_from_their_spacing():
    """A plane of points 5 cm apart is drawn with points about 5 cm wide, whatever the fusion voxel said."""
    g = np.arange(0, 2, 0.05)
    xyz = np.stack([*np.meshgrid(g, g, indexing="ij"), np.zeros((len(g), len(g)))], -1).reshape(-1, 3)
    n = len(xyz)
    cloud = LabelledCloud(
        xyz.astype(np.float32), np.zeros((n, 3), np.uint8), np.ones(n, np.int32), np.full(n, -1, np.int32),
        np.zeros(n, np.float32), np.zeros((n, 0), np.float16), {}, None, [], voxel_size=0.01,
    )  # fmt: skip
    assert 0.035 < point_size(cloud) < 0.07


@pytest.mark.parametrize("size", [1e-4, 0.011, 0.0605, 0.7, 42.0])
def test_the_point_size_slider_holds_the_size_in_any_unit(size):
    """The orbit room's cloud opened at 0.06 units a point, past the old fixed 0.05 maximum: viser refused."""
    lo, hi, step = size_slider(size)
    assert lo <= size <= hi and 0 < step <= lo
    assert hi >= 4.9 * size and lo <= size / 5


def test_the_relevant_count_says_what_it_counts():
    from ovseg3d.viewer import relevant_text

    rel = np.array([0.2, 0.45, 0.51, 0.6, 0.9])
    said = relevant_text("vase", rel)
    assert "3 of 5 points rate it above every negative (relevancy > 0.5)" in said and "'vase'" in said
    assert "no points" in relevant_text("vase", np.zeros(0))


def test_camera_frustums_are_sized_by_the_cameras_spacing_and_the_scene():
    from ovseg3d.viewer import frustum_scale

    c2w = np.tile(np.eye(4)[:3], (4, 1, 1))
    c2w[:, 0, 3] = [0.0, 0.3, 0.6, 0.9]  # cameras 0.3 apart
    assert frustum_scale(c2w, diag=100.0) == pytest.approx(0.1)
    assert frustum_scale(c2w, diag=2.0) == pytest.approx(0.03)  # a small scene: 1.5 % of its diagonal
    assert frustum_scale(c2w[:1], diag=2.0) == pytest.approx(0.03)


def test_an_export_without_features_is_shown_at_once_and_features_come_on_request(exported, copy_run):
    from ovseg3d.export import ExportOptions, load_export, write_export
    from ovseg3d.viewer import Viewer

    run = copy_run(exported[1])
    cloud = load_export(run / "export" / "points.npz")
    made = ExportOptions(max_spread=0.0, pixel_stride=2, queries=["mug"])  # as the user's export was made
    write_export(dataclasses.replace(cloud, feature=None), run / "export", run, made)
    said: list[str] = []
    queries, trainer, distiller = load_queries(run, max_points=3000, device_name="cpu", log=said.append)
    assert queries.features is None and len(queries.cloud) == min(3000, len(cloud))  # nothing extracted
    assert any("no CLIP features" in line and "compute features" in line for line in said)
    with pytest.raises(ValueError, match="compute features"):
        queries.relevancy("mug")
    v = Viewer(queries, trainer, distiller, "127.0.0.1", _free_port(), 0.01, run, max_points=3000)
    try:
        v.set_query("mug")  # no features yet: a status line, no exception
        assert "compute features" in v.status.content and v.rel is None
        v.compute_features()
        again = load_export(run / "export" / "points.npz")
        assert v.q.features is not None and again.feature is not None
        # made again as the cloud was: at its pixel stride (a quarter of the rays), with its query
        info = json.loads((run / "export" / "points.json").read_text())
        assert info["options"] == {**info["options"], "pixel_stride": 2, "max_spread": 0.0, "features": True}
        assert list(again.relevancy) == ["mug"] and len(again) < len(cloud)
        v.set_query("mug")
        assert v.rel is not None and "rate it above every negative" in v.status.content
        v._set_cameras_visible(False)
        assert not any(f.visible for f in v.frustums)
    finally:
        v.stop()
