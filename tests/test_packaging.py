"""Packaging: the core install stays lean (optional extras for GLUE metrics, export, tracking,
plots; a missing one is a clear error naming it, before any work), and the Dockerfiles install
the package and check that the command runs. Docker cannot run on the machines these tests run
on, so the images were never built here: the Dockerfiles are parsed and checked instead."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bertforge.cli import main
from conftest import shared

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("sklearn", "scipy", "onnx", "onnxruntime", "onnxscript", "tensorboard", "wandb", "matplotlib",
            "fastapi", "uvicorn", "h5py")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_optional_packages_are_extras_not_core_dependencies():
    project = pyproject()["project"]
    core = " ".join(project["dependencies"]).lower()
    for name in ("scikit-learn", "scipy", "onnx", "tensorboard", "wandb", "matplotlib", "fastapi", "uvicorn", "h5py"):
        assert name not in core
    extras = project["optional-dependencies"]
    assert {"glue", "export", "tracking", "plot", "serve", "hdf5", "test"} <= extras.keys()
    assert any(d.startswith("onnxscript") for d in extras["export"])
    # CI installs .[test]: it must bring every extra so that their tests run
    assert "bertforge[glue,export,tracking,plot,serve,hdf5]" in extras["test"]


def test_every_module_imports_without_the_optional_packages():
    """A fresh interpreter where importing any optional package fails, as on a core install."""
    blocker = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError("blocked: " + name, name=name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil, bertforge
from bertforge.errors import ConfigError
names = [m.name for m in pkgutil.walk_packages(bertforge.__path__, "bertforge.")
         if m.name != "bertforge.__main__"]  # that one runs the command
for name in names:
    try:
        importlib.import_module(name)
    except ConfigError as e:  # only a module that is an extra's feature itself may refuse, naming it
        assert name == "bertforge.serve.app" and 'bertforge[serve]' in str(e), (name, e)
from bertforge.cli import main
assert main(["--help"]) == 0
print(len(names), "modules")
"""
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.splitlines()[-1].split()[0]) > 40  # every module was imported


def test_glue_evaluation_without_the_extra_fails_before_any_work(tmp_path, monkeypatch, capsys, vocab_file):
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)  # as if scikit-learn were not installed
    out = tmp_path / "out"
    code = main(["finetune", "glue", "--task", "mrpc", "--data_dir", str(shared("glue", "MRPC")), "--do_train",
                 "--do_eval", "--bert_model", "tiny", "--vocab_file", str(vocab_file), "--do_lower_case", "true",
                 "--output_dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "GLUE's metrics needs the Python package 'scikit-learn'" in err
    assert "pip install 'bertforge[glue]'" in err
    assert not out.exists()


# ---- Dockerfiles ------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    result = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


@pytest.mark.parametrize("flavour,base", [("cpu", "python:3.11-slim"), ("cuda", "nvidia/cuda:")])
def test_dockerfile_installs_the_package_and_runs_the_command(flavour, base):
    dockerfile = REPO / "docker" / f"Dockerfile.{flavour}"
    steps = instructions(dockerfile)
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and steps[0][1].startswith(base)
    assert set(kinds) <= {"FROM", "ENV", "WORKDIR", "RUN", "COPY", "ENTRYPOINT", "CMD"}
    # torch pinned as scripts/venv.sh pins it, before the package (whose dependency it is)
    pin = re.search(r"torch==([\d.]+)", (REPO / "scripts" / "venv.sh").read_text()).group(1)
    runs = [args for k, args in steps if k == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if f"pip install torch=={pin}" in r)
    package_step = next(i for i, r in enumerate(runs) if re.search(r'pip install "\.\[[a-z,]+\]"', r))
    assert torch_step < package_step
    if flavour == "cpu":
        assert "whl/cpu" in runs[torch_step]  # the CPU build, not the CUDA one
    else:
        assert "--index-url" not in runs[torch_step]  # the default Linux wheel is the CUDA build
    # every extra it installs exists
    extras = re.search(r'\.\[([a-z,]+)\]', runs[package_step]).group(1).split(",")
    assert set(extras) <= pyproject()["project"]["optional-dependencies"].keys()
    # what it copies exists, and is copied before the install
    copies = [(i, src) for i, (k, args) in enumerate(steps) if k == "COPY" for src in args.split()[:-1]]
    for _, src in copies:
        assert (REPO / src).exists(), src
    assert {src for _, src in copies} >= {"pyproject.toml", "src", "README.md"}  # README: the package's readme
    install_at = [i for i, (k, a) in enumerate(steps) if k == "RUN" and a == runs[package_step]][0]
    assert all(i < install_at for i, _ in copies)
    # the build checks the command, and the image runs it
    assert runs[-1] == "bertforge --help" and runs.index("bertforge --help") > package_step
    entry = next(json.loads(a) for k, a in steps if k == "ENTRYPOINT")
    assert entry == ["bertforge"]
    assert pyproject()["project"]["scripts"]["bertforge"] == "bertforge.cli:main"
    # the build context keeps only what is copied
    ignore = (REPO / "docker" / f"Dockerfile.{flavour}.dockerignore").read_text().split()
    assert "*" in ignore and {"!pyproject.toml", "!README.md", "!src/"} <= set(ignore)
