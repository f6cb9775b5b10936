"""Benchmarks as data: one harness, results kept as JSON files, the README's and docs' tables made from them.

Why a package behind ``ovseg3d bench`` and not a folder of scripts: the harness is code that tests import
(the result schema, the scene and variant registry, the tables), that ruff and the import-graph test see with the
rest, and that an installed ovseg3d can run (``ovseg3d bench run NAME``) without a path hack. Each benchmark
stays a small module here that declares its scenes, variants and figures (:class:`ovseg3d.bench.harness.Benchmark`);
what a benchmark needs of the pipeline it imports inside its ``measure`` function, so ``import ovseg3d.bench``
stays light.

- :mod:`ovseg3d.bench.result`: a result file (machine, commit, command, teacher, figures with median and range,
  seconds), written and refused.
- :mod:`ovseg3d.bench.harness`: scenes, variants, ``--set`` overrides and seeded repeats, in one loop.
- :mod:`ovseg3d.bench.tables`: the headline rows and the generated blocks of README.md and docs/benchmarks.md.
- :mod:`ovseg3d.bench.cli`: ``ovseg3d bench list | run | table``.
"""
