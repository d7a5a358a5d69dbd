"""Read the Dockerfiles under docker/ as Docker would, without Docker: instructions by stage,
build arguments, the files an image holds (its COPY steps filtered by the build's
.dockerignore), its user and entry point. Shared by tests/test_containers.py and the Kubernetes
manifest tests, which check that the manifests fit the images."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
FLAVOURS = ("cpu", "cuda", "hpu")


@dataclass
class Stage:
    """One build stage: its base, name, and instructions as (INSTRUCTION, arguments) in order."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def args(self, kind: str) -> list[str]:
        return [a for k, a in self.steps if k == kind]

    def last(self, kind: str) -> str | None:
        found = self.args(kind)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    build_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, the root first."""
        stage = self.stage(name)
        names = {s.name for s in self.stages}
        return (self.chain(stage.base) if stage.base in names else []) + [stage]

    def effective(self, name: str, kind: str) -> str | None:
        """An instruction's last value as the stage sees it (inherited from its parent stages)."""
        for stage in reversed(self.chain(name)):
            if stage.last(kind) is not None:
                return stage.last(kind)
        return None

    def root_base(self, name: str) -> str:
        """The image the stage is built on, build arguments filled in."""
        return self.chain(name)[0].base

    def runs(self, name: str) -> list[str]:
        return [a for stage in self.chain(name) for a in stage.args("RUN")]


def logical_lines(text: str) -> list[str]:
    """Instructions, one a line: comments dropped, backslash continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(line.split()) for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if line.strip()]


def parse_dockerfile(path: Path) -> Dockerfile:
    build_args: dict[str, str] = {}
    stages: list[Stage] = []

    def fill(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: build_args.get(m.group(1) or m.group(2), m.group(0)), value)

    for line in logical_lines(path.read_text()):
        word, _, rest = line.partition(" ")
        kind = word.upper()
        if kind == "ARG" and not stages:  # an ARG before the first FROM: a build argument of FROM lines
            name, _, default = rest.partition("=")
            build_args[name] = default
        elif kind == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=fill(parts[0]), name=name))
        else:
            assert stages, f"{path.name}: {kind} before FROM"
            stages[-1].steps.append((kind, rest))
    return Dockerfile(path, build_args, stages)


def dockerfile(flavour: str) -> Dockerfile:
    return parse_dockerfile(DOCKER / f"Dockerfile.{flavour}")


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form, e.g. ENTRYPOINT ["bertforge"]."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


# ---- the build context ----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def ignore_rules(flavour: str) -> list[tuple[bool, re.Pattern]]:
    """(is an exception, pattern) of the Dockerfile's own .dockerignore, in order."""
    rules = []
    for line in (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            cleaned = str(PurePosixPath(line.lstrip("!").strip("/")))
            rules.append((negated, _pattern_regex(cleaned)))
    return rules


def in_context(flavour: str, relative: str) -> bool:
    """Whether a repository path reaches the build: the last pattern that matches it or one of
    its parent directories decides, as Docker decides."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negated, regex in ignore_rules(flavour):
        if any(regex.match(p) for p in prefixes):
            included = negated
    return included


# ---- what the image holds -------------------------------------------------------------------


def copies(image: Dockerfile, stage: str) -> list[tuple[str, str]]:
    """(repository path, absolute image path) of each COPY source, relative destinations
    resolved against the WORKDIR in force at that step."""
    result, workdir = [], "/"
    for st in image.chain(stage):
        for kind, args in st.steps:
            if kind == "WORKDIR":
                workdir = str(PurePosixPath(workdir) / args)
            elif kind == "COPY":
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                *sources, dest = words
                dest_path = PurePosixPath(workdir) / dest
                for src in sources:
                    # a directory's contents go to dest; a file goes into dest/ when dest ends with /
                    is_file = (REPO / src).is_file()
                    into = is_file and (dest.endswith("/") or len(sources) > 1)
                    target = dest_path / PurePosixPath(src).name if into else dest_path
                    result.append((src.rstrip("/"), str(target)))
    return result


def image_has(image: Dockerfile, stage: str, flavour: str, path: str) -> bool:
    """Whether `path` (absolute in the image) is a file or directory that a COPY put there from
    the repository, and the build context let through."""
    wanted = PurePosixPath(path)
    for src, dest in copies(image, stage):
        dest_path = PurePosixPath(dest)
        if wanted == dest_path or dest_path in wanted.parents:
            relative = PurePosixPath(src) / wanted.relative_to(dest_path)
            if (REPO / relative).exists() and in_context(flavour, str(relative)):
                return True
    return False


def user_uid(image: Dockerfile, stage: str) -> tuple[str, int, str]:
    """(name, uid, home) of the USER in force: created by `useradd --create-home --uid N NAME`."""
    user = image.effective(stage, "USER")
    assert user is not None, f"{image.path.name}: no USER (the image would run as root)"
    for run in image.runs(stage):
        found = re.search(rf"useradd --create-home --uid (\d+) {re.escape(user)}\b", run)
        if found:
            return user, int(found.group(1)), f"/home/{user}"
    raise AssertionError(f"{image.path.name}: USER {user} is not created by useradd --create-home --uid N")
