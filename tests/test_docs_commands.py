"""Every command the README and docs/ show runs as written: its flags parse.

A command in a ```bash block that calls ``specexec``, ``run_exp.py`` or a script in ``benchmarks/`` is
parsed by that program's own argument parser (the benchmark scripts through ``--help``: every flag the
docs pass must be one the script lists); ``pip install -e ".[extra]"`` must name an extra that exists.
Lines with ``...`` are placeholders and are skipped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for each command line of the bash blocks, continuation lines joined."""
    found = []
    for page in PAGES:
        blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if not line or line.startswith("#") or "..." in line:
                    continue
                for part in re.split(r"\s*&&\s*", line):
                    words = shlex.split(part)
                    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # environment settings
                        words = words[1:]
                    if "<" in words:  # a redirection
                        words = words[:words.index("<")]
                    if words:
                        found.append((f"{page.relative_to(ROOT)}: {part}", words))
    return found


def program(words: list[str]) -> tuple[str, list[str]] | None:
    """Which program a command runs, and its arguments."""
    if words[0] in ("specexec", ".venv/bin/specexec"):
        return "specexec", words[1:]
    if words[0].endswith("python") or words[0].endswith("python3"):
        if len(words) > 1 and words[1] == "run_exp.py":
            return "run_exp", words[2:]
        if len(words) > 1 and words[1].startswith("benchmarks/") and words[1].endswith(".py"):
            return words[1], words[2:]
        if words[1:4] == ["-m", "pip", "install"]:
            return "pip", words[4:]
        if words[1:3] == ["-m", "pytest"]:
            return "pytest", words[3:]
    if words[0] == "bash" and len(words) > 1:
        return "bash", words[1:]
    return None


CASES = [(where, *found) for where, words in commands() if (found := program(words))]


def test_the_docs_show_commands_of_every_kind():
    kinds = {kind if not kind.startswith("benchmarks/") else "benchmarks" for _, kind, _ in CASES}
    assert {"specexec", "run_exp", "benchmarks", "pip", "pytest", "bash"} <= kinds, kinds


def test_test_files_and_scripts_named_exist():
    for where, kind, args in CASES:
        if kind in ("pytest", "bash"):
            for arg in args:
                if arg.endswith((".py", ".sh")):
                    assert (ROOT / arg).exists(), f"{where}: no {arg}"


@pytest.mark.parametrize("where,kind,args", [c for c in CASES if c[1] in ("specexec", "run_exp")],
                         ids=lambda v: v if isinstance(v, str) and ":" in v else "")
def test_specexec_and_runner_commands_parse(where, kind, args):
    import argparse

    if kind == "specexec":
        from specexec.cli import build_parser

        parser = build_parser()
    else:
        from specexec.experiments.loop import add_arguments

        parser = argparse.ArgumentParser(prog="run_exp.py")
        add_arguments(parser)
    try:
        parser.parse_args(args)
    except SystemExit as stop:
        assert stop.code == 0, f"{where}: does not parse"


def test_benchmark_commands_use_flags_the_scripts_have():
    by_script: dict[str, list[tuple[str, list[str]]]] = {}
    for where, kind, args in CASES:
        if kind.startswith("benchmarks/"):
            by_script.setdefault(kind, []).append((where, args))
    assert by_script
    for script, uses in by_script.items():
        assert (ROOT / script).exists(), f"{uses[0][0]}: no {script}"
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{script} --help: {out.stderr[-500:]}"
        listed = set(re.findall(r"(--[a-z][a-z0-9_-]*)", out.stdout))
        for where, args in uses:
            for flag in (a.split("=")[0] for a in args if a.startswith("--")):
                assert flag in listed, f"{where}: {script} has no {flag}"


def test_pip_extras_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for where, kind, args in CASES:
        if kind == "pip":
            for arg in args:
                for named in re.findall(r"\[([a-z0-9_,-]+)\]", arg):
                    assert set(named.split(",")) <= extras, f"{where}: no extra {named}"
