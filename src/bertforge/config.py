"""BERT architecture configuration: one typed dataclass, read from Google's `bert_config.json`,
Hugging Face's `config.json`, or a named preset.

Google's and Hugging Face's files share the architecture keys (`hidden_size`,
`num_hidden_layers`, ...); Hugging Face adds bookkeeping keys (`architectures`,
`transformers_version`, ...) that do not change the network. Those are accepted and dropped;
any other unknown key, or a known key of the wrong type, is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bertforge.errors import ConfigError
from bertforge.fileio import read_json
from bertforge.validation import describe, matches

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")

# Keys Hugging Face (and Google's multilingual/Chinese configs) write that do not change the
# BERT we build. Values that would change it are checked in `_check_hf_switches`.
_IGNORED_KEYS = frozenset({
    "architectures", "model_type", "_name_or_path", "name_or_path", "transformers_version",
    "use_cache", "gradient_checkpointing", "torch_dtype", "dtype", "id2label", "label2id",
    "num_labels", "problem_type", "finetuning_task", "output_attentions", "output_hidden_states",
    "return_dict", "tie_word_embeddings", "bos_token_id", "eos_token_id", "sep_token_id",
    "pruned_heads", "chunk_size_feed_forward", "directionality", "pooler_fc_size",
    "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head", "pooler_type",
    "tokenizer_class", "prefix", "task_specific_params", "output_past", "torchscript",
    "_attn_implementation_autoset", "attn_implementation", "_attn_implementation",
    "output_all_encoded_layers",  # NVIDIA DLE's BertConfig writes this output option
})

# Keys that are only fine with one value: anything else would be a different model.
_HF_SWITCHES = {
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
}


@dataclass
class BertConfig:
    """The shape of a BERT encoder. Field names are those of Google's `bert_config.json`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Dropout before the sequence-classification layer; None means hidden_dropout_prob.
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, source: str = "config") -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), source)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{source}: '{name}' must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{source}: 'hidden_size' ({self.hidden_size}) must be a multiple of "
                f"'num_attention_heads' ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"{source}: 'hidden_act' is {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        # Written so that NaN fails too: every comparison with NaN is False.
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p < 1.0:
                raise ConfigError(f"{source}: '{name}' must be in [0, 1), got {p}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{source}: '{name}' must be a positive finite number, got {float(value)}")

    # ---- reading -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "BertConfig":
        """Build from a Google or Hugging Face config dict; `source` names it in errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in known:
                if key == "classifier_dropout" and value is None:
                    continue
                _check_type(key, value, source)
                kwargs[key] = float(value) if _HINTS[key] in (float, float | None) else value
            elif key in _HF_SWITCHES:
                if value != _HF_SWITCHES[key]:
                    raise ConfigError(
                        f"{source}: '{key}' is {value!r}; bertforge builds the BERT encoder with "
                        f"{key}={_HF_SWITCHES[key]!r} only")
            elif key not in _IGNORED_KEYS:
                raise ConfigError(
                    f"{source}: unknown key '{key}' (known: {', '.join(sorted(known))})")
        cfg = cls.__new__(cls)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            setattr(cfg, f.name, kwargs.get(f.name, default))
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        data = read_json(path, "config file", ConfigError)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_preset(cls, name: str) -> "BertConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name])

    # ---- writing -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Google's `bert_config.json` keys (plus classifier_dropout when set)."""
        d = dataclasses.asdict(self)
        if d["classifier_dropout"] is None:
            del d["classifier_dropout"]
        return d

    def to_hf_dict(self, architecture: str = "BertModel") -> dict[str, Any]:
        d = self.to_dict()
        d.update(model_type="bert", architectures=[architecture], position_embedding_type="absolute")
        return d

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _check_type(key: str, value: Any, source: str) -> None:
    annotation = _HINTS[key]
    if not matches(value, annotation):
        raise ConfigError(f"{source}: key '{key}' must be {describe(annotation)}, got {value!r}")


_HINTS = typing.get_type_hints(BertConfig)


def _preset(layers: int, hidden: int, heads: int) -> BertConfig:
    return BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden)


# Google's BERT sizes (Turc et al. 2019 for the small ones; Devlin et al. 2019 for base/large).
PRESETS: dict[str, BertConfig] = {
    "tiny": _preset(2, 128, 2),
    "mini": _preset(4, 256, 4),
    "small": _preset(4, 512, 8),
    "medium": _preset(8, 512, 8),
    "base": _preset(12, 768, 12),
    "large": _preset(24, 1024, 16),
}


def find_config_file(directory: Path) -> Path | None:
    """The config file of a checkpoint directory: ours/HF's `config.json` or Google's."""
    for name in ("config.json", "bert_config.json"):
        if (directory / name).is_file():
            return directory / name
    return None


def resolve_config(spec: str | Path) -> BertConfig:
    """A preset name, a config JSON file, or a directory that holds one."""
    text = str(spec)
    if text in PRESETS:
        return BertConfig.from_preset(text)
    path = Path(spec)
    if path.is_dir():
        found = find_config_file(path)
        if found is None:
            raise ConfigError(f"{path}: directory has no config.json or bert_config.json")
        return BertConfig.from_json(found)
    if path.is_file():
        return BertConfig.from_json(path)
    raise ConfigError(
        f"{text!r} is neither a model preset ({', '.join(PRESETS)}) nor an existing config file")
