"""Every command-line option the README, docs/usage.md and docs/method.md name exists, and the defaults they state in
the form "`--option` (VALUE)" are the ones `--help` prints (issue 50, item 3).

Where an option is written decides what it is checked against:

- in a command (a line of a code block, or a `code span`) that runs `ovseg3d SUB`: SUB's `--help` (`run` passes
  every `train` option through, so `run` is checked against both);
- in a command that runs `scripts/NAME.py`: that script's source, which must spell the option in quotes
  (`"--option"`, as argparse is given it) or, for a script parsed by tyro, have a field of its name;
- in a command of any other program (pip, chromium, ray, bash scripts/gpu_session.sh, ...): not checked;
- in a code span of prose with no command: the union of every subcommand's `--help`.

The help texts are made in-process (`ovseg3d.cli.main([SUB, "--help"])`), a few seconds for all eleven.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "usage.md", ROOT / "docs" / "method.md"]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9.-]*")
OVSEG3D = re.compile(r"\bovseg3d\s+(?:--debug\s+)?([a-z]+)\b")
SCRIPT = re.compile(r"\bscripts/(\w+\.py)\b")
OTHER = re.compile(r"(?:^|[\s;(])(?:pip|chromium|ray|bash|git|curl|export|cd)\s")
GLOBAL = {"--help", "--debug"}


@cache
def help_text(command: str) -> str:
    from ovseg3d.cli import main

    out = io.StringIO()
    os.environ.setdefault("COLUMNS", "200")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
    return out.getvalue()


@cache
def commands() -> tuple[str, ...]:
    from ovseg3d.cli import COMMANDS

    return tuple(COMMANDS)


def helps_for(command: str) -> str:
    return help_text(command) + (help_text("train") if command == "run" else "")


def all_help() -> str:
    return "".join(help_text(c) for c in commands())


def known(flag: str, text: str) -> bool:
    if flag in GLOBAL:
        return True
    if flag.endswith("-"):  # a family written as `--syn-*`
        return re.search(rf"(?<![\w-]){re.escape(flag)}[a-z]", text) is not None
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def code_lines(text: str):
    """(line number, text) of every line inside a fenced code block."""
    inside = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif inside:
            yield n, line


def prose_spans(text: str):
    """(line number, text) of every `code span` outside fenced blocks."""
    inside = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            for span in re.findall(r"`([^`]+)`", line):
                yield n, span


def mentions():
    """(where, flag, what it is checked against: ('ovseg3d', SUB) | ('script', NAME) | ('any', None))."""
    for page in PAGES:
        text = page.read_text()
        pieces = [(n, s, True) for n, s in code_lines(text)] + [(n, s, False) for n, s in prose_spans(text)]
        for n, piece, is_code in pieces:
            for segment in re.split(r"&&|\|\||;", piece):
                flags = FLAG.findall(segment)
                if not flags:
                    continue
                where = f"{page.relative_to(ROOT)}:{n}"
                sub, script = OVSEG3D.search(segment), SCRIPT.search(segment)
                if script and (not sub or script.start() < sub.start()):  # `python scripts/x.py ...  # ovseg3d prepare`
                    target = ("script", script.group(1))
                elif sub and sub.group(1) in commands():
                    target = ("ovseg3d", sub.group(1))
                elif script:
                    target = ("script", script.group(1))
                elif is_code or OTHER.search(" " + segment):
                    continue  # another program's options, or a code line that is not a command we know
                else:
                    target = ("any", None)
                for flag in flags:
                    yield where, flag.rstrip("."), target


def test_the_pages_name_options_at_all():
    found = list(mentions())
    assert len(found) > 100 and {t[0] for _, _, t in found} == {"ovseg3d", "script", "any"}


def test_every_option_the_docs_name_exists():
    wrong = []
    for where, flag, (kind, name) in mentions():
        if kind == "ovseg3d":
            ok = known(flag, helps_for(name))
        elif kind == "script":
            ok = script_has(name, flag)
        else:
            ok = known(flag, all_help())
        if not ok:
            wrong.append(f"{where}: {flag} ({name or 'any ovseg3d command'})")
    assert not wrong, wrong


def script_has(name: str, flag: str) -> bool:
    """The script spells the option for argparse ("--option"), or, parsed by tyro, has a field of its name."""
    source = ROOT / "scripts" / name
    if not source.exists():
        return False
    text = source.read_text()
    field = flag[2:].removeprefix("no-").replace("-", "_")
    return (
        flag in GLOBAL
        or f'"{flag}"' in text
        or f"'{flag}'" in text
        or ("tyro" in text and re.search(rf"^\s+{field}\s*:", text, re.M) is not None)
    )


def help_defaults() -> dict[str, set[str]]:
    """Each option to the "(default: X)" its help prints, in every subcommand that has it."""
    defaults: dict[str, set[str]] = {}
    for command in commands():
        entries: list[list[str]] = []
        for line in help_text(command).splitlines():
            head = re.match(r"^\s{0,4}(--[\w.-]+)", line)
            if head:
                entries.append([line])
            elif entries:
                entries[-1].append(line)
        for entry in entries:
            joined = " ".join(" ".join(entry).split())
            value = re.search(r"\(default: ([^)]*)\)", joined)
            if value:
                for flag in FLAG.findall(entry[0].strip().split("  ")[0]):
                    defaults.setdefault(flag, set()).add(value.group(1))
    return defaults


def stated_defaults():
    """(where, flag, value) for prose of the form `--option` (5 7 10) or (8 %): numbers only, as written."""
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for flag, value in re.findall(r"`(--[a-z][a-z0-9-]*)` \(([0-9][0-9. ]*%?)\)", line):
                yield f"{page.relative_to(ROOT)}:{n}", flag, value.strip()


def as_numbers(value: str) -> list[float]:
    scale = 0.01 if value.endswith("%") else 1.0
    return [float(x) * scale for x in value.rstrip("%").split()]


def same_numbers(value: str, printed: str) -> bool:
    try:
        return as_numbers(value) == pytest.approx([float(x) for x in printed.split()])
    except ValueError:
        return False


def test_stated_defaults_match_the_help():
    defaults = help_defaults()
    stated = list(stated_defaults())
    assert stated, "no '`--option` (VALUE)' left to check: drop this test or its pattern"
    wrong = []
    for where, flag, value in stated:
        printed = defaults.get(flag)
        if printed is None:
            wrong.append(f"{where}: {flag} prints no default")
            continue
        if not any(same_numbers(value, p) for p in printed):
            wrong.append(f"{where}: {flag} ({value}) but --help says {sorted(printed)}")
    assert not wrong, wrong
