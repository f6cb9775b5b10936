"""Per-class mean sizes (ImOV3D's size prior) and which classes are background stuff rather than objects."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovseg3d.errors import UsageError

SHIPPED = Path(__file__).with_name("size_priors.json")
SHAPES = ("sphere", "cylinder")


@dataclass
class SizePriors:
    """``sizes``: class -> (L, W, H) metres (not every class has one); ``symmetric``: class -> looks alike from
    front and back; ``shapes``: class -> ``sphere`` or ``cylinder`` (about the vertical) for round objects;
    ``stuff``: classes that are surfaces of the scene, never boxed."""

    sizes: dict[str, np.ndarray] = field(default_factory=dict)
    symmetric: dict[str, bool] = field(default_factory=dict)
    shapes: dict[str, str] = field(default_factory=dict)
    stuff: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, *paths: Path) -> SizePriors:
        """The shipped table, then each of ``paths`` on top of it (same layout; later entries win)."""
        priors = cls()
        for path in (SHIPPED, *paths):
            try:
                table = json.loads(Path(path).read_text())
                for name, entry in table.get("classes", {}).items():
                    if not {"size", "symmetric", "shape"} & set(entry):
                        raise UsageError(f"class {name!r}: give its size, symmetric or shape")
                    if "size" in entry:  # a class whose size varies too much to say (a vase) has none
                        size = np.asarray(entry["size"], np.float64)
                        if size.shape != (3,) or (size <= 0).any():
                            raise UsageError(f"class {name!r}: size must be 3 positive numbers")
                        priors.sizes[name.lower()] = size
                    if "symmetric" in entry:
                        priors.symmetric[name.lower()] = bool(entry["symmetric"])
                    if "shape" in entry:
                        if entry["shape"] not in SHAPES:
                            raise UsageError(f"class {name!r}: shape must be one of {', '.join(SHAPES)}")
                        priors.shapes[name.lower()] = entry["shape"]
                priors.stuff |= {s.lower() for s in table.get("stuff", [])}
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise UsageError(f"{path}: not a size-prior table ({exc})") from None
        return priors

    def key(self, name: str) -> str | None:
        """The table's entry for a class name: the name itself, else its longest run of last words that has one
        (an open vocabulary's "ceramic vase" is a vase, "red soda can" a soda can); ``None`` without any."""
        return _last_words(name, self.sizes)

    def has(self, name: str) -> bool:
        return self.key(name) is not None

    def symmetric_of(self, name: str) -> bool | None:
        """Whether the class looks alike from front and back; ``None`` where the table does not say."""
        key = _last_words(name, self.symmetric)
        return self.symmetric[key] if key is not None else None

    def shape_of(self, name: str) -> str | None:
        """``sphere`` or ``cylinder`` for a round class, else ``None``."""
        key = _last_words(name, self.shapes)
        return self.shapes[key] if key is not None else None

    def is_stuff(self, name: str) -> bool:
        """A surface of the scene rather than an object: the name or its last words are stuff ("wooden floor")."""
        return _last_words(name, self.stuff) is not None

    def ratios(self, name: str, size: np.ndarray) -> np.ndarray | None:
        """Measured over prior size for (longer side, shorter side, height), or ``None`` without a prior."""
        key = self.key(name)
        if key is None:
            return None
        prior = self.sizes[key]
        horiz = np.sort(np.asarray(size[:2], np.float64))[::-1]
        return np.array([*(horiz / np.sort(prior[:2])[::-1]), size[2] / prior[2]])

    def factor(self, name: str, size: np.ndarray) -> float:
        """Re-scoring factor in (0, 1]: ``exp(-mean |log ratio|)``; 0 when a side is under a tenth or over ten
        times the prior or the volume under 0.05 or over 20 times it (ImOV3D's filters); 1 without a prior."""
        r = self.ratios(name, size)
        if r is None:
            return 1.0
        volume = float(np.prod(r))
        if (r < 0.1).any() or (r > 10).any() or not 0.05 <= volume <= 20:
            return 0.0
        return math.exp(-float(np.abs(np.log(r)).mean()))


def _last_words(name: str, names: dict | set[str]) -> str | None:
    """The longest run of ``name``'s last words (lower case) that is in ``names``, else ``None``."""
    words = name.lower().split()
    for i in range(len(words)):
        tail = " ".join(words[i:])
        if tail in names:
            return tail
    return None
