"""``ovseg3d prepare``: from a folder of photos or a video to a scene ``ovseg3d train`` reads, through pycolmap's
structure from motion (COLMAP's SIFT, matching, incremental mapping and bundle adjustment, on a CPU).

The steps, each resumable (a killed run continues from the work folder's database):

1. **images**: photos with their EXIF orientation applied, or the sharpest frame (variance of the Laplacian) of
   each of ``--frames`` equal windows of a video (imageio's ffmpeg plugin), downscaled to ``--max-long-side``;
2. **features**: SIFT per image, one camera for all (``--camera-model``, refined in bundle adjustment);
3. **matches**: every pair for up to ``--exhaustive-up-to`` photos; more photos by retrieval
   (:mod:`ovseg3d.retrieval`: each with the ``--retrieval-neighbours`` that look most like it, by a VLAD vector of
   its own SIFT descriptors over a vocabulary learnt from these photos, and its ``--retrieval-window`` next in name
   order); a video's frames each with its ``--overlap`` successors plus a coarse all-pairs grid over the sequence
   that closes loops (COLMAP's own retrieval needs a vocabulary tree file, which is not bundled);
4. **mapping**: first a model from the pairs of near photos (within ``--overlap`` in name order) alone; the pairs
   of far-apart photos whose matches contradict its cameras are dropped (repeated texture, symmetric objects);
   then incremental mapping on what is left, continued from that model; the model with the most registered
   images is kept, and the images it leaves out are named in one line;
5. **frame**: the model turned so that the cameras' up is +z and the sparse points' median is the origin
   (``--no-gravity``: COLMAP's own frame); optional undistortion (``--undistort``; ovseg3d models the lens
   otherwise); ``images_2/4/8``.

OUT is written as ``OUT.partial`` and renamed when whole: it holds ``images/``, ``sparse/0/`` (binary),
``images_2/`` ... , ``database.db``, ``pairs.txt`` (the photos matched, a pair a line) and ``prepare.json`` (what
was registered, the reprojection error, the seconds of each step).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from ovseg3d.atomic import write_json, write_text
from ovseg3d.errors import MissingFileError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MIN_IMAGES = 3
STATE = "prepare_state.json"
PAIRS = "pairs.txt"  # the pairs of photos matched, by name, one a line (kept in the scene)
STEPS = ("images", "features", "matches", "far_pairs", "mapping")
CHAIN_MIN_SHARE = 0.9  # the near pairs' model must place this share of the photos for its cameras to judge others
FAR_PAIR_MAX_PX = 4.0  # a far pair's match agrees with that model within this Sampson distance (COLMAP's own 4 px)
FAR_PAIR_MIN_AGREE = 0.5  # share of a far pair's matches that must agree for the pair to be kept


class PrepareError(UsageError):
    """The photos or video cannot make a scene (too few images, an unreadable video, too few matches,
    nothing registered): one line saying which and what to try."""


@dataclass(frozen=True)
class PrepareConfig:
    """How ``ovseg3d prepare`` makes a scene of photos or a video."""

    frames: int = 150
    """Video: frames kept, the sharpest of each of this many equal stretches of the video's progress (mostly its
    change of view: a camera standing still gives few frames, one moving fast many; and a fifth its time)."""
    max_long_side: int = 1600
    """Images with a longer side are downscaled to this many pixels for SfM and training (0: as they are)."""
    camera_model: Literal["OPENCV", "SIMPLE_RADIAL", "RADIAL", "PINHOLE", "SIMPLE_PINHOLE", "OPENCV_FISHEYE"] = "OPENCV"
    """COLMAP camera model, refined in bundle adjustment (OPENCV: focal lengths, principal point, k1 k2 p1 p2)."""
    single_camera: bool = True
    """One camera for every image (one phone, one zoom); --no-single-camera: one per image."""
    matcher: Literal["auto", "retrieval", "exhaustive", "sequential"] = "auto"
    """auto: every pair for photos up to --exhaustive-up-to, more photos by retrieval, a video sequential with loop
    pairs; retrieval: each photo with its --retrieval-neighbours most alike (a VLAD vector of its own SIFT
    descriptors over a vocabulary learnt from these photos) and its --retrieval-window next in name order."""
    exhaustive_up_to: int = 30
    """With --matcher auto: the most photos matched pair by pair (n^2 / 2 pairs; retrieval saves little below)."""
    retrieval_neighbours: int = 10
    """Retrieval: each photo is matched with this many photos that look most like it."""
    retrieval_window: int = 2
    """Retrieval: and with this many photos that follow it in name order (a camera names photos in capture order)."""
    overlap: int = 10
    """Sequential matching: each image is matched with this many that follow it."""
    loop_pairs: int = 20
    """Sequential matching: also every pair of this many images spread over the sequence (closes loops)."""
    max_features: int = 8192
    """SIFT features per image."""
    sift_first_octave: int | None = None
    """SIFT's first octave: -1 (COLMAP's default) doubles each image before finding features, which finds more of
    them at about 4x the seconds of features and 5x of matching; 0 works on the images as they are. None: 0, then
    -1 from scratch if that found a median under 400 keypoints an image (mip-NeRF 360's bonsai, 292 photos: 174 s
    instead of 1,680, cameras within 0.07 % of the doubled images'; a figurine video's plain frames: 300 keypoints,
    doubled)."""
    gravity: bool = True
    """Turn the model so that the cameras' up is +z and the sparse points' median the origin."""
    undistort: bool = False
    """Write undistorted (pinhole) images and cameras instead of keeping the lens (ovseg3d models OPENCV lenses)."""
    downscales: tuple[int, ...] = (2, 4, 8)
    """Also write images_K/ for each K (the layout train reads pre-resized images from)."""
    threads: int = -1
    """CPU threads for pycolmap's features, matching and undistortion (-1: all)."""
    sift_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where SIFT extraction and matching run: 'auto' on the GPU when the installed pycolmap was built with CUDA
    (pycolmap-cuda12; pycolmap.has_cuda), else on the CPU; 'cuda' insists (one line when it cannot)."""
    far_pair_check: bool = True
    """Before mapping, drop the matched pairs of far-apart photos (more than --overlap apart in name order) whose
    matches contradict the cameras of a first model built from the near pairs alone: repeated texture (tiles,
    wallpaper) and near-symmetric objects match photos taken from opposite sides, and COLMAP's mapper then puts
    whole runs of photos on the wrong side. Skipped, without that first mapping, when the near pairs do not join 90 %
    of the photos, and after it when they do not place them (photos not in capture order). --no-far-pair-check: map
    every verified pair."""
    mapper: Literal["incremental", "global"] = "incremental"
    """incremental: COLMAP's incremental mapper (a photo at a time, bundle adjustment as the model grows); global:
    COLMAP's global mapper (GLOMAP's rotation averaging, then every position at once, then bundle adjustment)."""
    mapping_threads: int = 1
    """CPU threads for the mapping (-1: all). COLMAP's incremental mapper builds a different model for each thread
    count: on instant-ngp's fox, 2 threads placed 9 of the 50 photos together 68 % of the cameras' extent away (a
    repeated wallpaper), 1 thread every photo within 0.06 % of instant-ngp's poses, and no faster with 2. One thread
    (and a fixed random seed) gives the same model from the same photos on any machine."""


def _pycolmap():  # noqa: ANN202 - the module
    try:
        import pycolmap
    except ImportError:
        raise UsageError('ovseg3d prepare needs pycolmap: pip install "ovseg3d[prepare]"') from None
    return pycolmap


# ---------------------------------------------------------------------------------------------------------------
# 1. images


def list_inputs(source: Path) -> tuple[str, list[Path]]:
    """``("video", [file])`` or ``("photos", files sorted by name)``; a one-line error for anything else."""
    if not source.exists():
        raise MissingFileError(f"{source}: no such file or folder (give a folder of photos or a video file)")
    if source.is_file():
        if source.suffix.lower() not in VIDEO_SUFFIXES:
            raise PrepareError(f"{source}: not a video ({', '.join(VIDEO_SUFFIXES)}) nor a folder of photos")
        return "video", [source]
    photos = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(photos) < MIN_IMAGES:
        raise PrepareError(
            f"{source} holds {len(photos)} photo{'s' if len(photos) != 1 else ''} "
            f"({', '.join(IMAGE_SUFFIXES)}): prepare needs at least {MIN_IMAGES} of one scene, seen from several places"
        )
    return "photos", photos


def working_size(width: int, height: int, max_long_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so that the longer side is at most ``max_long_side`` (0: unchanged)."""
    long_side = max(width, height)
    if max_long_side <= 0 or long_side <= max_long_side:
        return width, height
    s = max_long_side / long_side
    return max(1, round(width * s)), max(1, round(height * s))


def _save(im: Image.Image, path: Path) -> None:
    im = im.convert("RGB")
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(tmp, format="JPEG", quality=95)
    else:
        im.save(tmp, format="PNG")
    tmp.replace(path)


def write_photos(photos: list[Path], folder: Path, max_long_side: int) -> list[str]:
    """Each photo upright (EXIF orientation applied), at the working size, into ``folder``; the names written
    (a photo already there is kept: a resumed run)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for photo in tqdm(photos, desc="images", unit="photo", leave=False):
        suffix = ".jpg" if photo.suffix.lower() in (".jpg", ".jpeg") else ".png"
        name = photo.stem + suffix
        if name in names:
            raise PrepareError(f"{photo}: two photos are named {photo.stem} (rename one)")
        names.append(name)
        if (folder / name).is_file():
            continue
        try:
            with Image.open(photo) as im:
                im = ImageOps.exif_transpose(im)
                size = working_size(*im.size, max_long_side)
                if size != im.size:
                    im = im.resize(size, Image.Resampling.LANCZOS)
                _save(im, folder / name)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise PrepareError(
                f"{photo}: cannot read image ({str(exc).splitlines()[0]}): remove it or replace it"
            ) from None
    return names


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (blurred or smeared frames score low)."""
    g = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    lap = g[1:-1, 1:-1] * -4.0 + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def _video_frames(video: Path, count: bool = True):  # noqa: ANN202 - (count or None, iterator of frames)
    """The video's frame count (ffmpeg decodes the whole video for it; None when ``count`` is false) and an
    iterator of its RGB frames: imageio's ffmpeg plugin, or OpenCV's reader where only OpenCV is installed (a
    machine without imageio-ffmpeg; OpenCV's count is the container's)."""
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg
    except ImportError:
        try:
            import cv2
        except ImportError:
            raise UsageError('reading a video needs imageio-ffmpeg: pip install "ovseg3d[prepare]"') from None
        return _opencv_frames(cv2, video, count)
    try:
        n = imageio_ffmpeg.count_frames_and_secs(str(video))[0] if count else None
        return n, iio.imiter(video, plugin="FFMPEG")
    except (OSError, RuntimeError, ValueError, StopIteration) as exc:
        raise PrepareError(f"{video}: ffmpeg cannot read it as a video ({str(exc).splitlines()[0][:160]})") from None


def _opencv_frames(cv2: Any, video: Path, count: bool):  # noqa: ANN202 - as _video_frames
    """:func:`_video_frames` with OpenCV's ``VideoCapture`` (its frames come as BGR: returned as RGB)."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise PrepareError(f"{video}: OpenCV cannot read it as a video")
    n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if count else None

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[..., ::-1])
        finally:
            capture.release()

    return n, frames()


FRAME_TIME_SHARE = 0.2  # a video's progress: this share its time, the rest its change of view (see choose_frames)
THUMB_SIDE = 32  # the long side of the thumbnails whose differences measure a video's change of view


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The grey image averaged over square blocks to about :data:`THUMB_SIDE` pixels on its long side (blur and
    noise average out; a turn or a step of the camera does not)."""
    g = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    block = max(1, max(g.shape) // THUMB_SIDE)
    h, w = g.shape[0] // block * block, g.shape[1] // block * block
    return g[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def choose_frames(change: np.ndarray, sharp: np.ndarray, n: int, time_share: float = FRAME_TIME_SHARE) -> list[int]:
    """Indices of up to ``n`` frames of a video whose frame ``i`` differs from the one before by ``change[i]`` and
    scores ``sharp[i]``: the video's progress is ``time_share`` its time and the rest its accumulated change, and
    the sharpest frame of each of ``n`` equal stretches of that progress is chosen. A camera that stands still
    gives few frames, one that moves fast many; a stretch that no frame falls in (a cut) gives none."""
    count = len(sharp)
    time = np.arange(count) / max(count - 1, 1)
    total = float(np.sum(change[1:]))
    seen = np.cumsum(np.r_[0.0, change[1:]]) / total if total > 0 else time
    progress = time_share * time + (1.0 - time_share) * seen
    stretch = np.minimum((progress * n).astype(int), n - 1)
    chosen = []
    for k in range(n):
        members = np.flatnonzero(stretch == k)
        if len(members):
            chosen.append(int(members[np.argmax(sharp[members])]))
    return chosen


def write_video_frames(video: Path, folder: Path, frames: int, max_long_side: int) -> tuple[list[str], str]:
    """Up to ``frames`` frames of ``video`` chosen by :func:`choose_frames` (its change of view and sharpness, read
    in a first pass), at the working size, into ``folder`` as ``frame_00001.jpg`` ... (a second pass); the names
    written and a line saying what was chosen."""
    count, reader = _video_frames(video)
    if count < MIN_IMAGES:
        raise PrepareError(f"{video}: {count} frames: prepare needs at least {MIN_IMAGES}")
    n = min(frames, count)
    sharp, change, previous = [], [], None
    bar = tqdm(total=2 * count, desc="frames", unit="frame", leave=False)
    try:
        for frame in reader:
            small = frame[::2, ::2] if max(frame.shape[:2]) > 720 else frame
            sharp.append(sharpness(small))
            thumb = thumbnail(small)
            change.append(0.0 if previous is None else float(np.mean(np.abs(thumb - previous))))
            previous = thumb
            bar.update()
        chosen = set(choose_frames(np.array(change), np.array(sharp), n))
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        _, reader = _video_frames(video, count=False)  # counted already
        for i, frame in enumerate(reader):
            bar.update()
            if i not in chosen:
                continue
            name = f"frame_{len(names) + 1:05d}.jpg"
            im = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
            size = working_size(*im.size, max_long_side)
            _save(im.resize(size, Image.Resampling.LANCZOS) if size != im.size else im, folder / name)
            names.append(name)
    except (OSError, RuntimeError) as exc:
        raise PrepareError(f"{video}: ffmpeg stopped reading it ({str(exc).splitlines()[0][:160]})") from None
    finally:
        bar.close()
    if len(names) < MIN_IMAGES:
        raise PrepareError(f"{video}: only {len(names)} frames could be decoded: prepare needs at least {MIN_IMAGES}")
    half = len(sharp) // 2
    moving = float(np.sum(change[half:])) / max(float(np.sum(change[1:])), 1e-12)
    said = (
        f"{len(names)} of {len(sharp)} frames, the sharpest of each of {n} equal stretches of the video's progress "
        f"({round(100 * (1 - FRAME_TIME_SHARE))} % its change of view, {round(100 * FRAME_TIME_SHARE)} % its time); "
        f"{sum(i >= half for i in chosen)} from its second half, where {100 * moving:.0f} % of the change is"
    )
    return names, said


# ---------------------------------------------------------------------------------------------------------------
# 2-4. features, matches, mapping


def image_pairs(n: int, matcher: str, overlap: int, loop_pairs: int) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` to match: all of them (``exhaustive``), or each image with its ``overlap`` successors
    plus every pair of ``loop_pairs`` images spread evenly over the sequence (``sequential``)."""
    if matcher == "exhaustive":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + 1 + overlap))}
    anchors = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, loop_pairs))})
    pairs |= {(a, b) for ai, a in enumerate(anchors) for b in anchors[ai + 1 :]}
    return sorted(pairs)


SIFT_MIN_KEYPOINTS = 400  # median SIFT keypoints an image below which the photos are doubled (--sift-first-octave None)


def _extract(pycolmap, db: Path, images: Path, names: list[str], cfg: PrepareConfig) -> int:  # noqa: ANN001
    """SIFT features of ``names`` into ``db``; the first octave used (``cfg.sift_first_octave``, or for None: 0, and
    -1 again from scratch when the photos gave a median under :data:`SIFT_MIN_KEYPOINTS` keypoints)."""
    octave = 0 if cfg.sift_first_octave is None else cfg.sift_first_octave
    _extract_octave(pycolmap, db, images, names, cfg, octave)
    if cfg.sift_first_octave is None:
        with pycolmap.Database.open(db) as database:
            median = float(
                np.median([database.num_keypoints_for_image(im.image_id) for im in database.read_all_images()])
            )
        if median < SIFT_MIN_KEYPOINTS:
            tqdm.write(
                f"features: a median {median:.0f} an image as they are (under {SIFT_MIN_KEYPOINTS}): found again in "
                "the images doubled (--sift-first-octave -1)"
            )
            db.unlink()
            octave = -1
            _extract_octave(pycolmap, db, images, names, cfg, octave)
    return octave


def sift_on_gpu(pycolmap, choice: str) -> bool:  # noqa: ANN001
    """Whether SIFT extraction and matching run on the GPU (``--sift-device``): 'auto' when the installed
    pycolmap has CUDA; 'cuda' without it is one line."""
    has_cuda = bool(getattr(pycolmap, "has_cuda", False))
    if choice == "cuda" and not has_cuda:
        raise PrepareError(
            "--sift-device cuda: this pycolmap was built without CUDA (pip install pycolmap-cuda12 for SIFT on the "
            "GPU, or --sift-device cpu)"
        )
    return choice == "cuda" or (choice == "auto" and has_cuda)


def _device(pycolmap, cfg: PrepareConfig):  # noqa: ANN001, ANN202 - a pycolmap.Device
    return pycolmap.Device.cuda if sift_on_gpu(pycolmap, cfg.sift_device) else pycolmap.Device.cpu


def _extract_octave(pycolmap, db: Path, images: Path, names: list[str], cfg: PrepareConfig, octave: int) -> None:  # noqa: ANN001
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = cfg.threads
    extraction.use_gpu = sift_on_gpu(pycolmap, cfg.sift_device)
    extraction.sift.max_num_features = cfg.max_features
    extraction.sift.first_octave = octave
    mode = pycolmap.CameraMode.SINGLE if cfg.single_camera else pycolmap.CameraMode.PER_IMAGE
    chunk = 8
    desc = "features" + (" (doubled)" if octave < 0 else "")
    with tqdm(total=len(names), desc=desc, unit="image", leave=False) as bar:
        for start in range(0, len(names), chunk):  # COLMAP skips images already in the database: resumable
            part = names[start : start + chunk]
            if cfg.single_camera and db.is_file():  # SINGLE holds within one call: later chunks join its camera
                with pycolmap.Database.open(db) as database:
                    cameras = database.read_all_cameras()
                if cameras:
                    reader.existing_camera_id = cameras[0].camera_id
            pycolmap.extract_features(
                db,
                images,
                image_names=part,
                camera_mode=mode,
                reader_options=reader,
                extraction_options=extraction,
                device=_device(pycolmap, cfg),
            )
            bar.update(len(part))


def photo_descriptors(pycolmap, db: Path, names: list[str]) -> list[np.ndarray]:  # noqa: ANN001
    """The SIFT descriptors ``[N_i, 128]`` (uint8) in ``db`` of each of ``names``."""
    with pycolmap.Database.open(db) as database:
        ids = {im.name: im.image_id for im in database.read_all_images()}
        return [np.asarray(database.read_descriptors(ids[name]).data) for name in names]


def _pairs(pycolmap, db: Path, names: list[str], matcher: str, cfg: PrepareConfig) -> list[tuple[int, int]]:  # noqa: ANN001
    """The index pairs to match: :func:`image_pairs`, or for ``retrieval``
    :func:`~ovseg3d.retrieval.retrieval_pairs` of the photos' VLAD vectors."""
    if matcher != "retrieval":
        return image_pairs(len(names), matcher, cfg.overlap, cfg.loop_pairs)
    from ovseg3d.retrieval import global_descriptors, retrieval_pairs

    vectors = global_descriptors(photo_descriptors(pycolmap, db, names))
    return retrieval_pairs(vectors, cfg.retrieval_neighbours, cfg.retrieval_window)


def _match(pycolmap, db: Path, work: Path, names: list[str], matcher: str, cfg: PrepareConfig) -> tuple[int, int]:  # noqa: ANN001
    """Match the chosen pairs in chunks (a progress bar; pairs already matched are skipped by COLMAP); the
    number of pairs matched and of those that passed geometric verification."""
    pairs = _pairs(pycolmap, db, names, matcher, cfg)
    write_text(work / PAIRS, "".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = cfg.threads
    options.use_gpu = sift_on_gpu(pycolmap, cfg.sift_device)
    chunk = 256
    with tqdm(total=len(pairs), desc=f"matches ({matcher})", unit="pair", leave=False) as bar:
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            listing = work / "pairs_chunk.txt"
            listing.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in part))
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = listing
            pycolmap.match_image_pairs(
                db, matching_options=options, pairing_options=pairing, device=_device(pycolmap, cfg)
            )
            bar.update(len(part))
    with pycolmap.Database.open(db) as database:
        return len(pairs), int(database.num_verified_image_pairs())


def _map(  # noqa: ANN202 - a pycolmap.Reconstruction
    pycolmap,  # noqa: ANN001
    db: Path,
    images: Path,
    work: Path,
    n_images: int,
    cfg: PrepareConfig,
    name: str = "models",
    start: Path | None = None,
    budget: dict[str, float] | None = None,
):
    """Mapping (into ``work/name``) with ``cfg.mapper``: incremental, from scratch or continued from the model in
    ``start`` (its cameras the starting point: the images it lacks registered, every match triangulated, then
    bundle adjustment), or global (from scratch); the reconstruction with the most registered images. ``budget``:
    incremental mapping options set instead of COLMAP's (its bundle adjustment's)."""
    placed = pycolmap.Reconstruction(start).num_reg_images() if start is not None else 0
    desc = "mapping" if name == "models" else f"mapping ({name})"
    desc += " (global)" if cfg.mapper == "global" else ""
    bar = tqdm(total=n_images, initial=placed, desc=desc, unit="image", leave=False)
    out = work / name
    if out.exists():
        shutil.rmtree(out)  # mapping starts over on a resumed run (features and matches are kept)
    out.mkdir()
    try:
        if cfg.mapper == "global":  # every photo at once: the bar fills at the end
            options = pycolmap.GlobalPipelineOptions()
            options.num_threads = options.mapper.num_threads = cfg.mapping_threads
            options.random_seed = options.mapper.random_seed = 0
            options.min_model_size = min(10, max(MIN_IMAGES, n_images // 4))
            models = pycolmap.global_mapping(db, images, out, options=options)
        else:
            options = pycolmap.IncrementalPipelineOptions()
            options.num_threads = cfg.mapping_threads
            options.random_seed = 0  # COLMAP's -1 seeds from the clock
            options.min_model_size = min(10, max(MIN_IMAGES, n_images // 4))
            for key, value in (budget or {}).items():
                setattr(options, key, value)
            models = pycolmap.incremental_mapping(
                db, images, out, options=options, input_path=start or "", next_image_callback=bar.update
            )
    finally:
        bar.close()
    if not models:
        raise PrepareError(
            "no model could be built: no two images gave a good enough start (too little overlap, or too "
            "little texture); try more photos from closer together, or --camera-model SIMPLE_RADIAL"
        )
    return max(models.values(), key=lambda rec: rec.num_reg_images())


def epipolar_agreement(xa: np.ndarray, xb: np.ndarray, b_from_a: np.ndarray, focal: float, max_px: float) -> float:
    """The share of matches ``xa[i] <-> xb[i]`` (normalised, undistorted image coordinates ``[N, 2]`` of cameras
    a and b) within ``max_px`` pixels (Sampson distance, ``focal`` pixels per unit) of the epipolar geometry of
    the relative pose ``b_from_a`` ``[3, 4]`` (x_b = R x_a + t)."""
    if len(xa) == 0:
        return 0.0
    rot, t = b_from_a[:, :3], b_from_a[:, 3]
    norm = float(np.linalg.norm(t))
    if norm == 0.0:
        return 0.0
    t = t / norm
    essential = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]]) @ rot
    pa, pb = np.c_[xa, np.ones(len(xa))], np.c_[xb, np.ones(len(xb))]
    ea, eb = pa @ essential.T, pb @ essential  # epipolar lines in b, in a
    num = np.sum(pb * ea, axis=1) ** 2
    den = ea[:, 0] ** 2 + ea[:, 1] ** 2 + eb[:, 0] ** 2 + eb[:, 1] ** 2
    dist = np.sqrt(num / np.maximum(den, 1e-300)) * focal
    return float(np.mean(dist < max_px))


def largest_component(n: int, edges: list[tuple[int, int]]) -> int:
    """The number of nodes in the largest connected component of the graph of nodes ``0 .. n-1`` and ``edges``."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        parent[root(a)] = root(b)
    return int(np.bincount([root(i) for i in range(n)]).max()) if n else 0


# The near pairs' model only has to judge far pairs within 4 px, and the final mapping continues from it with
# COLMAP's own bundle adjustment (its last global one included), so it is mapped on the budget of COLMAP's "medium
# quality" (global bundle adjustment at every 21 % of growth instead of 10 %, a third fewer iterations, 2
# refinements). On instant-ngp's fox (1,225 pairs, 1440 px): 12.2 CPU seconds instead of 21.2, the final cameras
# 0.0478 % from instant-ngp's instead of 0.0474 %; NeRF-Database's the same (docs/benchmarks.md, issue 68).
CHAIN_BUNDLE_ADJUSTMENT = {
    "ba_global_frames_ratio": 1.21,
    "ba_global_points_ratio": 1.21,
    "ba_global_max_num_iterations": 33,
    "ba_local_max_num_iterations": 16,
    "ba_global_max_refinements": 2,
}
MAPPER_MIN_MATCHES = 15  # COLMAP's incremental mapper maps a pair with at least this many inliers (min_num_matches)
CHAIN_MODEL = "chain_model"  # the near pairs' model, kept in the work folder for the mapping to continue from


def check_far_pairs(pycolmap, db: Path, images: Path, work: Path, names: list[str], cfg: PrepareConfig) -> dict:  # noqa: ANN001
    """Drop from ``db`` the verified pairs of photos more than ``cfg.overlap`` apart in ``names`` whose matches
    contradict the cameras of a model mapped from the near pairs alone (:data:`FAR_PAIR_MIN_AGREE` of them within
    :data:`FAR_PAIR_MAX_PX`). That model is left in ``work/chain_model`` when it judged the pairs. Nothing is mapped
    where there is no far pair, or where the near pairs (with COLMAP's 15 inliers) do not join
    :data:`CHAIN_MIN_SHARE` of the photos. Returns what was checked and dropped (``"skipped"`` says why none was)."""
    shutil.rmtree(work / CHAIN_MODEL, ignore_errors=True)
    order = {name: i for i, name in enumerate(names)}
    with pycolmap.Database.open(db) as database:
        ids = {im.image_id: im.name for im in database.read_all_images()}
        pair_ids, geometries = database.read_two_view_geometries()
    far, near = [], []
    for pair_id, geometry in zip(pair_ids, geometries):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if abs(order[ids[a]] - order[ids[b]]) > cfg.overlap:
            if len(geometry.inlier_matches):
                far.append((a, b, geometry.inlier_matches))
        elif len(geometry.inlier_matches) >= MAPPER_MIN_MATCHES:
            near.append((order[ids[a]], order[ids[b]]))
    stats: dict = {"far_pairs": len(far), "far_pairs_dropped": 0}
    if not far:
        return stats
    joined = largest_component(len(names), near)
    if joined < CHAIN_MIN_SHARE * len(names):  # no model of the near pairs could place enough: none is mapped
        stats["skipped"] = f"the near pairs join only {joined} of {len(names)} photos (not in capture order?)"
        return stats
    chain_db = work / "chain.db"
    shutil.copy(db, chain_db)
    try:
        with pycolmap.Database.open(chain_db) as database:
            for a, b, _ in far:
                database.delete_two_view_geometry(a, b)
        chain = _map(pycolmap, chain_db, images, work, len(names), cfg, name="chain", budget=CHAIN_BUNDLE_ADJUSTMENT)
    except PrepareError:
        chain = None
    finally:
        chain_db.unlink(missing_ok=True)
        shutil.rmtree(work / "chain", ignore_errors=True)
    by_name = {im.name: im for im in chain.images.values() if im.has_pose} if chain is not None else {}
    if len(by_name) < CHAIN_MIN_SHARE * len(names):
        stats["skipped"] = f"the near pairs alone placed {len(by_name)} of {len(names)} photos (not in capture order?)"
        return stats
    dropped = []
    with pycolmap.Database.open(db) as database:
        keypoints = {}
        for a, b, matches in far:
            ia, ib = by_name.get(ids[a]), by_name.get(ids[b])
            if ia is None or ib is None:
                continue  # no camera to judge by: kept
            for i in (a, b):
                if i not in keypoints:
                    keypoints[i] = database.read_keypoints(i)[:, :2].astype(np.float64)
            ca, cb = chain.cameras[ia.camera_id], chain.cameras[ib.camera_id]
            xa = ca.cam_from_img(keypoints[a][matches[:, 0]])
            xb = cb.cam_from_img(keypoints[b][matches[:, 1]])
            b_from_a = (ib.cam_from_world() * ia.cam_from_world().inverse()).matrix()
            focal = 0.5 * (ca.mean_focal_length() + cb.mean_focal_length())
            if epipolar_agreement(xa, xb, b_from_a, focal, FAR_PAIR_MAX_PX) < FAR_PAIR_MIN_AGREE:
                dropped.append((a, b))
        for a, b in dropped:
            database.delete_two_view_geometry(a, b)
    stats["far_pairs_dropped"] = len(dropped)
    (work / CHAIN_MODEL).mkdir()
    chain.write(work / CHAIN_MODEL)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# 5. frame


def gravity_transform(rec) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 - a pycolmap.Reconstruction
    """``(R, t)``: the rotation taking the cameras' up (:func:`~ovseg3d.data.loader.camera_up`) to +z and the
    translation then taking the sparse points' median (the cameras' centroid without points) to the origin."""
    from ovseg3d.data.colmap import c2w_opengl_from_w2c
    from ovseg3d.data.loader import camera_up
    from ovseg3d.detect.gravity import rotation_between

    w2c = [image.cam_from_world().matrix() for image in rec.images.values() if image.has_pose]  # [3, 4] OpenCV
    c2w = np.stack([c2w_opengl_from_w2c(m[:, :3], m[:, 3]) for m in w2c])
    up = camera_up(c2w)
    rotation = rotation_between(up, np.array([0.0, 0.0, 1.0]))
    xyz = np.array([p.xyz for p in rec.points3D.values()]) if rec.num_points3D() else c2w[:, :, 3]
    return rotation, -rotation @ np.median(xyz, axis=0)


def _downscale(images: Path, root: Path, factors: tuple[int, ...], names: list[str]) -> None:
    for k in factors:
        folder = root / f"images_{k}"
        folder.mkdir(exist_ok=True)
        for name in tqdm(names, desc=f"images_{k}", unit="image", leave=False):
            if (folder / name).is_file():
                continue
            with Image.open(images / name) as im:
                size = (max(1, -(-im.size[0] // k)), max(1, -(-im.size[1] // k)))
                _save(im.resize(size, Image.Resampling.BOX), folder / name)


# ---------------------------------------------------------------------------------------------------------------


def _fingerprint(kind: str, inputs: list[Path], cfg: PrepareConfig) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True, default=list).encode())
    h.update(kind.encode())
    for p in inputs:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _finish(work: Path, state: dict, step: str, start: float, **extra: object) -> None:
    """Record ``step`` as done in the work folder's state file, with its seconds since ``start`` and ``extra``."""
    state["done"].append(step)
    state["seconds"][step] = round(time.perf_counter() - start, 1)
    state.update(extra)
    write_json(work / STATE, state)


def _sfm(work: Path) -> None:
    """Steps 2-5 on the prepared images of ``work``, in this process (the child of :func:`prepare`): features,
    matches, mapping, the gravity frame, ``sparse/0`` (or the undistorted images and model). Writes each finished
    step to the state file and the model's figures to ``sfm.json``."""
    pycolmap = _pycolmap()
    pycolmap.logging.minloglevel = 2  # COLMAP's own log: errors only (the progress bars say what runs)
    state = json.loads((work / STATE).read_text())
    cfg = PrepareConfig(**{**state["config"], "downscales": tuple(state["config"]["downscales"])})
    names, kind = list(state["names"]), state["kind"]
    images, db = work / "images", work / "database.db"

    if "features" not in state["done"]:
        t0 = time.perf_counter()
        octave = _extract(pycolmap, db, images, names, cfg)
        _finish(work, state, "features", t0, sift_first_octave=octave)
    matcher = cfg.matcher
    if matcher == "auto":
        matcher = (
            "sequential" if kind == "video" else "exhaustive" if len(names) <= cfg.exhaustive_up_to else "retrieval"
        )
    if "matches" not in state["done"]:
        t0 = time.perf_counter()
        matched, verified = _match(pycolmap, db, work, names, matcher, cfg)
        if verified == 0:
            raise PrepareError(
                f"no two of the {len(names)} images share enough verified matches: the photos must overlap "
                "(each part of the scene in several of them), with texture to match"
            )
        _finish(work, state, "matches", t0, matched_pairs=matched, verified_pairs=verified, matcher=matcher)

    if "mapping" in state["done"] and (work / "sfm.json").is_file():
        return  # a resumed run whose child had finished
    if cfg.far_pair_check and "far_pairs" not in state["done"]:
        t0 = time.perf_counter()
        far = check_far_pairs(pycolmap, db, images, work, names, cfg)
        if far["far_pairs_dropped"]:
            tqdm.write(
                f"far pairs: {far['far_pairs_dropped']} of {far['far_pairs']} contradict the cameras of the near "
                "pairs' model (repeated texture, a symmetric object): left out of the mapping"
            )
        elif "skipped" in far:
            tqdm.write(f"far pairs: all {far['far_pairs']} kept: {far['skipped']}")
        _finish(work, state, "far_pairs", t0, far_pair_check=far)
    t0 = time.perf_counter()
    # continued from the near pairs' model where the check made one: the far pairs it kept close loops in the
    # final triangulation and bundle adjustment (the fox: 7 s instead of 55, ATE 0.055 % against 0.059 %)
    chain = work / CHAIN_MODEL
    start = chain if cfg.mapper == "incremental" and (chain / "images.bin").is_file() else None
    rec = _map(pycolmap, db, images, work, len(names), cfg, start=start)
    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    if len(registered) < MIN_IMAGES:
        raise PrepareError(
            f"only {len(registered)} of the {len(names)} images could be placed: too little overlap or texture "
            "between them (more photos, closer together; or --camera-model SIMPLE_RADIAL)"
        )
    up = None
    if cfg.gravity:
        rotation, translation = gravity_transform(rec)
        rec.transform(pycolmap.Sim3d(1.0, pycolmap.Rotation3d(rotation), translation))
        up = rotation.T @ np.array([0.0, 0.0, 1.0])
    sparse = work / "sparse" / "0"
    shutil.rmtree(sparse.parent, ignore_errors=True)
    sparse.mkdir(parents=True)
    if cfg.undistort:
        model, undistorted = work / "model_tmp", work / "undistorted"
        for folder in (model, undistorted):
            shutil.rmtree(folder, ignore_errors=True)
        model.mkdir()
        rec.write(model)
        pycolmap.undistort_images(undistorted, model, images, image_names=registered, num_threads=cfg.threads)
        shutil.rmtree(images)
        (undistorted / "images").rename(images)
        for f in (undistorted / "sparse").iterdir():
            f.rename(sparse / f.name)
        shutil.rmtree(undistorted)
        shutil.rmtree(model)
    else:
        rec.write(sparse)
    shutil.rmtree(work / "models", ignore_errors=True)
    shutil.rmtree(work / CHAIN_MODEL, ignore_errors=True)
    stats = {
        "registered": registered,
        "points": int(rec.num_points3D()),
        "mean_reprojection_error_px": round(float(rec.compute_mean_reprojection_error()), 3),
        "mean_track_length": round(float(rec.compute_mean_track_length()), 2),
        "matcher": state.get("matcher", matcher),
        "sift_first_octave": state.get("sift_first_octave"),
        "matched_pairs": state.get("matched_pairs"),
        "verified_pairs": state.get("verified_pairs"),
        "far_pair_check": state.get("far_pair_check"),
        "gravity_up_in_colmap_frame": None if up is None else np.round(up, 6).tolist(),
        "pycolmap": pycolmap.__version__,
    }
    write_json(work / "sfm.json", stats)
    _finish(work, state, "mapping", t0)


def _run_sfm_child(work: Path) -> dict:
    """:func:`_sfm` in a child Python: pycolmap's native code (and its libraries, which broke Pillow's PNG
    encoder when loaded first in one process) stays out of this one, and a native abort is one line here."""
    import subprocess
    import sys

    from ovseg3d.accel import signal_name

    (work / "sfm_error.txt").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "ovseg3d.prepare", str(work)], check=False)
    if proc.returncode == 0:
        return json.loads((work / "sfm.json").read_text())
    if (work / "sfm_error.txt").is_file():
        raise PrepareError((work / "sfm_error.txt").read_text().strip())
    if proc.returncode < 0:
        raise PrepareError(f"pycolmap stopped ({signal_name(-proc.returncode)}); the same command resumes from {work}")
    raise PrepareError(
        f"the structure-from-motion step failed (exit status {proc.returncode}, see above); "
        f"the same command resumes from {work}"
    )


def prepare(source: Path, out: Path, cfg: PrepareConfig = PrepareConfig(), log: Callable[[str], None] = print) -> dict:
    """Make the scene ``out`` (COLMAP layout) of the photos in the folder ``source``, or of the video file
    ``source``; the summary written to ``out/prepare.json``. ``out.partial`` holds the work until it is whole;
    run again, the same command resumes it."""
    source, out = Path(source), Path(out)
    import importlib.util

    if importlib.util.find_spec("pycolmap") is None:  # not imported here: it runs in a child process
        raise UsageError('ovseg3d prepare needs pycolmap: pip install "ovseg3d[prepare]"')
    if out.exists():
        raise UsageError(f"{out} already exists: give a new folder (prepare writes a whole scene)")
    if cfg.retrieval_neighbours < 1 or cfg.retrieval_window < 0:
        raise UsageError(
            f"--retrieval-neighbours {cfg.retrieval_neighbours} --retrieval-window {cfg.retrieval_window}: "
            "give 1 or more neighbours and a window of 0 or more"
        )
    kind, inputs = list_inputs(source)
    work = out.with_name(out.name + ".partial")
    fingerprint = _fingerprint(kind, inputs, cfg)
    state: dict = {}
    if (work / STATE).is_file():
        try:
            state = json.loads((work / STATE).read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("fingerprint") != fingerprint:
            log(f"{work}: left by a run with other inputs or options: starting over")
            shutil.rmtree(work)
            state = {}
        else:
            log(f"{work}: resuming after {state.get('done', [])[-1] if state.get('done') else 'nothing'}")
    work.mkdir(parents=True, exist_ok=True)
    state.setdefault("fingerprint", fingerprint)
    state.setdefault("done", [])
    state.setdefault("seconds", {})

    images = work / "images"
    if "images" not in state["done"]:
        t0 = time.perf_counter()
        if kind == "video":
            names, said = write_video_frames(inputs[0], images, cfg.frames, cfg.max_long_side)
            log(said)
        else:
            names = write_photos(inputs, images, cfg.max_long_side)
        _finish(work, state, "images", t0, names=names)
    names = list(state["names"])
    with Image.open(images / names[0]) as im:
        size = im.size
    log(f"{len(names)} {'frames' if kind == 'video' else 'photos'} at {size[0]}x{size[1]} in {images}")

    state["config"], state["kind"] = asdict(cfg), kind
    write_json(work / STATE, state)
    sfm = _run_sfm_child(work)
    state = json.loads((work / STATE).read_text())
    registered = list(sfm["registered"])
    missing = sorted(set(names) - set(registered))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log(f"{len(missing)} of {len(names)} images were not registered (left out of the scene): {shown}")
    for name in missing:  # the scene holds the registered images only
        (images / name).unlink(missing_ok=True)
    stats = {
        "source": str(source),
        "kind": kind,
        "images": len(names),
        "registered": len(registered),
        "unregistered": missing,
        "size": list(size),
        **{k: v for k, v in sfm.items() if k != "registered"},
        "camera_model": cfg.camera_model,
        "undistorted": cfg.undistort,
        "config": asdict(cfg),
    }
    t0 = time.perf_counter()
    _downscale(images, work, cfg.downscales, registered)
    state["seconds"]["downscale"] = round(time.perf_counter() - t0, 1)
    stats["seconds"] = dict(state["seconds"], total=round(sum(state["seconds"].values()), 1))
    for leftover in ("pairs_chunk.txt", "sfm.json", "sfm_error.txt", STATE):
        (work / leftover).unlink(missing_ok=True)
    write_json(work / "prepare.json", stats)
    work.rename(out)
    log(
        f"{len(registered)} of {len(names)} images registered, {stats['points']} points, mean reprojection error "
        f"{stats['mean_reprojection_error_px']:.2f} px, {stats['seconds']['total']:.0f} s -> {out} "
        f"(ovseg3d train {out} --output RUN)"
    )
    return stats


if __name__ == "__main__":  # the child process of prepare(): python -m ovseg3d.prepare WORK
    import sys

    _work = Path(sys.argv[1])
    try:
        _sfm(_work)
    except UsageError as _exc:
        (_work / "sfm_error.txt").write_text(str(_exc))
        sys.exit(3)
