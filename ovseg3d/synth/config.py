"""The settings of a procedural scene (:class:`SynthConfig`) and their outdoor defaults (:func:`resolve_config`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# outdoor camera settings, taken where the config holds the room's defaults (resolve_config): low cameras a few
# metres from the objects looking slightly down, so that the horizon, the buildings and the sky are in view
OUTDOOR_CAMERAS = {
    "distance": 1.8,
    "elevation_deg": 14.0,
    "patch_width": 1.0,
    "patch_height": 0.5,
    "orbit_distance": 2.0,
    "orbit_min_elevation_deg": 10.0,
    "orbit_max_elevation_deg": 18.0,
}


@dataclass
class SynthConfig:
    """A procedural scene: room, objects, cameras and output format."""

    seed: int = 0
    """Random seed: the same seed and settings give byte-identical files."""
    width: int = 160
    """Image width in pixels."""
    height: int = 120
    """Image height in pixels."""
    n_views: int = 36
    """Number of camera views."""
    cameras: Literal["forward", "orbit"] = "forward"
    """forward: LLFF-like patch of cameras facing the objects (an object with a front, such as a mug's handle,
    turns it toward them, so that its pose can be seen); orbit: rings around them."""
    format: Literal["llff", "transforms", "colmap"] = "llff"
    """Pose file: llff (poses_bounds.npy, 3D-OVS), transforms (nerfstudio transforms.json) or colmap (binary
    model in sparse/0/: cameras.bin, images.bin and points3D.bin sampled from the rendered surfaces)."""
    n_objects: int = 5
    """Number of objects on the floor."""
    n_annotated: int = 4
    """Views that get 3D-OVS masks in segmentations/, spread through the sequence (never view 0)."""
    supersample: int = 3
    """s x s rays per pixel averaged for the RGB images (anti-aliasing); labels use the pixel centre."""
    fov_deg: float = 60.0
    """Horizontal field of view in degrees (through the lens: the image's left and right edges see this angle)."""
    distance: float = 1.1
    """forward: distance (m) from the camera patch to the objects' centre."""
    elevation_deg: float = 25.0
    """forward: elevation (degrees above the horizon) of the camera patch seen from the objects."""
    patch_width: float = 0.5
    """forward: width (m) of the patch the camera centres are spread over."""
    patch_height: float = 0.3
    """forward: height (m) of that patch."""
    orbit_min_elevation_deg: float = 20.0
    """orbit: elevation of the lowest ring (degrees)."""
    orbit_max_elevation_deg: float = 45.0
    """orbit: elevation of the highest ring (degrees)."""
    orbit_distance: float = 1.5
    """orbit: distance (m) from the cameras to the objects' centre."""
    orbit_rings: int = 2
    """orbit: number of rings (one if there are fewer than 8 views)."""
    spread: float = 0.38
    """Half-width (m) of the floor area the object centres are drawn from (its depth is 2/3 of that)."""
    room_size: tuple[float, float, float] = (4.0, 3.6, 2.6)
    """Room extents (m) along x, y, z; the room is centred on the objects, floor at z = 0."""
    texture_scale: float = 1.0
    """Multiplies the spatial frequency of the room's procedural textures (2 = twice as fine)."""
    ambient: float = 0.35
    """Ambient light level (shadowed surfaces get albedo * ambient)."""
    classes: tuple[str, ...] = ()
    """Object classes to draw from (empty = all: tennis ball, orange, rubik cube, soda can, book, tissue box,
    mug, chair)."""
    lens: Literal["pinhole", "opencv", "fisheye"] = "pinhole"
    """Camera lens: pinhole, opencv (radial-tangential, COLMAP OPENCV) or fisheye (Kannala-Brandt, COLMAP
    OPENCV_FISHEYE); every pixel's ray goes through it. LLFF has no lens: use --format colmap or transforms."""
    distortion: tuple[float, ...] = ()
    """Lens coefficients: opencv K1 K2 P1 P2, fisheye K1 K2 K3 K4 (empty = a phone lens -0.12 0.03 0.001 -0.0005,
    or an action-camera fisheye 0.04 -0.01 0.002 -0.0003)."""
    n_points: int = 4000
    """colmap: number of points in points3D.bin, sampled on the surfaces seen by up to four views."""
    outdoor: bool = False
    """Render an unbounded outdoor scene instead of the room: the objects on open ground (300 m each way) under a
    sky, with buildings 15-60 m away; classes ground and building, sky unlabelled. Camera settings left at their
    defaults take outdoor values (forward: distance 1.8, elevation 14, patch 1.0 x 0.5; orbit: distance 2,
    elevations 10-18). transforms.json gets no aabb (unbounded)."""
    workers: int = 1
    """Processes rendering the views (0 = one per CPU core). Each view is rendered on its own, so the files are
    the same for any number; not part of the scene (scene.json leaves it out)."""


def resolve_config(cfg: SynthConfig) -> SynthConfig:
    """``cfg``, outdoors with the camera settings of :data:`OUTDOOR_CAMERAS` in place of the room's defaults
    (a setting that differs from the room's default is kept); a room's config is returned as it is."""
    if not cfg.outdoor:
        return cfg
    default = SynthConfig()
    return replace(cfg, **{k: v for k, v in OUTDOOR_CAMERAS.items() if getattr(cfg, k) == getattr(default, k)})
