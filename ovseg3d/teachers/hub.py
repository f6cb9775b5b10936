"""Loading pretrained teacher weights from a local folder or the Hugging Face hub, offline-aware.

A local folder is loaded as it is, and a hub id is looked up in the local Hugging Face cache first; neither
touches the network. Only a hub id missing from the cache makes the hub be asked, and only after one short
probe (:func:`hub_reachable`: a HEAD request to huggingface_hub's endpoint, at most
:data:`PROBE_SECONDS`) has found it answering: without the probe, huggingface_hub and transformers retry a
hub that cannot be reached for about 25 seconds (a minute where connections hang), printing a line per try.
``HF_HUB_OFFLINE`` skips the probe. Anything that fails becomes one :class:`TeacherError` line that names
the option taking a local path. This module is the one place that decides whether the hub is asked.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ovseg3d.teachers.config import TeacherError

T = TypeVar("T")

PROBE_SECONDS = 1.5
"""How long the hub may take to answer the probe before it counts as unreachable, DNS included (the
environment variable ``OVSEG3D_HUB_TIMEOUT``, in seconds, overrides it for slow links)."""
_TRUST_SECONDS = 60.0  # a hub that answered is not probed again for this long (a model and its tokenizer)
_answered: dict[str, float] = {}  # endpoint -> time.monotonic() of its last answer
_NOISY_LOGGERS = ("huggingface_hub", "transformers")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when huggingface_hub was imported."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The hub huggingface_hub (and so transformers) downloads from: ``HF_ENDPOINT`` as it read it at import."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def probe_seconds() -> float:
    try:
        seconds = float(os.environ.get("OVSEG3D_HUB_TIMEOUT", ""))
    except ValueError:
        return PROBE_SECONDS
    return seconds if seconds > 0 else PROBE_SECONDS


def hub_reachable(endpoint: str | None = None, timeout: float | None = None) -> bool:
    """Whether ``endpoint`` (default: :func:`hub_endpoint`) answers one HEAD request within ``timeout``
    seconds (default: :func:`probe_seconds`), whatever its status code. It goes through huggingface_hub's
    own HTTP client, so proxies and certificates are those the download would use, and runs in a daemon
    thread, so a name lookup or a connection that hangs costs ``timeout`` at most. No retries, no output."""
    endpoint = endpoint or hub_endpoint()
    timeout = probe_seconds() if timeout is None else timeout
    seen = _answered.get(endpoint)
    if seen is not None and time.monotonic() - seen < _TRUST_SECONDS:
        return True
    answers: list[bool] = []
    done = threading.Event()

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(endpoint, timeout=timeout, follow_redirects=False)
            answers.append(True)
        except Exception:  # any failure to get a response: name lookup, refused, timeout, TLS, offline mode
            pass
        finally:
            done.set()

    threading.Thread(target=probe, name="ovseg3d-hub-probe", daemon=True).start()
    if done.wait(timeout) and answers:
        _answered[endpoint] = time.monotonic()
        return True
    return False


def hub_unavailable() -> str | None:
    """Why the hub cannot be asked now (offline mode, or it does not answer the probe); ``None`` if it can."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return f"the hub cannot be reached at {hub_endpoint()} (offline?)"
    return None


@contextmanager
def quiet_hub() -> Iterator[None]:
    """huggingface_hub's and transformers' loggers at ERROR and Python warnings off for the block: no
    retry lines, no loading chatter; what fails is reported as one :class:`TeacherError` line."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def hub_files(offline: bool) -> Iterator[None]:
    """For libraries that download through huggingface_hub themselves (open_clip): :func:`quiet_hub`, and
    with ``offline`` huggingface_hub's offline mode for the block, so that cached files still load and
    missing ones fail at once instead of after the retries."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    if offline:
        constants.HF_HUB_OFFLINE = True
    try:
        with quiet_hub():
            yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _is_repo_id(name: str) -> bool:
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:
        return True
    except ValueError:  # HFValidationError
        return False
    return True


def _in_cache(name: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, filename), str)
    except Exception:  # not a valid repo id: there is no cached file either
        return False


def _not_loadable(name: str, what: str, option: str) -> TeacherError | None:
    """The error for ``name`` (neither a local folder nor cached) when the hub cannot provide it; ``None``
    when it is a hub id and the hub answers."""
    if not _is_repo_id(name):
        return TeacherError(
            f"{what} '{name}' is neither a local folder nor a Hugging Face hub id: pass {option} "
            "/path/to/a/downloaded/model"
        )
    why = hub_unavailable()
    if why is None:
        return None
    return TeacherError(
        f"{what} '{name}' is not a local folder, not in the Hugging Face cache, and {why}: pass {option} "
        "/path/to/a/downloaded/model"
    )


def require_model(name: str, what: str, option: str) -> None:
    """Fail fast, before transformers is even imported: the one-line error when ``name`` is neither a local
    folder nor in the Hugging Face cache (its ``config.json``) and the hub cannot provide it. A local folder
    or a cached id is not probed for."""
    if Path(name).expanduser().exists() or _in_cache(name):
        return
    error = _not_loadable(name, what, option)
    if error is not None:
        raise error


def load_pretrained(loader: Callable[..., T], name: str, what: str, option: str, **kwargs: Any) -> T:
    """``loader(name_or_path, local_files_only=..., **kwargs)`` (a transformers ``from_pretrained``).

    A local folder, then the local Hugging Face cache, then (when :func:`hub_unavailable` says it can be
    asked) the hub.

    Args:
        name: a local folder or a hub id.
        what: what is loaded, for the message ("CLIP model").
        option: the command-line option that takes a local path ("--clip-model").
    """
    local = Path(name).expanduser()
    if local.exists():
        try:
            with quiet_hub():
                return loader(str(local), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise TeacherError(f"cannot load {what} from {local}: {_one_line(exc)}") from None
    try:
        with quiet_hub():
            return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    error = _not_loadable(name, what, option)
    if error is not None:
        raise error
    try:
        with quiet_hub():
            return loader(name, **kwargs)
    except Exception as exc:  # transformers' OSError, huggingface_hub / httpx errors: all one line
        raise TeacherError(
            f"cannot load {what} '{name}' from the hub ({type(exc).__name__}: {_one_line(exc)}): pass {option} "
            "/path/to/a/downloaded/model"
        ) from None


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
