"""ovseg3d: open-vocabulary 3D scene understanding from posed photos."""

__version__ = "0.1.0"
