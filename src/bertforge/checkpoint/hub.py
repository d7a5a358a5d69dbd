"""Hugging Face Hub model ids as checkpoint sources: `load_checkpoint("bert-base-uncased")`.

A source that is not a local path but reads as a Hub id is fetched with huggingface_hub's
`snapshot_download`, which keeps its own cache and itself honours HF_HUB_OFFLINE, HF_HOME,
HF_HUB_CACHE and HF_TOKEN (bertforge reads none of them). Only what a BERT checkpoint needs is
fetched: config, vocabulary, tokenizer config and one kind of weights (safetensors when the
repository has them, else pytorch_model.bin), never its TF, Flax or ONNX copies.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from bertforge.checkpoint.hf import WEIGHT_FILES, find_weights
from bertforge.errors import CheckpointError

log = logging.getLogger(__name__)

_BESIDE_WEIGHTS = ["config.json", "vocab.txt", "tokenizer_config.json"]
# Tried in this order; the second only when the repository has none of the first.
_WEIGHT_PATTERNS = (
    ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"],
    ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"],
)
# Endings of checkpoint files and TF prefixes: such a name is a missing local file, not an id.
_FILE_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index", ".json", ".h5",
                            ".txt"})


def is_hub_id(source: str) -> bool:
    """Whether `source`, which is not an existing path, is to be looked up on the Hub.

    It must be a valid repo id (`name` or `namespace/name`), not end like a checkpoint file,
    and, when it has a namespace, that namespace must not be an existing local directory:
    `runs/x` beside a `runs/` directory is a mistyped path, not the user `runs`' model `x`."""
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    if Path(source).suffix in _FILE_SUFFIXES:
        return False
    namespace = source.rpartition("/")[0]
    return not (namespace and Path(namespace).is_dir())


def fetch(repo_id: str) -> Path:
    """The local snapshot directory of a Hub model, downloaded when not cached."""
    for weights in _WEIGHT_PATTERNS:
        folder = _snapshot(repo_id, [*_BESIDE_WEIGHTS, *weights])
        if find_weights(folder) is not None:
            log.info("%s: Hugging Face Hub snapshot %s", repo_id, folder)
            return folder
    raise CheckpointError(f"{repo_id}: the Hugging Face Hub repository has none of "
                          f"{', '.join(WEIGHT_FILES)}; is it a BERT model saved by transformers?")


def _snapshot(repo_id: str, patterns: list[str]) -> Path:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except GatedRepoError:
        raise CheckpointError(f"{repo_id}: a gated model on the Hugging Face Hub; accept its terms on "
                              "huggingface.co and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"checkpoint not found: {repo_id!r} is neither a local path nor a model "
                              "on the Hugging Face Hub (a private one needs `hf auth login`)") from None
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else "the Hugging Face Hub cannot be reached")
        raise CheckpointError(f"checkpoint not found: {repo_id!r} is neither a local path nor in the "
                              f"Hugging Face cache ({why})") from None
    except (HfHubHTTPError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{repo_id}: cannot fetch it from the Hugging Face Hub ({msg})") from None
