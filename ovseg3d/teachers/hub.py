"""Loading pretrained teacher weights from a local folder or the Hugging Face hub, offline-aware.

A hub id is looked up in the local Hugging Face cache first (no network); only when it is missing there
and ``HF_HUB_OFFLINE`` is not set is the hub asked. Anything that fails becomes one :class:`TeacherError`
line that names the option taking a local path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ovseg3d.teachers.config import TeacherError

T = TypeVar("T")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def load_pretrained(loader: Callable[..., T], name: str, what: str, option: str, **kwargs: Any) -> T:
    """``loader(name_or_path, local_files_only=..., **kwargs)`` (a transformers ``from_pretrained``).

    Args:
        name: a local folder or a hub id.
        what: what is loaded, for the message ("CLIP model").
        option: the command-line option that takes a local path ("--clip-model").
    """
    local = Path(name).expanduser()
    if local.exists():
        try:
            return loader(str(local), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise TeacherError(f"cannot load {what} from {local}: {_one_line(exc)}") from None
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not hub_offline():
        try:
            return loader(name, **kwargs)
        except (OSError, ValueError):
            pass
    raise TeacherError(
        f"{what} '{name}' is not a local folder, not in the Hugging Face cache, and the hub cannot be reached "
        f"(offline?): pass {option} /path/to/a/downloaded/model"
    )


def read_preprocessor(name: str) -> dict[str, Any]:
    """The model's ``preprocessor_config.json`` (image mean / std) from a local folder or the HF cache,
    without network; ``{}`` when there is none."""
    path: Path | None = Path(name).expanduser() / "preprocessor_config.json"
    if path is None or not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "preprocessor_config.json")
            path = Path(found) if isinstance(found, str) else None
        except Exception:  # not a valid repo id: there is no cached file either
            path = None
    if path is None or not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
