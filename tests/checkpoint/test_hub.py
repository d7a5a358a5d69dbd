"""Hugging Face Hub ids as checkpoints, without the network: snapshots placed by hand in a
temporary cache laid out as huggingface_hub lays out its own (models--<ns>--<name>/refs/main
holding a commit hash, snapshots/<hash>/ holding links into blobs/)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from bertforge.checkpoint import hub, load_checkpoint
from bertforge.errors import CheckpointError
from conftest import hf_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def place_in_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """Put the files of directory `files` into `cache` as a downloaded snapshot of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot, blobs = repo / "snapshots" / COMMIT, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(files.iterdir())):
        shutil.copyfile(f, blobs / f"blob{i}")
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def network_attempts(monkeypatch):
    """Every network connection refused and recorded; the test fails if one was attempted,
    unless it expected one and cleared the list."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the tests never reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == []


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, network_attempts):
    """An empty Hugging Face cache in offline mode.

    huggingface_hub copies HF_HUB_OFFLINE and HF_HUB_CACHE into `huggingface_hub.constants` when
    it is first imported, and reads the constants afterwards: setting the environment variables
    here would not reach this process. The constants are patched; the variables are set too,
    for what a subprocess would inherit. `test_cli_honours_the_environment_variables` checks the
    variables themselves in a fresh process."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("repo_id", ["someone/tiny-bert", "tiny-bert"])
def test_cached_hub_id_loads_like_the_local_directory(tmp_path, offline_cache, repo_id):
    local, _ = hf_checkpoint(tmp_path, "qa")
    (local / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    (local / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    snapshot = place_in_cache(offline_cache, repo_id, local)
    ckpt, reference = load_checkpoint(repo_id), load_checkpoint(local)
    assert ckpt.source.resolve() == snapshot.resolve() and ckpt.format == "hf"
    assert ckpt.config == reference.config and ckpt.do_lower_case is True
    assert ckpt.vocab_file is not None and ckpt.vocab_file.read_text() == (local / "vocab.txt").read_text()
    assert ckpt.state.keys() == reference.state.keys()
    assert all(torch.equal(ckpt.state[k], reference.state[k]) for k in ckpt.state)


def test_cached_snapshot_with_pytorch_model_bin(tmp_path, offline_cache):
    local, _ = hf_checkpoint(tmp_path, "base", safe=False)
    if (local / "model.safetensors").exists():  # transformers 5 always writes safetensors
        torch.save(load_file(str(local / "model.safetensors")), local / "pytorch_model.bin")
        (local / "model.safetensors").unlink()
    place_in_cache(offline_cache, "someone/old-bert", local)
    ckpt, reference = load_checkpoint("someone/old-bert"), load_checkpoint(local)
    assert all(torch.equal(ckpt.state[k], reference.state[k]) for k in reference.state)


def test_unknown_id_offline_names_it(offline_cache):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("someone/not-cached")
    assert str(err.value) == ("checkpoint not found: 'someone/not-cached' is neither a local path nor "
                              "in the Hugging Face cache (HF_HUB_OFFLINE is set)")


def test_unknown_id_with_the_hub_unreachable(offline_cache, network_attempts, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, but every connection fails
    with pytest.raises(CheckpointError, match=r"'someone/not-cached' is neither a local path nor in the "
                                              r"Hugging Face cache \(the Hugging Face Hub cannot be reached\)"):
        load_checkpoint("someone/not-cached")
    assert network_attempts  # it did try, and was refused here
    network_attempts.clear()


@pytest.mark.parametrize("source", ["./missing/dir", "runs/x", "runs/model.safetensors", "bert_model.ckpt",
                                    "a/b/c", "/absolute/missing"])
def test_missing_local_path_never_touches_the_hub(tmp_path, monkeypatch, source):
    """`runs/x` could be a Hub id, but `runs/` is a local directory: it is a mistyped path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def fail(*args, **kwargs):
        pytest.fail(f"the Hub was asked for {args}")

    monkeypatch.setattr(hub, "snapshot_download", fail)
    with pytest.raises(CheckpointError, match=f"^checkpoint not found: {Path(source)}$"):
        load_checkpoint(source)


def test_cli_honours_the_environment_variables(tmp_path):
    """A user's way: HF_HUB_OFFLINE and HF_HUB_CACHE in the environment of a fresh process,
    read by huggingface_hub itself (bertforge reads neither)."""
    local, _ = hf_checkpoint(tmp_path, "base")
    cache = tmp_path / "hf_cache"
    place_in_cache(cache, "someone/tiny-bert", local)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONWARNINGS="ignore")
    for key in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)

    def info(repo_id):
        return subprocess.run([sys.executable, "-m", "bertforge", "info", repo_id], capture_output=True,
                              text=True, env=env, timeout=300)

    found = info("someone/tiny-bert")
    assert found.returncode == 0, found.stderr
    assert str(cache.resolve()) in found.stdout and "(hf)" in found.stdout
    missing = info("someone/elsewhere")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "'someone/elsewhere' is neither a local path nor in the Hugging Face cache " \
           "(HF_HUB_OFFLINE is set)" in missing.stderr
