"""README.md and docs/ run as written: every bash/python snippet (convention: docs/README.md), the CLI
reference is what the parsers print, and the README stays a README."""
from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from docs_snippets import REPO, page_is_slow, pages, snippets

# Repository entries a page's commands may name by relative path (mixa/assets/..., benchmarks/..., ...):
# each page runs in its own empty directory holding links to these, so its outputs stay there.
_LINKED = ["mixa", "benchmarks", "tools", "recipes", "tests", "pyproject.toml"]
_SHELL_SYNTAX = re.compile(r"[|&;<>$`*(){}]|^\w+=")


def _params():
    params = []
    for path in pages():
        name = str(path.relative_to(REPO))
        runnable = [s for s in snippets(path) if s.run is not None]
        if not runnable:
            continue
        if page_is_slow(path):
            params.append(pytest.param(path, True, id=f"{name}[slow]", marks=pytest.mark.slow))
            continue
        params.append(pytest.param(path, False, id=name))
        if any(s.slow for s in runnable):
            params.append(pytest.param(path, True, id=f"{name}[slow]", marks=pytest.mark.slow))
    return params


def _workdir(tmp_path: Path) -> Path:
    for entry in _LINKED:
        (tmp_path / entry).symlink_to(REPO / entry)
    shims = tmp_path / ".bin"
    shims.mkdir()
    # scripts, not links: a link to a venv's python would lose the venv
    for name, command in (("python", f'"{sys.executable}"'), ("mixa", f'"{sys.executable}" -m mixa')):
        (shims / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (shims / name).chmod(0o755)
    return shims


def _mixa_argv(code: str):
    """[(module, argv)] of every command when ``code`` is only plain ``mixa ...`` / ``python -m mixa...``
    lines (run in this process, which has torch loaded already), else None (run by bash)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if _SHELL_SYNTAX.search(line.split("#")[0]):
            return None
        if words[0] == "mixa":
            commands.append(("mixa", words[1:]))
        elif words[:2] == ["python", "-m"] and len(words) > 2 and words[2].split(".")[0] == "mixa":
            commands.append((words[2], words[3:]))
        else:
            return None
    return commands


def _run_module(module: str, argv) -> int:
    """``python -m module argv...`` in this process; its exit status."""
    if module in ("mixa", "mixa.cli"):
        from mixa.cli import main

        return main(argv)
    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        with warnings.catch_warnings():  # runpy warns when the module was imported before (by an earlier block)
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _run(snippet, cwd: Path, shims: Path):
    where = f"{snippet.page}:{snippet.line}"
    if snippet.lang == "python":
        namespace = {"__name__": "__main__"}
        exec(compile(snippet.run, where, "exec"), namespace)  # the docs' own code, as a reader runs it
        return
    commands = _mixa_argv(snippet.run)
    if commands is not None:
        for module, argv in commands:
            assert _run_module(module, argv) == 0, f"{where}: python -m {module} {shlex.join(argv)} failed"
        return
    env = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet.run], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("path,with_slow", _params())
def test_page_runs_as_written(path, with_slow, tmp_path, monkeypatch):
    shims = _workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    for snippet in snippets(path):
        if snippet.run is None or (snippet.slow and not with_slow):
            continue
        _run(snippet, tmp_path, shims)


def test_every_marker_is_well_formed_and_every_page_is_reachable():
    index = (REPO / "docs" / "README.md").read_text()
    for path in pages():
        snippets(path)  # raises on an offline marker without code or a 'not run' without a reason
        if path.parent != REPO and path.name != "README.md":
            rel = str(path.relative_to(REPO / "docs"))
            assert f"({rel})" in index, f"docs/README.md does not link {rel}"


def test_readme_is_a_readme():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    # .ci/run greps this line: the fresh-clone test command
    assert re.search(r"^pip install .*# tests$", text, re.M)
    # CPU-only machines: torch's CPU wheels first, or pip pulls the CUDA build and its nvidia wheels
    install = text.index("--index-url https://download.pytorch.org/whl/cpu")
    assert install < text.index("pip install -e . && mixa quickstart")


def test_cli_reference_is_current():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from cli_reference import render
    finally:
        sys.path.remove(str(REPO / "tools"))
    committed = (REPO / "docs" / "cli.md").read_text()
    assert committed == render(), ("docs/cli.md is stale: regenerate it with "
                                   "`python tools/cli_reference.py`")
