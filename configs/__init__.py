"""The presets (``ovseg3d train --preset NAME`` reads ``NAME.toml`` here).

This folder stays at the top of the repository, where users copy a preset from; pyproject.toml installs it as
the package ``ovseg3d.configs`` (``package-dir``), so that a non-editable install ships the presets too.
"""
