"""The Kubernetes manifests under deploy/k8s: valid YAML of the Kubeflow kinds, 2 nodes x 8 GPUs,
the command each pod runs is a bertforge subcommand whose flags the CLI accepts, and each pod fits
the image it names (docker/Dockerfile.<tag>): its working directory, the files and programs its
command uses, its user."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from compat_helpers import parse
from dockerfiles import FLAVOURS, dockerfile, image_has, user_uid

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = ["pytorchjob-pretrain.yaml", "mpijob-pretrain.yaml"]
# Programs an image's base provides: torch's torchrun in every image (the CPU one pip-installs
# torch); NVIDIA's NGC PyTorch image also ships Open MPI, whose mpirun is on its PATH.
BASE_PROGRAMS = {"python:": {"torchrun", "python"}, "nvcr.io/nvidia/pytorch:": {"torchrun", "python", "mpirun"},
                 "vault.habana.ai/gaudi-docker/": {"torchrun", "python"}}
APT_PROGRAMS = {"/usr/sbin/sshd": "openssh-server"}


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


@pytest.mark.parametrize("name", MANIFESTS)
def test_commands_match_the_slurm_script(name):
    """One recipe for every launcher: the same bertforge flags as scripts/slurm_pretrain.sbatch."""
    slurm = (REPO / "scripts" / "slurm_pretrain.sbatch").read_text()
    assert "--config configs/pretrain/bert_large_phase1.yaml" in slurm
    assert "configs/pretrain/bert_large_phase1.yaml" in (REPO / "deploy" / "k8s" / name).read_text()


def pods(job: dict) -> list[dict]:
    """The pod specs of every replica type."""
    replicas = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
    return [spec["template"]["spec"] for spec in replicas.values()]


def image_flavour(container: dict) -> str:
    tag = container["image"].rsplit(":", 1)[1]
    assert tag in FLAVOURS, f"{container['image']}: tag names none of docker/Dockerfile.{{{','.join(FLAVOURS)}}}"
    return tag


@pytest.mark.parametrize("name", MANIFESTS)
def test_pods_fit_their_image(name):
    for pod in pods(manifest(name)):
        (container,) = pod["containers"]
        flavour = image_flavour(container)
        image = dockerfile(flavour)
        # the pod works where the image put the recipes, and every file its command names is there
        workdir = container["workingDir"]
        assert workdir == image.effective("cli", "WORKDIR")
        argv = [*container["command"], *container.get("args", [])]
        files = [a for a in argv if re.search(r"\.(ya?ml|json)$", a)]
        for path in files:
            absolute = path if path.startswith("/") else f"{workdir}/{path}"
            assert image_has(image, "cli", flavour, absolute), f"{name}: {absolute} is not in the image"
        # the program it starts is in the image
        program = argv[0]
        base = image.root_base("cli")
        provided = next(p for prefix, p in BASE_PROGRAMS.items() if base.startswith(prefix))
        if program in APT_PROGRAMS:
            assert APT_PROGRAMS[program] in " ".join(image.runs("cli")), f"{name}: {program} not installed"
        else:
            assert program in provided, f"{name}: {program} is not in {base}"
        # it runs as the image's user, never as root
        _, uid, _ = user_uid(image, "cli")
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"] is True


def test_mpijob_ssh_fits_the_image():
    """mpi-operator mounts the job's SSH keys at sshAuthMountPath; the workers' sshd reads them
    there through the config file the image wrote."""
    job = manifest("mpijob-pretrain.yaml")
    (worker,) = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    image = dockerfile(image_flavour(worker))
    _, _, home = user_uid(image, "cli")
    assert job["spec"]["sshAuthMountPath"] == f"{home}/.ssh"
    assert job["spec"].get("mpiImplementation", "OpenMPI") == "OpenMPI"  # NGC's MPI
    argv = [*worker["command"], *worker["args"]]
    assert argv[:2] == ["/usr/sbin/sshd", "-De"]  # in the foreground: the pod lives while it does
    config = argv[argv.index("-f") + 1]
    assert re.search(rf"> {re.escape(config)}\b", " ".join(image.runs("cli")))
