"""The Kubernetes manifests under deploy/k8s: valid YAML of the Kubeflow kinds, 2 nodes x 8 GPUs,
and the command each pod runs is a bertforge subcommand whose flags the CLI accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from compat_helpers import parse

REPO = Path(__file__).resolve().parents[2]


def manifest(name: str) -> dict:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / name).read_text()))
    assert len(docs) == 1
    return docs[0]


def bertforge_argv(container: dict) -> list[str]:
    argv = [*container.get("command", []), *container.get("args", [])]
    assert "bertforge" in argv, argv
    return argv[argv.index("bertforge") + 1:]


def check_command(argv: list[str], monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the image's working directory holds the repository's configs/
    cfg = parse(argv)
    assert cfg.data.input_dir == "/data/wiki_seq128" and cfg.train.resume is True
    assert cfg.train.max_steps == 7038 and cfg.train.optimizer == "lamb"


def test_pytorchjob(monkeypatch):
    job = manifest("pytorchjob-pretrain.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["spec"]["nprocPerNode"] == "8"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 2
    for spec in replicas.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator injects its environment into this one
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert container["command"] == ["torchrun"] and container["args"][0] == "--no-python"
        check_command(bertforge_argv(container), monkeypatch)


def test_mpijob(monkeypatch):
    job = manifest("mpijob-pretrain.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    workers = job["spec"]["mpiReplicaSpecs"]["Worker"]
    assert workers["replicas"] == 2 and job["spec"]["slotsPerWorker"] == 1
    (worker,) = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    (launcher,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    argv = [*launcher["command"], *launcher["args"]]
    assert argv[:3] == ["mpirun", "-np", "2"]
    torchrun = argv[argv.index("torchrun"):argv.index("bertforge")]
    assert torchrun[torchrun.index("--nnodes") + 1] == "2" and torchrun[torchrun.index("--nproc_per_node") + 1] == "8"
    endpoint = torchrun[torchrun.index("--rdzv_endpoint") + 1]
    assert endpoint.startswith(f"{job['metadata']['name']}-worker-0.{job['metadata']['name']}-worker:")
    check_command(bertforge_argv(launcher), monkeypatch)


@pytest.mark.parametrize("name", ["pytorchjob-pretrain.yaml", "mpijob-pretrain.yaml"])
def test_commands_match_the_slurm_script(name):
    """One recipe for every launcher: the same bertforge flags as scripts/slurm_pretrain.sbatch."""
    slurm = (REPO / "scripts" / "slurm_pretrain.sbatch").read_text()
    assert "--config configs/pretrain/bert_large_phase1.yaml" in slurm
    assert "configs/pretrain/bert_large_phase1.yaml" in (REPO / "deploy" / "k8s" / name).read_text()
