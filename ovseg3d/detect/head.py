"""The detection head: a labelled point cloud -> oriented, upright 3D boxes with class names, scores and poses.

1. Gravity: up from the normals of flat surfaces (or given), the cloud turned so that up is +z.
2. Instances: connected components of each label's points (stuff such as floor and walls excluded), nearby
   pieces of one class joined where the joined box is nearer the class's prior size; without labels,
   components of what stands above the support plane.
3. Boxes: DBSCAN-like clean-up, the upright box of least footprint; objects with a front (from their height
   profile: a mug's handle is below its rim) are turned to face it.
4. Classes: per instance, the mean of the available cues over the vocabulary plus a background slot: the
   distilled class probabilities, the distilled CLIP feature against the class texts, CLIP on contour-aware
   depth maps of the instance (OpenDlign) and CLIP on rgb renders of it from the run's radiance field.
   Background wins -> dropped. The size prior filters and re-scores, at the scene's scale (metres per scene
   unit: given, or estimated from the sizes of its objects, see :mod:`ovseg3d.detect.scale`).
5. Duplicates of one class overlapping by IoU > 0.25 keep the best score.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovseg3d.atomic import write_json
from ovseg3d.detect.boxes import Box, complete_round, face, fit_upright_box, front_yaw
from ovseg3d.detect.gravity import NoFlatSurface, estimate_up, gravity_rotation
from ovseg3d.detect.instances import (
    clean_instance,
    connected_components,
    join_stacked,
    label_instances,
    merge_pieces,
)
from ovseg3d.detect.metrics import box_iou, rot_z
from ovseg3d.detect.priors import SizePriors
from ovseg3d.detect.scale import SceneScale, estimate_scale
from ovseg3d.errors import UsageError
from ovseg3d.export import LabelledCloud

DETECTIONS_FORMAT = 1
BACKGROUND_PROMPTS = ("background", "unknown", "other")
SUPPORT_CLASSES = ("floor", "ground", "carpet", "rug")
"""Labels of the surface objects stand on: gravity levels it and boxes are grown down to it."""


@dataclass
class DetectOptions:
    """How ``ovseg3d detect`` finds and names objects."""

    classes: list[str] = field(default_factory=list)
    """Vocabulary to name boxes with (default: the cloud's classes, less stuff such as floor and walls).
    Names outside the cloud's classes need the distilled features or a CLIP image encoder."""
    up: tuple[float, float, float] | None = None
    """World up direction (default: estimated from flat surfaces, near the cameras' up for a run)."""
    eps: float = 0.0
    """Voxel edge that links points into one instance, in the cloud's units like its point spacing, not
    metres (0: 3 x the cloud's point spacing)."""
    min_points: int = 30
    """Smallest instance, in points."""
    rest_on_support: bool = True
    """A box whose bottom is less than its own height (or half its smaller width) above the support (the height
    where most points labelled floor lie, or most points when none is) is grown down to it: objects stand on it,
    and a fused cloud seldom keeps an object's bottom centimetres, which cameras see at a grazing angle or label
    floor, nor a flat object's sides."""
    complete_round: bool = True
    """Complete a round object (a class whose size-prior table says ``sphere`` or ``cylinder``) from its visible
    shell: a sphere or circle as wide as the box, its centre fitted to the shell, so that a half-seen ball or vase
    gets the whole object's box (the amodal box)."""
    join_pieces: bool = True
    """Join pieces of one class whose bounding boxes overlap or lie within --eps of each other when the
    joined box is nearer the class's prior size than either (a chair seen from the front can fall apart into
    its seat edge and its backrest)."""
    min_score: float = 0.05
    """Boxes scoring less are dropped."""
    size_prior: bool = True
    """Filter and re-score boxes by the per-class mean-size table (ImOV3D)."""
    scale: float = 0.0
    """Metres per scene unit (scenes posed by COLMAP are in arbitrary units); the size prior sees sizes times
    this. 0: estimated from the objects' sizes against the size prior (1 when no object's class has one). Boxes
    are written in scene units either way."""
    priors: list[Path] = field(default_factory=list)
    """Extra size-prior tables (JSON, the layout of ovseg3d/detect/size_priors.json) over the shipped one."""
    depth_classifier: bool = True
    """CLIP on contour-aware depth maps of each instance (OpenDlign), when a CLIP image encoder is at hand."""
    render_classifier: bool = True
    """CLIP on rgb renders of each instance from the run's radiance field, when the cloud comes from a run and a
    CLIP image encoder is at hand."""
    nms_iou: float = 0.25
    """Boxes of one class overlapping more than this keep only the best."""
    background: list[str] = field(default_factory=lambda: list(BACKGROUND_PROMPTS))
    """Prompts that stand for "not an object" (ImOV3D); with the scene's stuff classes they reject instances
    that the features or the depth maps match better than any class."""
    front_threshold: float = 0.1
    """A class the size table does not know has a front when the top of one end is lower than the other's by
    this fraction of its height (else it is reported symmetric)."""


@dataclass
class Detection:
    """One box in the world frame: ``center``, ``size`` (L, W, H; L along the front for objects with one),
    ``yaw`` about ``up``, ``rotation`` world-from-object."""

    name: str
    score: float
    center: np.ndarray
    size: np.ndarray
    yaw: float
    rotation: np.ndarray
    n_points: int
    symmetric: bool
    asymmetry: float
    cues: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.name,
            "score": round(self.score, 5),
            "center": [round(float(v), 6) for v in self.center],
            "size": [round(float(v), 6) for v in self.size],
            "yaw": round(self.yaw, 6),
            "rotation": [[round(float(v), 6) for v in row] for row in self.rotation],
            "n_points": self.n_points,
            "symmetric": self.symmetric,
            "asymmetry": round(self.asymmetry, 4),
            "cues": {k: round(v, 4) for k, v in self.cues.items()},
        }


GRAVITY_SOURCES = ("given", "plane", "cameras' up")
"""Where up came from: ``--up``; the flat surfaces (the plane of the largest one facing their mode, or of the
floor's points); the cameras alone, when the cloud has no level plane near their up."""


@dataclass
class Gravity:
    """Where a scene's up came from (one of :data:`GRAVITY_SOURCES`), for ``detections.json``."""

    source: str
    cameras_deg: float | None = None
    """The angle between the plane's up and the cameras' up, in degrees (a plane found in a run's cloud)."""
    reason: str = ""
    """Why the cameras' up was taken (no flat surface, or none near it)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.cameras_deg is not None:
            out["cameras_up_deg"] = round(self.cameras_deg, 3)
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class DetectResult:
    detections: list[Detection]
    up: np.ndarray
    vocabulary: list[str]
    rejected: dict[str, int]
    seconds: dict[str, float]
    scale: SceneScale = field(default_factory=lambda: SceneScale(1.0, "default"))
    gravity: Gravity = field(default_factory=lambda: Gravity("given"))


def scene_up(
    xyz: np.ndarray,
    cell: float,
    given: tuple[float, float, float] | None = None,
    hint: np.ndarray | None = None,
    ground: np.ndarray | None = None,
    level: np.ndarray | None = None,
    log=print,  # noqa: ANN001
) -> tuple[np.ndarray, Gravity]:
    """The unit up of a scene and where it came from: ``given`` (``--up``); else the flat surfaces'
    (:func:`~ovseg3d.detect.gravity.estimate_up` on voxels of edge ``cell``, near the cameras' up ``hint``);
    else, when the cloud has no flat surface near ``hint``, ``hint`` itself (one line says so). Without a
    ``hint`` no flat surface is a one-line error asking for ``--up``."""
    if given is not None:
        return np.asarray(given, np.float64) / np.linalg.norm(given), Gravity("given")
    try:
        up = estimate_up(xyz, cell, hint=hint, ground=ground, log=log, level=level)
    except NoFlatSurface as exc:
        if hint is None:
            raise
        log(f"{exc.reason}: gravity is the cameras' up (--up X Y Z to give it)")
        return np.asarray(hint, np.float64) / np.linalg.norm(hint), Gravity("cameras' up", reason=exc.reason)
    if hint is None:
        return up, Gravity("plane")
    cos = float(up @ hint) / float(np.linalg.norm(hint))
    return up, Gravity("plane", cameras_deg=math.degrees(math.acos(min(1.0, max(-1.0, cos)))))


def point_spacing(xyz: np.ndarray, per_cell: float = 16.0) -> float:
    """Typical distance between neighbouring surface points: the voxel edge at which occupied voxels hold
    ``per_cell`` points on average, divided by its square root (points on a surface fill a voxel in 2D)."""
    extent = float(np.ptp(xyz, axis=0).max()) or 1.0
    cell = extent / 64
    for _ in range(4):
        _, counts = np.unique(np.floor(xyz / cell).astype(np.int64), axis=0, return_counts=True)
        cell *= math.sqrt(per_cell / max(float(counts.mean()), 1e-9))
    return cell / math.sqrt(per_cell)


class InstanceClassifier:
    """Class probabilities of an instance over ``vocabulary`` + one background slot, from each cue at hand."""

    def __init__(
        self,
        cloud: LabelledCloud,
        vocabulary: list[str],
        priors: SizePriors,
        background: list[str],
        text=None,  # noqa: ANN001
        depth=None,  # noqa: ANN001
        render=None,  # noqa: ANN001
    ):
        self.cloud, self.vocabulary, self.depth, self.render = cloud, vocabulary, depth, render
        stuff = [c for c in cloud.classes if priors.is_stuff(c) and c not in vocabulary]
        self.prompts = list(background)
        self.background = [*stuff, *self.prompts]
        self.class_index = {c: i for i, c in enumerate(cloud.classes)}
        # the labels speak for the vocabulary only when every name is one of the cloud's classes
        self.use_labels = all(c in self.class_index for c in vocabulary)
        self.texts = None
        self.seconds: dict[str, float] = {}  # each cue's seconds over the instances (its renders, CLIP)
        if text is not None and cloud.feature is not None:
            # on the host: the cues are numpy (the text encoder may run on a GPU)
            self.texts = F.normalize(text.encode_text(vocabulary + self.background).float(), dim=-1).cpu()

    def _with_background(self, p: np.ndarray) -> np.ndarray:
        """Probabilities over vocabulary + background prompts -> over vocabulary + one background slot."""
        k = len(self.vocabulary)
        return np.append(p[:k], p[k:].sum())

    def cues(self, idx: np.ndarray, xyz_up: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.use_labels and (self.cloud.label[idx] >= 0).any():
            mean = self.cloud.probs[idx].astype(np.float64).mean(0)
            p = np.array([mean[self.class_index[c]] for c in self.vocabulary])
            out["label"] = np.append(p, max(0.0, 1.0 - p.sum()))
        if self.texts is not None:
            feat = F.normalize(torch.from_numpy(self.cloud.feature[idx].astype(np.float32)), dim=-1).mean(0)
            logits = 100.0 * F.normalize(feat, dim=0) @ self.texts.T
            out["feature"] = self._with_background(torch.softmax(logits, 0).numpy().astype(np.float64))
        if self.depth is not None:
            start = time.perf_counter()
            probs = self.depth.classify(torch.from_numpy(xyz_up[idx]).float(), self.vocabulary + self.prompts)
            out["depth"] = self._with_background(probs.detach().cpu().numpy().astype(np.float64))
            self._clock("depth-map cue", start)
        if self.render is not None:  # renders are made in the field's (world) frame
            start = time.perf_counter()
            probs = self.render.classify(torch.from_numpy(self.cloud.xyz[idx]).float(), self.vocabulary + self.prompts)
            out["render"] = self._with_background(probs.detach().cpu().numpy().astype(np.float64))
            self._clock("render cue", start)
        return out

    def _clock(self, cue: str, start: float) -> None:
        self.seconds[cue] = self.seconds.get(cue, 0.0) + time.perf_counter() - start


def usable_cloud(cloud: LabelledCloud, name: str = "the point cloud", log=print) -> LabelledCloud:  # noqa: ANN001
    """``cloud`` without its points whose coordinates are NaN or infinite (one line says how many went);
    a :class:`UsageError` naming ``name`` when no point is left, or none was there."""
    if len(cloud) == 0:
        raise UsageError(f"{name}: empty, no points to detect in; export or write it again")
    finite = np.isfinite(cloud.xyz).all(1)
    if finite.all():
        return cloud
    if not finite.any():
        raise UsageError(f"{name}: no point has finite coordinates (all NaN or infinite); export or write it again")
    log(f"warning: {name}: left out {int((~finite).sum())} of {len(cloud)} points with NaN or infinite coordinates")
    return cloud.subset(finite)


Pieces = list[tuple[str, list[np.ndarray]]]
"""Per object class of a labelled cloud: its name and the point indices of its label's connected pieces."""


def _label_pieces(cloud: LabelledCloud, xyz_up: np.ndarray, priors: SizePriors, eps: float) -> Pieces:
    """The connected pieces (5 points or more) of each object class's label (stuff left out)."""
    return [
        (name, [idx for _, idx in label_instances(xyz_up, cloud.label, [c], eps, 5)])
        for c, name in enumerate(cloud.classes)
        if not priors.is_stuff(name)
    ]


def _joined(
    pieces: Pieces, xyz_up: np.ndarray, priors: SizePriors, scale: float, eps: float, opts: DetectOptions
) -> list[np.ndarray]:
    """Point indices of the labelled cloud's candidate instances: its pieces, those of one class joined where one
    stands over the other (:func:`~ovseg3d.detect.instances.join_stacked`) and where the size prior (sizes times
    ``scale``, metres per scene unit) says so."""
    out = []
    for name, parts in pieces:
        if opts.join_pieces and len(parts) > 1:
            parts = join_stacked(xyz_up, parts)
        if priors.has(name) and opts.size_prior and opts.join_pieces and len(parts) > 1:
            parts = merge_pieces(xyz_up, parts, functools.partial(_prior_score, priors, name, scale), eps)
        out += [p for p in parts if len(p) >= opts.min_points]
    return out


def _unlabelled_proposals(xyz_up: np.ndarray, eps: float, min_points: int) -> list[np.ndarray]:
    """Point indices of what stands clear of the support plane, split into connected pieces."""
    height = xyz_up[:, 2]
    hist, edges = np.histogram(height, bins=200)
    floor = edges[int(np.argmax(hist)) + 1]
    idx = np.flatnonzero(height > floor + 2 * eps)
    comp = connected_components(xyz_up[idx], eps)
    return [idx[comp == k] for k in range(int(comp.max(initial=-1)) + 1) if (comp == k).sum() >= min_points]


def _fitted(xyz_up: np.ndarray, idx: np.ndarray, spacing: float) -> tuple[np.ndarray, Box]:
    """An instance's points after the DBSCAN-like clean-up and their upright box (scene units). An instance
    sparser than the clean-up's scale (a far object that the export fused on a coarser grid) keeps its points."""
    pts = xyz_up[idx]
    kept = clean_instance(pts, 2 * spacing)
    pts = pts[kept] if len(kept) >= 3 else pts
    return pts, fit_upright_box(pts)


def _scale_from_pieces(
    pieces: Pieces, xyz_up: np.ndarray, priors: SizePriors, spacing: float, min_points: int
) -> SceneScale:
    """The scene's scale from the boxes of the labelled pieces of classes with a size prior, before they are
    joined and before the prior is applied (:func:`~ovseg3d.detect.scale.estimate_scale`)."""
    names, sizes = [], []
    for name, parts in pieces:
        if priors.has(name):
            for idx in parts:
                if len(idx) >= min_points:
                    names.append(name)
                    sizes.append(_fitted(xyz_up, idx, spacing)[1].size)
    return estimate_scale(priors, names, sizes)


def support_height(height: np.ndarray, bin_size: float) -> float:
    """The height where most points lie (histogram mode, bins of ``bin_size``): the floor or a table top."""
    edges = np.arange(height.min(), height.max() + 2 * bin_size, bin_size)
    hist, _ = np.histogram(height, bins=edges)
    k = int(np.argmax(hist))
    return float((edges[k] + edges[k + 1]) / 2)


def rest_on(box: Box, support: float) -> Box:
    """``box`` grown down to the ``support`` height when its bottom is above it by less than its height or half
    its smaller width (a book lying flat, of which the cloud holds only the top: its gap to the floor is its
    thickness, more than the height of the top's box)."""
    bottom, top = box.center[2] - box.size[2] / 2, box.center[2] + box.size[2] / 2
    if not 0.0 < bottom - support < max(top - bottom, 0.5 * min(box.size[0], box.size[1])):
        return box
    center, size = box.center.copy(), box.size.copy()
    center[2], size[2] = (support + top) / 2, top - support
    return Box(center, size, box.yaw)


def _prior_score(priors: SizePriors, name: str, scale: float, xyz: np.ndarray) -> float:
    return priors.factor(name, fit_upright_box(xyz).size * scale) if len(xyz) >= 3 else 0.0


@dataclass
class Candidate:
    """An instance named by the cues, before the size prior: its point indices, its cleaned points (gravity
    frame), its box (scene units), its class, the cues' combined probability and each cue's for that class."""

    idx: np.ndarray
    pts: np.ndarray
    box: Box
    name: str
    prob: float
    cues: dict[str, float]


def name_instances(
    proposals: list[np.ndarray],
    classifier: InstanceClassifier,
    xyz_up: np.ndarray,
    spacing: float,
    rejected: dict[str, int],
) -> list[Candidate]:
    """The proposals that the cues name as one of the vocabulary (background counted in ``rejected``), boxed."""
    out = []
    vocabulary = classifier.vocabulary
    for idx in proposals:
        cues = classifier.cues(idx, xyz_up)
        if not cues:
            continue
        combined = np.mean(list(cues.values()), axis=0)
        k = int(np.argmax(combined))
        if k == len(vocabulary):
            rejected["background"] += 1
            continue
        pts, box = _fitted(xyz_up, idx, spacing)
        per_cue = {c: float(p[k]) for c, p in cues.items()}
        out.append(Candidate(idx, pts, box, vocabulary[k], float(combined[k]), per_cue))
    return out


def detect(
    cloud: LabelledCloud,
    opts: DetectOptions,
    text=None,  # noqa: ANN001
    depth=None,  # noqa: ANN001
    up_hint: np.ndarray | None = None,
    log=print,  # noqa: ANN001
    render=None,  # noqa: ANN001
    level: np.ndarray | None = None,
) -> DetectResult:
    """Boxes for ``cloud``. ``text``: the teacher's text encoder (for the distilled features); ``depth``: a
    :class:`~ovseg3d.detect.depthmaps.DepthMapClassifier`; ``up_hint``: e.g. the cameras' mean up; ``render``:
    a :class:`~ovseg3d.detect.rgbviews.RenderClassifier` of the run the cloud comes from; ``level``: the
    cameras' right vectors (``[N, 3]``), nearly level in photos taken upright (see
    :func:`~ovseg3d.detect.gravity.estimate_up`)."""
    cloud = usable_cloud(cloud, log=log)
    if not (math.isfinite(opts.scale) and opts.scale >= 0):
        raise UsageError(f"--scale {opts.scale}: metres per scene unit must be positive (or 0 to estimate it)")
    t0 = time.perf_counter()
    priors = SizePriors.load(*opts.priors)
    vocabulary = list(opts.classes) or [c for c in cloud.classes if not priors.is_stuff(c)]
    if not vocabulary:
        raise UsageError("no classes to detect: the cloud has no object classes; give --classes")
    depth = depth if opts.depth_classifier else None
    render = render if opts.render_classifier else None
    has_labels = bool((cloud.label >= 0).any())
    image_cue = depth is not None or render is not None
    open_cue = (text is not None and cloud.feature is not None) or image_cue
    unknown = [c for c in vocabulary if c not in cloud.classes]
    if unknown and not open_cue:
        raise UsageError(
            f"unknown class {unknown[0]!r}: the cloud's classes are {cloud.classes}; other names need the "
            "distilled features (ovseg3d export --features) or a CLIP model for the depth maps (--clip-model)"
        )
    if not has_labels and not image_cue:
        raise UsageError("the cloud has no labels: naming its objects needs a CLIP model (--clip-model NAME|PATH)")

    xyz = cloud.xyz.astype(np.float64)
    spacing = cloud.voxel_size or point_spacing(xyz)
    on_ground = np.isin(cloud.label, [i for i, c in enumerate(cloud.classes) if c.lower() in SUPPORT_CLASSES])
    ground = on_ground if on_ground.sum() >= 30 else None  # enough floor points to level and stand on
    up, gravity = scene_up(xyz, 8 * spacing, opts.up, up_hint, ground, level, log)
    grav = gravity_rotation(up)
    xyz_up = xyz @ grav.T
    t1 = time.perf_counter()

    eps = opts.eps or 3 * spacing
    support = support_height(xyz_up[ground if ground is not None else slice(None), 2], spacing)
    scale = SceneScale(opts.scale, "given") if opts.scale > 0 else None
    if has_labels:
        pieces = _label_pieces(cloud, xyz_up, priors, eps)
        scale = scale or _scale_from_pieces(pieces, xyz_up, priors, spacing, opts.min_points)
        proposals = _joined(pieces, xyz_up, priors, scale.metres_per_unit, eps, opts)
    else:
        proposals = _unlabelled_proposals(xyz_up, eps, opts.min_points)
    t2 = time.perf_counter()

    classifier = InstanceClassifier(cloud, vocabulary, priors, opts.background, text, depth, render)
    rejected = {"background": 0, "size prior": 0, "score": 0, "duplicate": 0}
    named = name_instances(proposals, classifier, xyz_up, spacing, rejected)
    if scale is None:  # no labels: the named instances' sizes, before the prior, say it
        scale = estimate_scale(priors, [c.name for c in named], [c.box.size for c in named])
    found: list[tuple[Detection, Box]] = []
    for cand in named:
        factor = priors.factor(cand.name, cand.box.size * scale.metres_per_unit) if opts.size_prior else 1.0
        if factor == 0.0:
            rejected["size prior"] += 1
            continue
        if cand.prob * factor < opts.min_score:
            rejected["score"] += 1
            continue
        found.append(_posed(cand, factor, priors, opts, support, grav))

    found.sort(key=lambda db: -db[0].score)
    kept: list[tuple[Detection, Box]] = []
    for det, box in found:
        if any(d.name == det.name and box_iou(b, box) > opts.nms_iou for d, b in kept):
            rejected["duplicate"] += 1
            continue
        kept.append((det, box))
    t3 = time.perf_counter()
    # "boxes" holds the cues' seconds, which are also given apart
    seconds = {"gravity": t1 - t0, "instances": t2 - t1, "boxes": t3 - t2, **classifier.seconds, "total": t3 - t0}
    log(
        f"{len(kept)} boxes from {len(proposals)} instances ({len(cloud)} points, up {np.round(up, 3).tolist()}, "
        f"scale {scale.metres_per_unit:.4g} m per scene unit: {scale.describe()})"
        + "".join(f"; {v} dropped as {k}" for k, v in rejected.items() if v)
    )
    return DetectResult([d for d, _ in kept], up, vocabulary, rejected, seconds, scale, gravity)


def _posed(
    cand: Candidate, factor: float, priors: SizePriors, opts: DetectOptions, support: float, grav: np.ndarray
) -> tuple[Detection, Box]:
    """A named instance's detection (world frame) and its box (gravity frame): turned to face its front when it
    has one, grown down to the ``support`` height."""
    box, pts = cand.box, cand.pts
    symmetric = priors.symmetric_of(cand.name)
    asym = 0.0
    if not symmetric:  # the table says it has a front, or does not know: look for one
        yaw, asym = front_yaw(pts)
        symmetric = asym < opts.front_threshold if symmetric is None else False
        if not symmetric:
            box = face(box, yaw, pts)
    shape = priors.shape_of(cand.name)
    if opts.complete_round and shape is not None:
        box = complete_round(box, pts, shape)
    if opts.rest_on_support:
        box = rest_on(box, support)
    det = Detection(
        name=cand.name,
        score=cand.prob * factor,
        center=grav.T @ box.center,
        size=box.size,
        yaw=box.yaw,
        rotation=grav.T @ rot_z(box.yaw),
        n_points=len(cand.idx),
        symmetric=bool(symmetric),
        asymmetry=asym,
        cues=cand.cues | ({"size_prior": factor} if opts.size_prior else {}),
    )
    return det, box


def write_detections(
    path: Path, result: DetectResult, source: str, opts: DetectOptions, viewpoints: dict[int, dict] | None = None
) -> None:
    """``detections.json``: the boxes (``viewpoints``: box index -> ImageNet3D angles from a camera) and how
    they were made."""
    from ovseg3d import __version__

    boxes = [d.to_json() for d in result.detections]
    for i, vp in (viewpoints or {}).items():
        boxes[i]["viewpoint"] = {k: round(float(v), 6) if isinstance(v, float) else v for k, v in vp.items()}

    info = {
        "ovseg3d_version": __version__,
        "detections_format": DETECTIONS_FORMAT,
        "source": source,
        "frame": "world frame and units of the input poses; yaw about 'up', rotation is world-from-object; "
        "gravity: where 'up' came from (given, plane, cameras' up) and the plane's angle to the cameras' up; "
        "scale: metres per unit, as the size prior saw the boxes",
        "up": [round(float(v), 6) for v in result.up],
        "gravity": result.gravity.to_json(),
        **result.scale.to_json(),
        "classes": result.vocabulary,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k != "priors"},
        "rejected": result.rejected,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "boxes": boxes,
    }
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give --output a file name (e.g. {path / 'detections.json'})")
    write_json(path, info)  # whole or not at all: no partial file, no stray temporary one
