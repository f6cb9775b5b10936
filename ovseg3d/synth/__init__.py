"""Procedural scenes with full ground truth: a textured room with objects, ray cast analytically.

A scene is a closed box room (floor, four walls, ceiling) holding ``n_objects`` objects on the floor.
Every object is built from a few analytic primitives (sphere, oriented box, capped upright cylinder)
sharing one class and instance; the room's faces are one-sided rectangles ("plane") facing inwards,
so every ray cast from inside hits something. Units are metres, world up is ``+z``, the floor is
``z = 0`` and the objects stand around the origin.

Shading is static and view independent: ``albedo * (ambient + diffuse * max(n.l, 0) * visible)`` with one
directional light; ``visible`` comes from a shadow ray against the objects' primitives (the light shines
through the ceiling, so room faces cast no shadows). Textures are procedural functions of a primitive's
local coordinates, hence view consistent.

:func:`synthesize` writes a scene folder in the 3D-OVS / LLFF layout (REFERENCE.md §1) or the nerfstudio
``transforms.json`` layout, plus ground truth: ``labels/``, ``instances/``, ``objects.json`` and the full
analytic description ``scene.json`` (read back with :func:`scene_from_json`; distances to the true
surfaces with :func:`surface_distance`), or as a COLMAP binary model (``images/`` + ``sparse/0/``, with a
``points3D.bin`` sampled from the rendered surfaces). The cameras may have a lens (``lens``: OpenCV
radial-tangential or fisheye, :mod:`ovseg3d.data.lenses`): every pixel's ray is the lens's unprojection of the pixel's
distorted normalised coordinates, so images, depth, labels and instances are all distorted, and the lens is
written into ``cameras.bin`` (OPENCV / OPENCV_FISHEYE) and ``transforms.json`` (``camera_model``, ``k1 ...``).
LLFF has no lens model and refuses one. Pinhole scenes are byte-identical to those of earlier versions.

An outdoor scene (``outdoor``) replaces the room by open ground (a textured plane ``GROUND_HALF`` metres
each way, classes ``OUTDOOR_CLASSES``: ``ground`` and ``building``), a few large textured boxes as buildings
15-60 m from the centre, and a sky: rays that hit nothing see :func:`sky_color`, a function of direction only
(at infinity), with label 255 and instance 0. Its cameras take the camera settings of
:data:`OUTDOOR_CAMERAS` where the config holds the room's defaults (:func:`resolve_config`), so that they see
the horizon; its ``transforms.json`` has no ``"aabb"`` (the scene is unbounded: loaders fall back to their
region of interest), its LLFF near / far are percentiles of the surfaces' depth, and its ``points3D`` come
from the surfaces (buildings and far ground included), never the sky.

Modules, each importing only those above it:

- :mod:`.config`: :class:`SynthConfig` and the outdoor camera defaults (:func:`resolve_config`);
- :mod:`.scene`: :class:`Primitive`, :class:`SynthScene`, :func:`scene_from_json`;
- :mod:`.textures`: procedural noise and the materials;
- :mod:`.objects`: the object vocabulary (:data:`VOCABULARY`);
- :mod:`.layout`: drawing and placing the objects, the room or the ground and buildings (:func:`build_scene`);
- :mod:`.cameras`: :class:`SynthCameras` and the camera paths (:func:`make_cameras`);
- :mod:`.raycast`: ray casting, shading, the sky and rendering a view (:func:`render_view`);
- :mod:`.distances`: distances to the true surfaces (:func:`surface_distance`);
- :mod:`.writers`: the scene folder and its files (:func:`synthesize`).
"""

from ovseg3d.synth.cameras import DEFAULT_DISTORTION, LENSES, SynthCameras, lens_coefficients, look_at, make_cameras
from ovseg3d.synth.config import OUTDOOR_CAMERAS, SynthConfig, resolve_config
from ovseg3d.synth.distances import class_distances, nearest_surface, surface_distance
from ovseg3d.synth.layout import (
    BUILDING_HEIGHT,
    BUILDING_RANGE,
    GROUND_HALF,
    N_BUILDINGS,
    OUTDOOR_CLASSES,
    STUFF_CLASSES,
    build_scene,
)
from ovseg3d.synth.objects import VOCABULARY, Builder
from ovseg3d.synth.raycast import (
    SKY_HORIZON,
    SKY_ZENITH,
    SynthView,
    camera_rays,
    cast_rays,
    render_rays,
    render_view,
    shade,
    sky_color,
)
from ovseg3d.synth.scene import Primitive, SynthScene, scene_from_json
from ovseg3d.synth.textures import Material, fbm, value_noise
from ovseg3d.synth.writers import (
    BOX_MARGIN,
    COLMAP_MODELS,
    GENERATOR,
    annotated_views,
    colmap_model,
    point_views,
    scene_to_json,
    synthesize,
)

__all__ = [
    "BOX_MARGIN",
    "BUILDING_HEIGHT",
    "BUILDING_RANGE",
    "Builder",
    "COLMAP_MODELS",
    "DEFAULT_DISTORTION",
    "GENERATOR",
    "GROUND_HALF",
    "LENSES",
    "Material",
    "N_BUILDINGS",
    "OUTDOOR_CAMERAS",
    "OUTDOOR_CLASSES",
    "Primitive",
    "SKY_HORIZON",
    "SKY_ZENITH",
    "STUFF_CLASSES",
    "SynthCameras",
    "SynthConfig",
    "SynthScene",
    "SynthView",
    "VOCABULARY",
    "annotated_views",
    "build_scene",
    "camera_rays",
    "cast_rays",
    "class_distances",
    "colmap_model",
    "fbm",
    "lens_coefficients",
    "look_at",
    "make_cameras",
    "nearest_surface",
    "point_views",
    "render_rays",
    "render_view",
    "resolve_config",
    "scene_from_json",
    "scene_to_json",
    "shade",
    "sky_color",
    "surface_distance",
    "synthesize",
    "value_noise",
]
