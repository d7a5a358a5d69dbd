"""Packing the GPU suite for an offline machine (benchmarks/pack_suite.py, through
benchmarks/prepare_device.sh): the bundle's layout and size, and a suite run from the bundle
alone (its wheel installed into an empty folder, its data, its scripts), without the checkout.
No network: the bundle is made without dependency wheels (--no_download)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, SHARED_DATA

SCRIPT = REPO / "benchmarks" / "prepare_device.sh"


def env_with_src(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **extra)


def test_without_a_python_that_has_torch_it_says_what_to_pass(tmp_path):
    """Outside a checkout with a .venv, with PYTHON unusable and python3 / python lacking torch."""
    script = tmp_path / "benchmarks" / "prepare_device.sh"
    script.parent.mkdir()
    shutil.copy2(SCRIPT, script)
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("python3", "python"):
        (fake / name).write_text("#!/bin/sh\nexit 1\n")
        (fake / name).chmod(0o755)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{fake}:/usr/bin:/bin", PYTHON=str(tmp_path / "no-python")))
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass PYTHON=" in lines[0] and str(tmp_path / "no-python") in lines[0]


def test_the_given_python_runs_the_packer():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                          env=env_with_src(PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    assert "Pack the GPU suite for a machine without network access" in proc.stdout


@pytest.mark.slow
def test_bundle_layout_and_a_suite_run_from_it_alone(tmp_path):
    bundle = tmp_path / "bundle"
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(bundle), "--no_download", "--wiki_documents", "40",
                           "--source_data", str(SHARED_DATA)], capture_output=True, text=True,
                          env=env_with_src(PYTHON=sys.executable), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    manifest = json.loads((bundle / "bundle.json").read_text())
    on_disk = {str(f.relative_to(bundle)) for f in bundle.rglob("*") if f.is_file()} - {"bundle.json", "README.txt"}
    assert set(manifest["files"]) == on_disk
    total = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    assert total <= 60 * 2**20
    squad = "data/squad/v1.1/dev-v1.1.json"
    assert manifest["files"][squad]["sha256"] == hashlib.sha256((SHARED_DATA / "squad/v1.1/dev-v1.1.json")
                                                                .read_bytes()).hexdigest()
    assert (bundle / "data/vocab/bert-base-uncased/vocab.txt").read_bytes() == (
        SHARED_DATA / "vocab/bert-base-uncased/vocab.txt").read_bytes()
    train = (bundle / "data/glue/SST-2/train.tsv").read_text(encoding="utf-8").splitlines()
    assert len(train) == 1 + 8000 and train[0] == "sentence\tlabel"
    assert (bundle / "data/pretraining/wiki_seq128/manifest.json").is_file()
    assert {"run_gpu_suite.py", "accuracy.py", "accuracy_jobs/pretrain.py"} <= {
        str(f.relative_to(bundle / "benchmarks")) for f in (bundle / "benchmarks").rglob("*.py")}
    (wheel,) = (bundle / "wheels").glob("bertforge-*.whl")  # no dependency wheels: --no_download
    names = zipfile.ZipFile(wheel).namelist()
    assert "bertforge/bench/suite.py" in names and "bertforge/bench/cpu_flash.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert "--find-links wheels" in (bundle / "README.txt").read_text()

    # The bundle alone: its wheel in an empty folder, run from outside the checkout.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import bertforge; print(bertforge.__file__)"], env=env,
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(site))
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(bundle / "benchmarks" / "run_gpu_suite.py"), "--smoke", "--in_process",
                           "--only", "squad-infer", "--out", str(out)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (out / "gpu_suite.jsonl").read_text().splitlines()]
    assert "error" not in row, row["error"]
    assert row["args"]["squad_file"] == str(bundle / "data" / "squad/v1.1/dev-v1.1.json")  # the bundle's data
    assert row["bertforge"]["seq_per_s"] > 0
