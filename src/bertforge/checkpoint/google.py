"""Google's TensorFlow BERT checkpoints (google-research/bert and its fine-tuning scripts).

Variable names are mapped to Hugging Face names here, then `hf.hf_to_native` maps them to
bertforge's; dense kernels are transposed from (in, out). Optimizer slots and bookkeeping are
never read; any other unknown variable is kept so that `load_into` reports it. The names each of
Google's scripts writes are listed in docs/checkpoints.md.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from torch import Tensor

from bertforge.checkpoint.common import Checkpoint, CheckpointInfo, config_beside, infer_do_lower_case, vocab_beside
from bertforge.checkpoint.hf import hf_to_native
from bertforge.checkpoint.tf_checkpoint import TFCheckpointReader
from bertforge.config import BertConfig
from bertforge.errors import CheckpointError

log = logging.getLogger(__name__)

# Google name -> Hugging Face name, outside the encoder layers.
_TOP = {
    "bert/embeddings/word_embeddings": "bert.embeddings.word_embeddings.weight",
    "bert/embeddings/position_embeddings": "bert.embeddings.position_embeddings.weight",
    "bert/embeddings/token_type_embeddings": "bert.embeddings.token_type_embeddings.weight",
    "bert/embeddings/LayerNorm/gamma": "bert.embeddings.LayerNorm.weight",
    "bert/embeddings/LayerNorm/beta": "bert.embeddings.LayerNorm.bias",
    "bert/pooler/dense/kernel": "bert.pooler.dense.weight",
    "bert/pooler/dense/bias": "bert.pooler.dense.bias",
    "cls/predictions/transform/dense/kernel": "cls.predictions.transform.dense.weight",
    "cls/predictions/transform/dense/bias": "cls.predictions.transform.dense.bias",
    "cls/predictions/transform/LayerNorm/gamma": "cls.predictions.transform.LayerNorm.weight",
    "cls/predictions/transform/LayerNorm/beta": "cls.predictions.transform.LayerNorm.bias",
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "cls/squad/output_weights": "qa_outputs.weight",
    "cls/squad/output_bias": "qa_outputs.bias",
    "output_weights": "classifier.weight",
    "output_bias": "classifier.bias",
}
# ... and inside `bert/encoder/layer_N/` -> `bert.encoder.layer.N.`.
_LAYER = {
    "attention/self/query/kernel": "attention.self.query.weight",
    "attention/self/query/bias": "attention.self.query.bias",
    "attention/self/key/kernel": "attention.self.key.weight",
    "attention/self/key/bias": "attention.self.key.bias",
    "attention/self/value/kernel": "attention.self.value.weight",
    "attention/self/value/bias": "attention.self.value.bias",
    "attention/output/dense/kernel": "attention.output.dense.weight",
    "attention/output/dense/bias": "attention.output.dense.bias",
    "attention/output/LayerNorm/gamma": "attention.output.LayerNorm.weight",
    "attention/output/LayerNorm/beta": "attention.output.LayerNorm.bias",
    "intermediate/dense/kernel": "intermediate.dense.weight",
    "intermediate/dense/bias": "intermediate.dense.bias",
    "output/dense/kernel": "output.dense.weight",
    "output/dense/bias": "output.dense.bias",
    "output/LayerNorm/gamma": "output.LayerNorm.weight",
    "output/LayerNorm/beta": "output.LayerNorm.bias",
}
_LAYER_NAME = re.compile(r"bert/encoder/layer_(\d+)/(.+)$")

# Last name component of optimizer slots: Google's AdamWeightDecayOptimizer (adam_m/adam_v),
# NVIDIA's TF LAMB (lamb_m/lamb_v), tf.compat.v1 optimizers (Adam, Adam_1, Momentum, ...).
OPTIMIZER_SLOTS = frozenset({"adam_m", "adam_v", "lamb_m", "lamb_v", "Adam", "Adam_1", "Momentum",
                             "Adagrad", "RMSProp", "RMSProp_1", "LAMB", "LAMB_1", "AdamW", "AdamW_1"})
# Whole names of training bookkeeping: step counters, Adam's beta powers, AMP loss scaling.
BOOKKEEPING = frozenset({"global_step", "beta1_power", "beta2_power", "loss_scale",
                         "current_loss_scale", "good_steps"})


def is_training_state(name: str) -> bool:
    """True for optimizer slots and bookkeeping variables, which a model never loads."""
    return name in BOOKKEEPING or name.rsplit("/", 1)[-1] in OPTIMIZER_SLOTS


def google_to_hf(name: str) -> str | None:
    """The Hugging Face name of a Google variable; None when it is none of BERT's."""
    if name in _TOP:
        return _TOP[name]
    m = _LAYER_NAME.match(name)
    if m and m.group(2) in _LAYER:
        return f"bert.encoder.layer.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def peek_tf_checkpoint(path: Path, config: str | Path | BertConfig | None = None) -> CheckpointInfo:
    """A TF checkpoint's config (given, or its bert_config.json), vocab.txt and the casing its
    release name says."""
    return CheckpointInfo("tf", config_beside(path, config, "TensorFlow"), vocab_beside(path),
                          infer_do_lower_case(path))


def load_tf_checkpoint(path: str | Path, config: str | Path | BertConfig | None = None) -> Checkpoint:
    """A Google TF checkpoint (prefix, `.index`, or directory) as a bertforge Checkpoint."""
    path = Path(path)
    reader = TFCheckpointReader(path)
    cfg = config_beside(path, config, "TensorFlow")
    wanted = [n for n, v in reader.variables.items()
              if not is_training_state(n) and v.dtype != "string"]
    reader.check_data_files(wanted)
    state: dict[str, Tensor] = {}
    for name in wanted:
        tensor = reader.read_torch(name)
        hf_name = google_to_hf(name)
        if hf_name is None:
            state[name] = tensor  # kept so that load_into names it as unexpected
            continue
        if name.endswith("/kernel"):
            if tensor.dim() != 2:
                raise CheckpointError(f"{reader.index_file}: {name} has shape {tuple(tensor.shape)}; "
                                      "a dense kernel is 2-D (in, out)")
            tensor = tensor.t().contiguous()  # (in, out) -> (out, in)
        state[hf_name] = tensor
    skipped = len(reader.variables) - len(wanted)
    log.info("%s: read %d tensors, skipped %d optimizer/bookkeeping/string variables",
             reader.prefix, len(wanted), skipped)
    do_lower_case = infer_do_lower_case(path)
    if do_lower_case is not None:
        log.info("%s: do_lower_case=%s, inferred from the name %r", path, do_lower_case,
                 (path if path.is_dir() else path.parent).name)
    return Checkpoint(cfg, hf_to_native(state, source=str(reader.prefix)), path, "tf",
                      vocab_file=vocab_beside(path), do_lower_case=do_lower_case)


__all__ = ["google_to_hf", "is_training_state", "load_tf_checkpoint", "peek_tf_checkpoint",
           "OPTIMIZER_SLOTS", "BOOKKEEPING"]
