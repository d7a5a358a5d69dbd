"""The container images under docker/: what each installs, copies, runs and exposes, checked
against the package (pyproject.toml, the CLI, the server's routes) and the build context. Docker
cannot run on the machines these tests run on, so the images were never built here: the
Dockerfiles are parsed (tests/dockerfiles.py) and checked instead."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields

import pytest
from dockerfiles import (FLAVOURS, REPO, copies, dockerfile, exec_form, image_has, in_context,
                               user_uid)

from bertforge.serve.config import ServeArgs

# Where each image's torch comes from: the CPU image installs torch's CPU build; the GPU images
# keep the build their vendor's base image ships (NVIDIA's NGC, Habana's installer image).
BASES = {
    "cpu": r"python:3\.\d+-slim",
    "cuda": r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3",
    "hpu": r"vault\.habana\.ai/gaudi-docker/\d+\.\d+\.\d+/ubuntu\d\d\.\d\d/habanalabs/pytorch-installer-\d+\.\d+\.\d+:latest",
}
ALLOWED = {"ARG", "FROM", "ENV", "WORKDIR", "RUN", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def expand_extras(names: set[str]) -> set[str]:
    """Extras with the ones they name (`all` = bertforge[glue,...]) expanded."""
    extras = project()["optional-dependencies"]
    result, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in result:
            continue
        result.add(name)
        for req in extras[name]:
            inner = re.fullmatch(r"bertforge\[([a-z0-9,-]+)\]", req)
            if inner:
                todo += inner.group(1).split(",")
    return result


def installed_extras(flavour: str) -> set[str]:
    runs = dockerfile(flavour).runs("cli")
    (install,) = [r for r in runs if re.search(r'pip install "\.\[', r)]
    return expand_extras(set(re.search(r'"\.\[([a-z0-9,-]+)\]"', install).group(1).split(",")))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_base_image_and_torch(flavour):
    image = dockerfile(flavour)
    assert {k for stage in image.stages for k, _ in stage.steps} <= ALLOWED
    assert [s.name for s in image.stages] == ["cli", "serve"] and image.stage("serve").base == "cli"
    assert re.fullmatch(BASES[flavour], image.root_base("cli")), image.root_base("cli")
    runs = image.runs("cli")
    torch_installs = [r for r in runs if re.search(r"pip install torch\b", r)]
    package = next(i for i, r in enumerate(runs) if 'pip install ".[' in r)
    if flavour == "cpu":
        # pinned as the scripts pin it, from the CPU index (the default wheel is CUDA's), first
        pin = re.search(r"torch==([\d.]+)", (REPO / "scripts" / "venv.sh").read_text()).group(1)
        (torch_step,) = torch_installs
        assert f"torch=={pin}" in torch_step and "--index-url https://download.pytorch.org/whl/cpu" in torch_step
        assert runs.index(torch_step) < package
    else:
        assert torch_installs == []  # a pip torch would replace the vendor's build


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_runtime_extra_is_installed(flavour):
    """What the header comment promises: each command works in the image, whatever it needs."""
    runtime = set(project()["optional-dependencies"]) - {"test", "demo"}
    assert installed_extras(flavour) >= runtime
    assert "serve" in installed_extras(flavour)  # the serve target's command


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_what_the_build_copies_exists_and_reaches_the_build(flavour):
    image = dockerfile(flavour)
    sources = [src for src, _ in copies(image, "cli")]
    assert {"pyproject.toml", "README.md", "src", "configs"} <= set(sources)  # README: the package's readme
    for src in sources:
        assert (REPO / src).exists(), src
        assert in_context(flavour, src), f"{src} is excluded by Dockerfile.{flavour}.dockerignore"
    assert in_context(flavour, "src/bertforge/cli.py") and not in_context(flavour, "src/bertforge/__pycache__/cli.pyc")
    assert not in_context(flavour, "tests/conftest.py")  # the context holds only what is copied
    # the package's files are copied before the step that installs it
    steps = image.stage("cli").steps
    install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and 'pip install ".[' in a)
    copied = {i: a for i, (k, a) in enumerate(steps) if k == "COPY"}
    for src in ("pyproject.toml", "src"):
        assert any(i < install and src in a.split() for i, a in copied.items()), src


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_recipes_are_in_the_working_directory(flavour):
    """Commands name recipes as configs/...: they must resolve from the image's WORKDIR."""
    image = dockerfile(flavour)
    workdir = image.effective("cli", "WORKDIR")
    assert workdir == "/workspace/bertforge"
    for recipe in sorted((REPO / "configs").rglob("*.yaml")):
        assert image_has(image, "cli", flavour, f"{workdir}/{recipe.relative_to(REPO)}"), recipe
    assert not image_has(image, "cli", flavour, f"{workdir}/configs/no_such_recipe.yaml")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runs_as_an_unprivileged_user_with_the_bertforge_entry_point(flavour):
    image = dockerfile(flavour)
    name, uid, _ = user_uid(image, "cli")
    assert name not in ("root", "0") and uid >= 1000
    # the user owns the working directory (runs write there), after everything is copied in
    steps = image.stage("cli").steps
    chown = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and f"chown {name} /workspace/bertforge" in a)
    assert all(i < chown for i, (k, _) in enumerate(steps) if k == "COPY")
    entry = exec_form(image.effective("cli", "ENTRYPOINT"))
    assert entry[-1] == "bertforge"
    # anything before it is the base image's own entry point, which then runs bertforge
    assert entry[:-1] in ([], ["/opt/nvidia/nvidia_entrypoint.sh"])
    assert entry[:-1] == [] or flavour == "cuda"
    assert project()["scripts"]["bertforge"] == "bertforge.cli:main"
    # the build checks that the command runs, as the user, after the install
    runs = image.stage("cli").args("RUN")
    assert runs[-1] == "bertforge --help"
    kinds = [k for k, _ in steps]
    assert kinds.index("USER") < len(steps) - 1 - kinds[::-1].index("RUN")
    assert exec_form(image.effective("cli", "CMD")) == ["--help"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_serve_target_exposes_and_checks_the_server(flavour):
    image = dockerfile(flavour)
    serve = image.stage("serve")
    (port,) = serve.args("EXPOSE")
    command = exec_form(image.effective("serve", "CMD"))
    assert command[0] == "serve" and command[1] == "/model"
    options = dict(zip(command[2::2], command[3::2]))
    assert options == {"--host": "0.0.0.0", "--port": port}  # reachable from outside the container
    assert {"host", "port"} <= {f.name for f in fields(ServeArgs)}
    healthcheck = serve.last("HEALTHCHECK")
    assert re.search(r"--start-period=\d+s", healthcheck)  # loading a model takes a while
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+?)'", " ".join(probe))
    assert url.group(1) == port
    # the route the probe asks for is one the server has
    assert f'"{url.group(2)}"' in (REPO / "src" / "bertforge" / "serve" / "app.py").read_text()
    # python: in every image (curl is not)
    assert probe[0] == "python"


def test_cuda_image_serves_mpijob_workers():
    """The MPIJob's workers run sshd as the image's user (mpi-operator's non-root convention):
    the server and client are installed and agree on the port, and the server's config exists."""
    image = dockerfile("cuda")
    runs = " ".join(image.runs("cli"))
    assert "openssh-server" in runs and "openssh-client" in runs
    name, _, home = user_uid(image, "cli")
    written = re.search(rf"printf '([^']*)'\s*> {home}/\.sshd_config", runs)
    sshd_config = written.group(1).split("\\n")
    assert f"HostKey {home}/.ssh/id_rsa" in sshd_config and f"PidFile {home}/sshd.pid" in sshd_config
    client = re.search(r"printf '([^']*)' >> /etc/ssh/ssh_config", runs).group(1)
    server_port = next(line for line in sshd_config if line.startswith("Port "))
    assert server_port in client and "StrictHostKeyChecking no" in client
    assert re.search(rf"chown {name} .*{home}/\.sshd_config", runs)
