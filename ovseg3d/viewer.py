"""The browser viewer (``ovseg3d view RUN``): a viser server over a run's labelled point cloud.

The cloud is coloured by rgb, by class or by the relevancy of a free-text query typed in the panel (LERF's
relevancy against the canonical negatives, recomputed over every point on each query). Classes can be
hidden from a legend; the training cameras are drawn; "render this view" renders the field from the
browser's camera (rgb, segmentation or relevancy) and shows it as the background.

:class:`CloudQueries` holds the numbers (points, unit CLIP features, text encoder) and needs no server, so
that queries and colours are testable and timeable without a browser.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.data.cameras import Cameras, opencv_to_opengl
from ovseg3d.detect.results import DETECTIONS, read_detections
from ovseg3d.errors import UsageError
from ovseg3d.export import LabelledCloud
from ovseg3d.images import colorize, label_palette
from ovseg3d.teachers.relevancy import CANONICAL_NEGATIVES, relevancy_from_cosines

COLOUR_MODES = ("rgb", "label", "relevancy")


@dataclass
class CloudQueries:
    """A labelled cloud with one unit CLIP feature per point ``features [P, D]`` (float32; ``None`` for an export
    made without them: the cloud is shown, queries wait for :meth:`set_features`), and the text encoder of the
    run's teacher for free-text queries."""

    cloud: LabelledCloud
    features: Tensor | None
    text_encoder: object
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.negatives = self.encode(list(CANONICAL_NEGATIVES))

    def set_features(self, cloud: LabelledCloud) -> None:
        """Take ``cloud`` (the same run's export, with features) as the cloud to show and to query."""
        if cloud.feature is None:
            raise UsageError("the cloud has no features")
        self.cloud = cloud
        self.features = F.normalize(torch.from_numpy(cloud.feature.astype(np.float32)), dim=-1).to(self.device)

    def encode(self, texts: list[str]) -> Tensor:
        """``[T, D]`` unit text embeddings."""
        emb = self.text_encoder.encode_text(texts).float().to(self.device)  # type: ignore[attr-defined]
        return F.normalize(emb, dim=-1)

    def relevancy(self, query: str) -> np.ndarray:
        """``[P]`` LERF relevancy of ``query`` in [0, 1] (0.5: no more the query than the closest negative)."""
        if not query.strip():
            raise UsageError("empty query: type a few words, e.g. 'mug'")
        if self.features is None:
            raise UsageError("this export has no CLIP features: press 'compute features' to answer queries")
        cos = self.features @ torch.cat([self.encode([query]), self.negatives]).T  # unit features: [P, 1 + K]
        return relevancy_from_cosines(cos[:, :1], cos[:, 1:]).cpu().numpy()

    def colours(self, mode: str, relevancy: np.ndarray | None = None) -> np.ndarray:
        """``[P, 3]`` uint8 colours for ``mode`` (one of :data:`COLOUR_MODES`)."""
        if mode == "rgb":
            return self.cloud.rgb
        if mode == "label":
            palette = (label_palette(max(1, len(self.cloud.classes))) * 255).round().astype(np.uint8)
            return palette[np.clip(self.cloud.label, 0, len(palette) - 1)]
        if mode == "relevancy":
            if relevancy is None:
                raise UsageError("relevancy colours need a query")
            heat = (colorize(relevancy, 0.5, 1.0) * 255).round().astype(np.uint8)
            dim = (self.cloud.rgb.astype(np.float32) * 0.35).astype(np.uint8)
            return np.where((relevancy > 0.5)[:, None], heat, dim)
        raise UsageError(f"unknown colour mode {mode!r}; one of {', '.join(COLOUR_MODES)}")

    def visible(self, hidden: set[str]) -> np.ndarray:
        """``[P]`` bool: points whose class is not in ``hidden``."""
        if not hidden:
            return np.ones(len(self.cloud), dtype=bool)
        ids = [i for i, c in enumerate(self.cloud.classes) if c in hidden]
        return ~np.isin(self.cloud.label, ids)


def load_queries(run: Path, max_points: int, device_name: str = "cpu", log=print):  # noqa: ANN001
    """The run's cloud (``RUN/export/points.npz`` if it has features, else extracted now) with unit CLIP
    features, at most ``max_points`` of them (a random subset), and the trainer and distiller to render."""
    from ovseg3d.export import ExportOptions, extract_cloud, load_export
    from ovseg3d.lift import load_semantics
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.teachers.extract import text_encoder
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, device_name)
    distiller = load_semantics(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    if distiller is None:
        raise UsageError(f"{run} has no semantic field (trained with --teacher none): nothing to query")
    npz = run / "export" / "points.npz"
    cloud = load_export(npz) if npz.exists() else None
    if cloud is None:  # nothing to show yet: the cloud has to be made first, with the features for queries
        n = len(trainer.scene.train_ids)
        log(
            f"{run} has no export yet: extracting its cloud with features now ({n} views rendered; ovseg3d export "
            "--features keeps it for next time)"
        )
        cloud = extract_cloud(run, ExportOptions(features=True), device_name, log)
    elif cloud.feature is None:
        log(
            f"{npz} has no CLIP features: the cloud is shown as it is; 'compute features' in the panel makes them "
            f"({len(trainer.scene.train_ids)} views rendered) for free-text queries"
        )
    queries = CloudQueries(
        limit_points(cloud, max_points), None, text_encoder(trainer.cfg.teachers, trainer.device), trainer.device
    )
    if cloud.feature is not None:
        queries.set_features(queries.cloud)
    return queries, trainer, distiller


def limit_points(cloud: LabelledCloud, max_points: int) -> LabelledCloud:
    """At most ``max_points`` of ``cloud``: a random subset (the same one each time), in order."""
    if len(cloud) <= max_points:
        return cloud
    keep = np.sort(np.random.default_rng(0).choice(len(cloud), max_points, replace=False))
    return cloud.subset(keep)


def relevant_text(query: str, relevancy: np.ndarray) -> str:
    """What a query's colours show, in words that mean what they say: how many points rate the query above every
    canonical negative (LERF's relevancy over 0.5), and where the most relevant hundredth of them starts."""
    if len(relevancy) == 0:
        return f"'{query}': no points"
    above = int((relevancy > 0.5).sum())
    top = float(np.quantile(relevancy, 0.99))
    return (
        f"'{query}': {above} of {len(relevancy)} points rate it above every negative (relevancy > 0.5); "
        f"the top 1 % from {top:.2f}"
    )


def frustum_scale(c2w: np.ndarray, diag: float) -> float:
    """The size to draw camera frustums at: a third of the median distance between neighbouring cameras (so they
    do not cover each other or the scene), at most 1.5 % of the scene box's diagonal."""
    pos = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    cap = 0.015 * diag
    if len(pos) < 2:
        return cap
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    gap = float(np.median(d.min(axis=1)))
    return min(cap, gap / 3.0) if gap > 0 else cap


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.x.x.x, ::1, localhost): nobody else can reach the viewer."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, port: int) -> None:
    """Fail in one line, before any work, if the viewer could not listen on ``host:port``: a port outside
    1-65535 (0: any free port), a host that is not an interface of this machine, or a port in use (viser itself
    would silently take the next free port, or hang on a bad one)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 1 and 65535 (0: any free port)")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise UsageError(
                        f"--port {port}: already in use on {host} (another ovseg3d view?): choose another "
                        "--port, or --port 0 for any free one"
                    ) from None
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise UsageError(
                        f"--port {port}: not allowed on {host} ({exc.strerror}): use a port >= 1024"
                    ) from None
                raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def box_orientation(box: dict) -> tuple[float, float, float, float]:
    """``wxyz`` of a detections box: its ``rotation`` (world-from-object, as ``ovseg3d detect`` writes it,
    right for any up direction) or else its ``yaw`` about +z."""
    if "rotation" in box:
        return tuple(float(v) for v in matrix_to_quaternion(np.asarray(box["rotation"], np.float64)))  # type: ignore[return-value]
    half_yaw = 0.5 * float(box.get("yaw", 0.0))
    return (math.cos(half_yaw), 0.0, 0.0, math.sin(half_yaw))


def quaternion_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation -> ``wxyz`` (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = 2.0 * math.sqrt(1.0 + t)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q) * (1.0 if q[0] >= 0 else -1.0)


def browser_camera(wxyz: np.ndarray, position: np.ndarray, fov_y: float, aspect: float, height: int) -> Cameras:
    """One :class:`Cameras` from a viser camera (OpenCV axes, world-from-camera ``wxyz``, vertical ``fov_y`` in
    radians) rendering ``height`` rows."""
    c2w_cv = np.concatenate([quaternion_to_matrix(wxyz), np.asarray(position, dtype=np.float64)[:, None]], 1)
    width = max(1, int(round(height * aspect)))
    f = 0.5 * height / math.tan(0.5 * fov_y)

    def t(x: float) -> Tensor:
        return torch.tensor([x], dtype=torch.float32)

    c2w = torch.from_numpy(opencv_to_opengl(c2w_cv)).float()[None]
    return Cameras(c2w, t(f), t(f), t(width / 2), t(height / 2), width, height)


@dataclass
class StartView:
    """Where the browser's camera starts: ``position``, ``look_at``, ``up`` (world), ``fov`` (vertical, radians)."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float


def start_view(
    xyz: np.ndarray,
    c2w: np.ndarray,
    fy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    size: tuple[int, int],
    sample: int = 4096,
) -> StartView:
    """The training camera (``[N, 3, 4]`` OpenGL c2w, focal ``fy`` and principal point ``[N]``, images of
    ``size`` (width, height)) whose frame holds the most of the cloud ``xyz`` (a sample of ``sample`` points), as nerfstudio's viewer starts from a training
    camera: it stands where a photo was taken, inside a room rather than in the middle of its objects or behind
    a wall, and frames what was photographed. It looks at the median depth of the points it sees, with a field
    of view 10 % wider than the photo's; up is the cameras' (their level right vectors)."""
    from ovseg3d.data.loader import camera_up

    pts = np.asarray(xyz, np.float64)
    if len(pts) > sample:
        pts = pts[np.random.default_rng(0).choice(len(pts), sample, replace=False)]
    rot, centre = c2w[:, :, :3], c2w[:, :, 3]
    local = np.einsum("nji,npj->npi", rot, pts[None] - centre[:, None])  # camera frame: x right, y up, -z ahead
    depth = -local[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = fy[:, None] * local[..., 0] / depth + cx[:, None]
        v = -fy[:, None] * local[..., 1] / depth + cy[:, None]
    inside = (depth > 0) & (u >= 0) & (u < size[0]) & (v >= 0) & (v < size[1])
    best = int(np.argmax(inside.sum(1)))
    seen = depth[best][inside[best]]
    ahead = float(np.median(seen)) if len(seen) else float(np.linalg.norm(pts.mean(0) - centre[best])) or 1.0
    forward = -rot[best][:, 2]
    fov = 1.1 * 2.0 * math.atan(0.5 * size[1] / float(fy[best]))
    return StartView(centre[best].copy(), centre[best] + ahead * forward, camera_up(c2w), fov)


def point_size(cloud: LabelledCloud, sample: int = 2000) -> float:
    """The points' size in the browser (world units): the median distance from a point to its nearest
    neighbour (over ``sample`` points drawn at random), so that the points of a surface just touch. The
    voxel-count spacing (:func:`~ovseg3d.detect.head.point_spacing`) read 3x the neighbour distance on the
    orbit room's ring-shaped floor, and drew it as overlapping blobs (seen in Chromium)."""
    if len(cloud) < 2:
        return max(cloud.voxel_size, 1e-4)
    xyz = torch.from_numpy(np.ascontiguousarray(cloud.xyz, dtype=np.float32))
    pick = torch.randperm(len(xyz), generator=torch.Generator().manual_seed(0))[:sample]
    nearest = torch.cat(
        [torch.cdist(xyz[pick[s : s + 256]], xyz).topk(2, largest=False).values[:, 1] for s in range(0, len(pick), 256)]
    )
    return max(float(nearest.median()), 1e-4)


def size_slider(size: float) -> tuple[float, float, float]:
    """``(min, max, step)`` of the point-size slider around the size the cloud opens with (:func:`point_size`):
    from a hundredth of its order of magnitude to five times it, in the cloud's own units (a COLMAP scene's
    unit can be anything)."""
    step = 10.0 ** math.floor(math.log10(size)) / 10
    return step, math.ceil(5 * size / step) * step, step


class Viewer:
    """The viser server. ``set_query`` / ``set_mode`` / ``set_hidden`` are what the panel calls; ``run``: where
    to look for ``detections.json`` (boxes drawn with their class names)."""

    def __init__(
        self,
        queries: CloudQueries,
        trainer,  # noqa: ANN001
        distiller,  # noqa: ANN001
        host: str,
        port: int,
        point_size: float,
        run: Path | None = None,
        max_points: int = 200_000,
    ):
        import viser

        self.q, self.trainer, self.distiller = queries, trainer, distiller
        self.run, self.max_points = run, max_points
        self.mode = "label" if queries.cloud.classes else "rgb"
        self.query, self.rel, self.hidden = "", None, set()
        self.last_query_ms = 0.0
        check_listen(host, port)  # viser hangs on a port outside 0-65535 or a host it cannot bind
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        if port and self.server.get_port() != port:  # taken since check_listen: viser moved to the next port
            self.server.stop()
            raise UsageError(f"--port {port}: already in use on {host}: choose another --port, or --port 0 for any")
        scene, gui = self.server.scene, self.server.gui
        self.points = scene.add_point_cloud(
            "/points", queries.cloud.xyz, self.q.colours(self.mode), point_size=point_size, point_shape="rounded"
        )
        self.mode_box = gui.add_dropdown("colour by", COLOUR_MODES, initial_value=self.mode)
        self.query_box = gui.add_text("query", "", hint="free text, e.g. 'mug' or 'something to read'")
        self.status = gui.add_markdown(f"{len(queries.cloud)} points")
        self.features_button = self.features_progress = None
        if queries.features is None and run is not None:
            n = len(trainer.scene.train_ids)
            self.features_button = gui.add_button(
                "compute features",
                hint=f"for free-text queries: renders the {n} training views again and writes RUN/export with features",
            )
            self.features_progress = gui.add_progress_bar(0.0, visible=False, animated=True)
        self.size = gui.add_slider("point size", *size_slider(point_size), point_size)
        self.show_cameras = gui.add_checkbox("training cameras", True)
        with gui.add_folder("classes"):
            self.legend = gui.add_html(self._legend_html())  # colour, name and points of each class, once
            with gui.add_folder("hide classes", expand_by_default=False):
                self.toggles = {c: gui.add_checkbox(c, True) for c in queries.cloud.classes}
        with gui.add_folder("render this view"):
            self.render_kind = gui.add_dropdown("image", ("rgb", "segmentation", "relevancy"), initial_value="rgb")
            self.render_rows = gui.add_slider("rows", 60, 480, 20, 120)
            self.render_button = gui.add_button("render")
            self.clear_button = gui.add_button("clear")
        self._add_cameras()
        self._place_camera()
        self.boxes = self._add_boxes(run / DETECTIONS) if run is not None else []
        self.mode_box.on_update(lambda _: self.set_mode(self.mode_box.value))
        self.query_box.on_update(lambda _: self.set_query(self.query_box.value))
        self.size.on_update(lambda _: setattr(self.points, "point_size", float(self.size.value)))
        for name, box in self.toggles.items():
            box.on_update(lambda _, n=name, b=box: self.set_hidden(n, not b.value))
        self.render_button.on_click(lambda event: self._render_for(event.client))
        self.show_cameras.on_update(lambda _: self._set_cameras_visible(bool(self.show_cameras.value)))
        if self.features_button is not None:
            self.features_button.on_click(lambda _: self.compute_features())
        self.clear_button.on_click(lambda event: event.client.scene.set_background_image(None))

    # -- what the panel does ---------------------------------------------------------------------------
    def compute_features(self) -> None:
        """Export the run's cloud again with CLIP features (``RUN/export``), with the options it was made with
        (its ``points.json``: the same views, strides and filters, so the same cloud), show it and answer queries
        on it."""
        from ovseg3d.export import extract_cloud, recorded_options, write_export

        if self.run is None or self.features_button is None or self.features_progress is None:
            return
        self.features_button.disabled = True
        self.features_progress.visible = True
        self.status.content = "computing the features (rendering the training views)..."
        try:
            opts = replace(recorded_options(self.run / "export"), features=True)
            cloud = extract_cloud(self.run, opts, str(self.trainer.device), log=lambda _: None)
            write_export(cloud, self.run / "export", self.run, opts)
        except (ValueError, OSError) as exc:
            self.status.content = f"features not computed: {exc}"
            self.features_button.disabled = False
            return
        finally:
            self.features_progress.visible = False
        self.q.set_features(limit_points(cloud, self.max_points))
        self.features_button.visible = False
        self.legend.content = self._legend_html()
        self._refresh()

    def _set_cameras_visible(self, visible: bool) -> None:
        for frustum in self.frustums:
            frustum.visible = visible

    def set_query(self, text: str) -> None:
        if not text.strip():
            self.query, self.rel = "", None
            self.set_mode("label" if self.q.cloud.classes else "rgb")
            return
        if self.q.features is None:
            self.status.content = "no features in this export yet: press 'compute features' to ask queries"
            return
        start = time.perf_counter()
        self.rel = self.q.relevancy(text)
        self.query = text
        self.last_query_ms = 1000 * (time.perf_counter() - start)
        self.set_mode("relevancy")

    def set_mode(self, mode: str) -> None:
        if mode == "relevancy" and self.rel is None:
            self.status.content = "type a query to colour by relevancy"
            mode = "label" if self.q.cloud.classes else "rgb"
        self.mode = mode
        if self.mode_box.value != mode:
            self.mode_box.value = mode
        self._refresh()

    def set_hidden(self, name: str, hidden: bool) -> None:
        (self.hidden.add if hidden else self.hidden.discard)(name)
        self._refresh()

    def _refresh(self) -> None:
        keep = self.q.visible(self.hidden)
        colours = self.q.colours(self.mode, self.rel)
        with self.server.atomic():
            self.points.points = self.q.cloud.xyz[keep]
            self.points.colors = colours[keep]
        text = f"{int(keep.sum())} of {len(keep)} points shown"
        if self.mode == "relevancy" and self.rel is not None:
            text += f"; {relevant_text(self.query, self.rel[keep])} ({self.last_query_ms:.0f} ms)"
        self.status.content = text

    # -- rendering from the browser's camera ------------------------------------------------------------
    def render_image(self, camera: Cameras, kind: str) -> np.ndarray:
        """``[H, W, 3]`` float image of ``kind`` (rgb | segmentation | relevancy) from ``camera``."""
        from ovseg3d.renders import overlay
        from ovseg3d.teachers.relevancy import query_relevancy

        out = self.trainer.render_view(camera, 0)
        rgb = out.rgb.clamp(0, 1).cpu().numpy()
        if kind == "rgb":
            return rgb
        feats = self.distiller.render_semantics(camera, 0)
        if kind == "segmentation":
            text = F.normalize(self.distiller.space.text, dim=-1)
            labels = (feats @ text.T).argmax(-1).cpu().numpy()
            palette = label_palette(max(1, len(self.q.cloud.classes)))
            return 0.3 * rgb + 0.7 * palette[labels]
        if kind == "relevancy":
            if not self.query:
                raise UsageError("type a query first")
            emb = self.q.encode([self.query])[0]
            rel = query_relevancy(feats, emb.to(feats.device), self.q.negatives.to(feats.device)).cpu().numpy()
            return overlay(rgb, rel)
        raise UsageError(f"unknown image kind {kind!r}")

    def _render_for(self, client) -> None:  # noqa: ANN001
        cam = client.camera
        camera = browser_camera(cam.wxyz, cam.position, cam.fov, cam.aspect, int(self.render_rows.value))
        try:
            image = self.render_image(camera, str(self.render_kind.value))
        except ValueError as exc:
            client.add_notification("ovseg3d", str(exc))
            return
        client.scene.set_background_image((np.clip(image, 0, 1) * 255).astype(np.uint8), format="jpeg")

    def _add_cameras(self) -> None:
        scene = self.trainer.scene
        cams = scene.cameras
        fov = 2.0 * math.atan(0.5 * cams.height / float(cams.fy[0]))
        scale = frustum_scale(cams.c2w[scene.train_ids].double().numpy(), self.trainer.diag)
        self.frustums = []
        for i in scene.train_ids:
            c2w_cv = opencv_to_opengl(cams.c2w[i].double().numpy())  # the flip is its own inverse
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i:03d}",
                fov=fov,
                aspect=cams.width / cams.height,
                scale=scale,
                wxyz=matrix_to_quaternion(c2w_cv[:, :3]),
                position=c2w_cv[:, 3],
                color=(120, 120, 120),
                thickness=1.0,
                thickness_units="screen",
            )
            self.frustums.append(frustum)

    def _place_camera(self) -> None:
        """The first view is a training camera's, the one that sees the most of the cloud (:func:`start_view`);
        up is the cameras' (:func:`~ovseg3d.data.loader.camera_up`)."""
        scene = self.trainer.scene
        ids = scene.train_ids
        cams = scene.cameras
        view = start_view(
            self.q.cloud.xyz,
            cams.c2w[ids].double().numpy(),
            cams.fy[ids].double().numpy(),
            cams.cx[ids].double().numpy(),
            cams.cy[ids].double().numpy(),
            (cams.width, cams.height),
        )
        self.server.scene.set_up_direction(tuple(view.up))
        cam = self.server.initial_camera
        cam.position, cam.look_at, cam.up, cam.fov = tuple(view.position), tuple(view.look_at), tuple(view.up), view.fov

    def _add_boxes(self, path: Path) -> list[dict]:
        """Draw the oriented boxes of ``RUN/detections.json`` (if it exists) with their class names."""
        boxes = read_detections(path)
        classes = self.q.cloud.classes
        palette = (label_palette(max(1, len(classes))) * 255).round().astype(int)
        for i, box in enumerate(boxes):
            colour = tuple(palette[classes.index(box["class"])]) if box["class"] in classes else (255, 255, 255)
            wxyz = box_orientation(box)
            self.server.scene.add_box(
                f"/boxes/{i:03d}", colour, tuple(box["size"]), wireframe=True, wxyz=wxyz, position=tuple(box["center"])
            )
            score = f" {box['score']:.2f}" if "score" in box else ""
            self.server.scene.add_label(f"/boxes/{i:03d}/name", f"{box['class']}{score}")
        return boxes

    def _legend_html(self) -> str:
        rows = []
        palette = (label_palette(max(1, len(self.q.cloud.classes))) * 255).round().astype(int)
        counts = np.bincount(np.clip(self.q.cloud.label, 0, None), minlength=len(self.q.cloud.classes))
        for name, colour, n in zip(self.q.cloud.classes, palette, counts):
            swatch = f"background:rgb({colour[0]},{colour[1]},{colour[2]});width:12px;height:12px;display:inline-block"
            rows.append(f"<div><span style='{swatch}'></span> {name} ({n})</div>")
        return "<div style='font-size:0.85em'>" + "".join(rows) + "</div>"

    def stop(self) -> None:
        self.server.stop()
