"""The README's shell commands run as written.

Each ```bash block of README.md runs, in order, in a copy of the repository's layout (scripts/,
configs/, ../shared/data beside it), unless an HTML comment on the line before it marks it:

    <!-- needs: WHAT -->             not run here; WHAT says what it needs that does not ship
                                     (data, a GPU, Docker, the network, minutes of CPU)
    <!-- test with: FLAGS -->        run with FLAGS appended to its one command, which the README's
                                     own text must give (e.g. the demo's --max_steps 2)

The demo runs in this environment (BERTFORGE_PYTHON) instead of installing its own. The Python
blocks need Hub models: tests/test_api.py runs them from an offline Hub cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@dataclass
class Block:
    line: int  # where the block starts in README.md (1-based)
    language: str
    code: str
    needs: str | None
    test_with: str | None


def blocks(text: str) -> list[Block]:
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.fullmatch(r"```(\w*)", lines[i])
        if opening:
            end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
            marker = re.fullmatch(r"<!-- (needs|test with): (.+?) -->", lines[i - 1]) if i else None
            kind, value = (marker.group(1), marker.group(2).strip()) if marker else (None, None)
            found.append(Block(i + 1, opening.group(1), "\n".join(lines[i + 1:end]),
                               value if kind == "needs" else None, value if kind == "test with" else None))
            i = end
        i += 1
    return found


def prose(text: str) -> str:
    """The README without its code blocks and comments: what a reader is told."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def test_readme_is_for_users():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)  # no dated measurements
    commands = [b.code for b in blocks(text) if b.language == "bash"]
    assert "bash scripts/demo.sh" in commands and "bash scripts/test.sh" in commands  # the two commands
    # the install lines say what works: from the clone or a wheel built there (no package index has bertforge)
    install = "\n".join(commands)
    assert not re.search(r"pip install ['\"]?bertforge\b", install)
    assert re.search(r"^pip install \.\s", install, re.M) and "pip wheel" in install
    # the recipes do not come with the installed package: the README says where they are
    assert "come with the\nclone" in text or "come with the clone" in text


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
                                  "benchmarks/STATUS.md"])
def test_relative_links_resolve(page):
    path = REPO / page
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        assert (path.parent / link).exists(), f"{page}: {link}"


def test_every_block_is_run_or_says_what_it_needs():
    text = README.read_text(encoding="utf-8")
    found = blocks(text)
    assert {b.language for b in found} <= {"bash", "python"}
    for b in found:
        assert b.needs is None or len(b.needs) > 10, f"README.md:{b.line}: say what it needs"
        if b.test_with:
            # only what the README itself tells readers to add
            assert f"{b.code} {b.test_with}" in prose(text), f"README.md:{b.line}: {b.test_with!r} is not in the text"
            assert len(b.code.splitlines()) == 1
    assert [b for b in found if b.language == "bash" and b.needs is None], "nothing would run"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository's layout as a fresh clone has it, with ../shared/data beside it."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "bertforge"
    for name in ("scripts", "configs"):
        shutil.copytree(REPO / name, repo / name)
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(SHARED_DATA)
    return repo


@pytest.mark.slow
def test_readme_commands_run_as_written(clone):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "BERTFORGE_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    ran = []
    for b in blocks(README.read_text(encoding="utf-8")):
        if b.language != "bash" or b.needs:
            continue
        code = f"{b.code} {b.test_with}" if b.test_with else b.code
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"README.md:{b.line}:\n{code}\n{done.stderr[-3000:]}"
        ran.append(code)
    assert any("scripts/demo.sh" in c for c in ran)
    # the demo wrote what the README says it writes, where it says
    for name in ("model.safetensors", "predictions.json", "eval_results.json"):
        assert (clone / "runs" / "squad_demo" / name).is_file(), name
    assert (clone / "runs" / "squad_demo_hf" / "config.json").is_file()
    assert (clone / "runs" / "squad_demo" / "curves.png").stat().st_size > 0
