"""`bertforge download squad|glue`: the data sets from their official URLs into a cache
directory, each file checked against its published SHA-256.

- SQuAD v1.1 train/dev from the SQuAD explorer site, into <cache>/squad/v1.1/.
- GLUE from the URLs GLUE's own download script and Hugging Face `datasets` use: one zip per task
  (extracted into <cache>/glue/<GLUE name>/), MRPC as the SentEval copies of the Microsoft
  corpus plus GLUE's list of dev pairs, turned into GLUE's train/dev/test.tsv here.

A download goes to `<file>.part` first and continues from where it stopped (an HTTP Range
request) when run again: a download cut off before the published size keeps its `.part`. A
server that sends more than the published size is cut off there (the file is not the one
expected). The file gets its final name only once its checksum matches. A file
already in the cache with the right checksum is not fetched again. `--mirror URL` takes the files
from another server holding them under their own names (a proxy, a local copy).

Where the checksums come from: each SHA-256 and size below is the one Hugging Face `datasets`
publishes for that URL (`download_checksums` in its squad and glue dataset_infos.json).
dev-v1.1.json's was also checked here against the copy in ../shared/data (the official file).
The others could not be checked on the machine this was written on (no internet): they are the
published values as they are, and a download that does not match them is refused.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from bertforge import __version__
from bertforge.data.glue import TASKS, get_task
from bertforge.errors import ConfigError, DataError
from bertforge.fileio import atomic_write_text

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds without a byte before a download counts as failed


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
SENTEVAL_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"

SQUAD_FILES = {
    "train": RemoteFile(SQUAD_URL + "train-v1.1.json",
                        "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955", 30288272),
    "dev": RemoteFile(SQUAD_URL + "dev-v1.1.json",  # also checked against ../shared/data
                      "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9", 4854279),
}
# GLUE task -> its zip (which holds a folder named as the task's GLUE name)
GLUE_ZIPS = {
    "cola": RemoteFile(GLUE_URL + "CoLA.zip",
                       "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff", 376971),
    "sst2": RemoteFile(GLUE_URL + "SST-2.zip",
                       "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa", 7439277),
    "qqp": RemoteFile(GLUE_URL + "QQP-clean.zip",
                      "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0", 41696084),
    "stsb": RemoteFile(GLUE_URL + "STS-B.zip",
                       "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85", 802872),
    "mnli": RemoteFile(GLUE_URL + "MNLI.zip",
                       "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633", 312783507),
    "qnli": RemoteFile(GLUE_URL + "QNLIv2.zip",
                       "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5", 10627589),
    "rte": RemoteFile(GLUE_URL + "RTE.zip",
                      "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee", 697150),
    "wnli": RemoteFile(GLUE_URL + "WNLI.zip",
                       "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46", 28999),
}
# GLUE does not redistribute MRPC: its script builds the task from these.
MRPC_FILES = {
    "train": RemoteFile(SENTEVAL_URL + "msr_paraphrase_train.txt",
                        "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89", 1047044),
    "test": RemoteFile(SENTEVAL_URL + "msr_paraphrase_test.txt",
                       "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784", 441275),
    "dev_ids": RemoteFile(GLUE_URL + "mrpc_dev_ids.tsv",
                          "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7", 6222),
}


@dataclass(kw_only=True)
class DownloadArgs:
    """Where downloads go and come from."""

    cache_dir: str | None = None
    """Where data sets are kept (default: $XDG_CACHE_HOME/bertforge, else ~/.cache/bertforge)."""
    mirror: str | None = None
    """Take the files from this URL instead (a server or file:// folder holding them under their own
    names); checksums are verified all the same."""


@dataclass(kw_only=True)
class DownloadSquadArgs(DownloadArgs):
    """Download SQuAD v1.1 and verify its published checksums."""

    splits: str = "train,dev"
    """Which files, comma-separated: train, dev."""


@dataclass(kw_only=True)
class DownloadGlueArgs(DownloadArgs):
    """Download GLUE tasks and verify their published checksums."""

    task_name: str = "all"
    """Comma-separated GLUE tasks (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or all (also --task)."""


# ---- one file ---------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def source_url(remote: RemoteFile, mirror: str | None) -> str:
    return remote.url if mirror is None else mirror.rstrip("/") + "/" + remote.name


def fetch(remote: RemoteFile, directory: Path, mirror: str | None = None, progress: bool = True) -> Path:
    """`remote` as directory/<its name>, downloaded (or continued from directory/<name>.part)
    unless already there with the published checksum; a DataError naming the URL otherwise."""
    dest = directory / remote.name
    if dest.is_file():
        if sha256_of(dest) == remote.sha256:
            log.info("%s: already downloaded and verified", dest)
            return dest
        log.warning("%s does not have the published checksum; downloading it again", dest)
    directory.mkdir(parents=True, exist_ok=True)
    url = source_url(remote, mirror)
    part = dest.with_name(dest.name + ".part")
    _download(url, part, dest, remote.size, progress)
    have = part.stat().st_size
    if have < remote.size:  # kept: the next run continues it
        raise DataError(f"download of {url} stopped at byte {have} of {remote.size}; run the command again "
                        "to continue it")
    got = sha256_of(part)
    if got != remote.sha256:
        part.unlink()
        raise DataError(f"{url}: the download's SHA-256 is {got}, not the published {remote.sha256}; it "
                        "was removed. The file changed at its source or broke on the way: try again, or "
                        "check the mirror")
    os.replace(part, dest)
    log.info("%s: verified (sha256 %s...)", dest, got[:16])
    return dest


def _download(url: str, part: Path, dest: Path, size: int, progress: bool) -> None:
    """Fill `part` with the bytes at `url`, continuing a partial file where the server allows."""
    have = part.stat().st_size if part.is_file() else 0
    if have > size:  # not the start of this file
        part.unlink()
        have = 0
    headers = {"User-Agent": f"bertforge/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have == size:  # the partial file is already whole
            return
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot download {url}: {reason}. Without internet access, copy the file to "
                        f"{dest} (or pass --mirror with a server that has it)") from None
    with response:
        resumed = have and getattr(response, "status", 200) == 206
        if have and not resumed:
            log.info("%s does not continue partial downloads; starting %s again", url, part.name)
            have = 0
        elif resumed:
            log.info("continuing %s at byte %d of %d", url, have, size)
        bar = tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                   disable=not progress)
        try:
            with part.open("ab" if resumed else "wb") as f:
                while block := response.read(min(CHUNK, size - have + 1)):
                    if have + len(block) > size:
                        f.close()
                        part.unlink()
                        raise DataError(f"{url} sends more than the published {size} bytes: not the file "
                                        "expected; nothing was kept. Check the URL or the mirror")
                    f.write(block)
                    have += len(block)
                    bar.update(len(block))
        except (socket.timeout, OSError, http.client.HTTPException) as e:
            raise DataError(f"download of {url} broke off ({e or type(e).__name__}); run the command again to "
                            f"continue from byte {part.stat().st_size}") from None
        finally:
            bar.close()


# ---- data sets --------------------------------------------------------------------------------


def _names(text: str, valid: list[str], flag: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return valid
    unknown = [n for n in names if n not in valid]
    if not names or unknown:
        raise ConfigError(f"--{flag} {text!r}: expected a comma-separated list of {', '.join(valid)} (or all)")
    return list(dict.fromkeys(names))


def download_squad(cache_dir: str | Path, splits: str = "train,dev", mirror: str | None = None,
                   progress: bool = True) -> dict[str, Path]:
    """SQuAD v1.1's files into <cache_dir>/squad/v1.1; returns split -> path."""
    directory = Path(cache_dir) / "squad" / "v1.1"
    return {split: fetch(SQUAD_FILES[split], directory, mirror, progress)
            for split in _names(splits, list(SQUAD_FILES), "splits")}


def download_glue(cache_dir: str | Path, tasks: str = "all", mirror: str | None = None,
                  progress: bool = True) -> dict[str, Path]:
    """GLUE tasks into <cache_dir>/glue/<GLUE name>/ (train/dev/test.tsv as GLUE ships them);
    returns task -> directory (a --data_dir)."""
    root = Path(cache_dir) / "glue"
    downloads = Path(cache_dir) / "downloads"
    done = {}
    for name in _names(tasks, list(TASKS), "task_name"):
        task = get_task(name)
        if name == "mrpc":
            files = {k: fetch(remote, downloads, mirror, progress) for k, remote in MRPC_FILES.items()}
            done[name] = build_mrpc(files["train"], files["test"], files["dev_ids"], root / task.glue_name)
        else:
            done[name] = extract_task(fetch(GLUE_ZIPS[name], downloads, mirror, progress), GLUE_ZIPS[name],
                                      root, task.glue_name)
    return done


def extract_task(archive: Path, remote: RemoteFile, root: Path, folder: str) -> Path:
    """Unpack a verified GLUE zip into root (it holds root/<folder>/); skipped when done before
    from the same zip (recorded in <folder>/.source_sha256)."""
    target = root / folder
    marker = target / ".source_sha256"
    if marker.is_file() and marker.read_text().strip() == remote.sha256:
        return target
    with zipfile.ZipFile(archive) as z:
        tops = {n.split("/", 1)[0] for n in z.namelist() if not n.startswith("__MACOSX")}
        if folder not in tops:
            raise DataError(f"{archive} holds {', '.join(sorted(tops))}, not the folder {folder} GLUE's zips have")
        if target.exists():
            shutil.rmtree(target)
        z.extractall(root, members=[n for n in z.namelist() if n.split("/", 1)[0] == folder])
    atomic_write_text(marker, remote.sha256 + "\n")
    return target


MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String"


def _rows(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [line.split("\t") for line in lines if line.strip()]


def build_mrpc(train_file: Path, test_file: Path, dev_ids_file: Path, out: Path) -> Path:
    """GLUE's MRPC from the Microsoft corpus files, as GLUE made it: the pairs listed in
    dev_ids (two ids a line) are dev.tsv, the other training pairs train.tsv, both in the
    corpus's order; test.tsv is the test pairs numbered from 0, without their labels."""
    train, test = _rows(train_file), _rows(test_file)
    for path, rows in ((train_file, train), (test_file, test)):
        if not rows or "\t".join(rows[0]) != MRPC_HEADER or any(len(r) != 5 for r in rows):
            raise DataError(f"{path}: not the MSR paraphrase corpus (header {MRPC_HEADER!r}, 5 columns)")
    dev_ids = {tuple(r[:2]) for r in _rows(dev_ids_file)}
    in_dev = [tuple(r[1:3]) in dev_ids for r in train[1:]]
    if sum(in_dev) != len(dev_ids):
        raise DataError(f"{dev_ids_file}: {len(dev_ids)} dev pairs, but {sum(in_dev)} of them are in {train_file}")
    out.mkdir(parents=True, exist_ok=True)
    _write_tsv(out / "train.tsv", MRPC_HEADER, [r for r, d in zip(train[1:], in_dev) if not d])
    _write_tsv(out / "dev.tsv", MRPC_HEADER, [r for r, d in zip(train[1:], in_dev) if d])
    _write_tsv(out / "test.tsv", MRPC_TEST_HEADER, [[str(i), *r[1:]] for i, r in enumerate(test[1:])])
    return out


def _write_tsv(path: Path, header: str, rows: list[list[str]]) -> None:
    atomic_write_text(path, "\n".join([header, *("\t".join(r) for r in rows)]) + "\n")


def download(dataset: str, args: DownloadArgs, cache_dir: Path, progress: bool = True) -> dict[str, Path]:
    """The `bertforge download` command: fetch, verify, and say where the files are."""
    if dataset == "squad":
        paths = download_squad(cache_dir, args.splits, args.mirror, progress)
        print(f"SQuAD v1.1 in {cache_dir / 'squad' / 'v1.1'}: " + ", ".join(p.name for p in paths.values()))
    else:
        paths = download_glue(cache_dir, args.task_name, args.mirror, progress)
        for task, path in paths.items():
            print(f"GLUE {task}: --data_dir {path}")
    return paths
