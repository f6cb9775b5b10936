"""Result files from the JSON the older ``scripts/bench_*.py`` write (``ovseg3d bench import KIND FILE``).

Those files carry the figures and a description of the machine but not the commit nor the command; the import
asks for both, and records where the file came from. Only figures the file holds are kept: nothing is typed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovseg3d.bench import result as results

SEEDS = ("full", "seed1", "seed2")
"""bench_distill's three runs of the method on one field (distillation seeds 0, 1, 2)."""


def _machine(old: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    threads = old.get("cpu_threads")
    gpu = None if "cpu" in str(old.get("device", "cpu")).split()[0] else old.get("device")
    keep = {k: old[k] for k in ("device", "torch", "machine") if k in old}
    return {
        "description": description or (f"one {gpu}" if gpu else f"{threads} CPU cores"),
        "cpu": None,
        "cores": threads,
        "gpu": gpu,
        **keep,
    }


def _teacher(text: str) -> dict[str, Any]:
    """bench_distill's teacher line ('synthetic (persistent errors)', 'clip') as a teacher record."""
    if text.startswith("synthetic"):
        errors = text.partition("(")[2].split()[0] if "(" in text else "per-view"
        return {"kind": "synthetic", "errors": errors, "weights": None}
    if text.startswith("clip"):
        return {"kind": "clip", "errors": None, "weights": "random" if "random" in text else "real"}
    return {"kind": "none", "errors": None, "weights": None}


def distill(old: dict[str, Any]) -> dict[str, Any]:
    """The JSON of ``scripts/bench_distill.py`` (folded since into ``ovseg3d bench run distill``, whose result has
    the same keys): per scene, the method's seeds (full, seed1, seed2) as the repeats of the ``default`` variant,
    each other ablation a variant of one run."""
    runs: dict[str, list[float]] = {}
    for scene, rows in old["scenes"].items():
        for ablation, row in rows.items():
            variant = "default" if ablation in SEEDS else ablation
            for name in ("miou", "teacher_miou", "accuracy", "psnr"):
                if row.get(name) is not None:
                    runs.setdefault(f"{scene}/{variant}/{name}", []).append(row[name])
    seconds = sum(
        r.get("train_seconds_wall") or r.get("distill_seconds_wall") or 0.0
        for rows in old["scenes"].values()
        for r in rows.values()
    )
    variants = sorted({("default" if a in SEEDS else a) for rows in old["scenes"].values() for a in rows})
    return {
        "benchmark": "distill",
        "machine": _machine(old),
        "teacher": _teacher(old.get("teacher", "synthetic")),
        "settings": {
            "preset": old.get("preset"),
            "overrides": old.get("overrides", {}),
            "scenes": list(old["scenes"]),
            "variants": variants,
            "repeats": len(SEEDS),
        },
        "figures": {k: results.summary(v) for k, v in runs.items()},
        "seconds": round(seconds, 1),
    }


def prepare(old: dict[str, Any]) -> dict[str, Any]:
    """``scripts/bench_prepare.py``'s JSON: per photo set, one run each (keys ``SET/default/FIGURE``)."""
    runs: dict[str, list[float]] = {}
    loads = []
    for name, row in old.items():
        figures = {
            "images": row["images"],
            "registered": row["registered"],
            "reprojection_px": row["mean_reprojection_error_px"],
            "seconds": row["seconds"]["total"],
            "wall_s": row.get("wall_s"),
            "sfm_cpu_s": row.get("sfm_cpu_s"),
            "matched_pairs": row.get("matched_pairs"),
            "ate_share_pct": None if not row.get("ate") else 100 * row["ate"]["rmse_share"],
            "load": (row.get("load_average") or {}).get("mean"),
        }
        for key, value in figures.items():
            if value is not None:
                runs[f"{name}/default/{key}"] = [value]
        if row.get("load_average"):
            loads.append(row["load_average"])
    cores = loads[0]["cpus"] if loads else None
    shared = any(x.get("shared") for x in loads)
    description = f"{cores} CPU cores" + (", shared with other jobs" if shared else "")
    return {
        "benchmark": "prepare",
        "machine": {"description": description, "cpu": None, "cores": cores, "gpu": None},
        "teacher": {"kind": "none", "errors": None, "weights": None},
        "settings": {"sets": list(old), "matchers": {k: v.get("matcher") for k, v in old.items()}},
        "figures": {k: results.summary(v) for k, v in runs.items()},
        "seconds": round(sum(r.get("wall_s") or 0.0 for r in old.values()), 1),
    }


KINDS = {"distill": distill, "prepare": prepare}
"""Which older script's JSON each importer reads."""


def import_file(kind: str, path: Path, commit: str, command: str, measured: str, note: str = "") -> dict:
    """A result (validated) from ``path``, an older script's JSON of ``kind``, measured at ``commit`` by
    ``command`` on the day ``measured``."""
    if kind not in KINDS:
        raise results.ResultError(f"bench import: unknown kind '{kind}'; known: {', '.join(KINDS)}")
    data = KINDS[kind](json.loads(Path(path).read_text()))
    data = {
        "benchmark": data["benchmark"],
        "command": command,
        "commit": commit,
        "measured": measured,
        **{k: v for k, v in data.items() if k != "benchmark"},
        "source": {"file": str(path), "note": note},
    }
    return results.validate(data, path)
