"""BertConfig: presets, Google and Hugging Face files, and errors that name the key."""

from __future__ import annotations

import json

import pytest

from bertforge.config import PRESETS, BertConfig, resolve_config
from bertforge.errors import ConfigError

GOOGLE_BASE = {  # Google's uncased_L-12_H-768_A-12/bert_config.json
    "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
    "type_vocab_size": 2, "vocab_size": 30522,
}


@pytest.mark.parametrize("name,layers,hidden,heads", [
    ("tiny", 2, 128, 2), ("mini", 4, 256, 4), ("small", 4, 512, 8), ("medium", 8, 512, 8),
    ("base", 12, 768, 12), ("large", 24, 1024, 16)])
def test_presets(name, layers, hidden, heads):
    cfg = BertConfig.from_preset(name)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (layers, hidden, heads)
    assert cfg.intermediate_size == 4 * hidden
    cfg.hidden_size = 1  # a copy: the preset itself is untouched
    assert PRESETS[name].hidden_size == hidden


def test_google_config_file(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(GOOGLE_BASE))
    assert BertConfig.from_json(path) == BertConfig.from_preset("base")
    assert resolve_config(tmp_path) == BertConfig.from_preset("base")


def test_hf_config_keys_are_accepted(tmp_path):
    raw = dict(GOOGLE_BASE, architectures=["BertForMaskedLM"], model_type="bert",
               transformers_version="4.6.0", pad_token_id=0, layer_norm_eps=1e-12,
               position_embedding_type="absolute", use_cache=True, classifier_dropout=None)
    assert BertConfig.from_dict(raw) == BertConfig.from_preset("base")


@pytest.mark.parametrize("key,value,message", [
    ("hiden_size", 768, "unknown key 'hiden_size'"),
    ("hidden_size", "768", "key 'hidden_size' must be an integer"),
    ("num_hidden_layers", 12.0, "key 'num_hidden_layers' must be an integer"),
    ("hidden_dropout_prob", "0.1", "key 'hidden_dropout_prob' must be a number"),
    ("num_attention_heads", 7, "multiple of 'num_attention_heads'"),
    ("hidden_act", "relu", "'hidden_act' is 'relu'"),
    ("position_embedding_type", "relative_key", "'position_embedding_type' is 'relative_key'"),
    ("num_hidden_layers", True, "key 'num_hidden_layers' must be an integer"),
])
def test_bad_keys_are_named(tmp_path, key, value, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(GOOGLE_BASE, **{key: value})))
    with pytest.raises(ConfigError, match=message) as err:
        BertConfig.from_json(path)
    assert str(path) in str(err.value)


def test_bad_json_names_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "hidden_size": 768,\n  oops\n}')
    with pytest.raises(ConfigError, match=r"line 3"):
        BertConfig.from_json(path)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="tiny, mini, small, medium, base, large"):
        resolve_config("huge")


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key,value,message", [
    ("initializer_range", NAN, "'initializer_range' must be a positive finite number, got nan"),
    ("initializer_range", INF, "'initializer_range' must be a positive finite number, got inf"),
    ("initializer_range", -0.02, "'initializer_range' must be a positive finite number, got -0.02"),
    ("initializer_range", 0, "'initializer_range' must be a positive finite number, got 0.0"),
    ("layer_norm_eps", 0, "'layer_norm_eps' must be a positive finite number, got 0.0"),
    ("layer_norm_eps", -1e-12, "'layer_norm_eps' must be a positive finite number, got -1e-12"),
    ("layer_norm_eps", NAN, "'layer_norm_eps' must be a positive finite number, got nan"),
    ("layer_norm_eps", INF, "'layer_norm_eps' must be a positive finite number, got inf"),
    ("hidden_dropout_prob", NAN, r"'hidden_dropout_prob' must be in \[0, 1\), got nan"),
    ("attention_probs_dropout_prob", 1.0, r"'attention_probs_dropout_prob' must be in \[0, 1\), got 1.0"),
    ("classifier_dropout", -0.1, r"'classifier_dropout' must be in \[0, 1\), got -0.1"),
    ("classifier_dropout", INF, r"'classifier_dropout' must be in \[0, 1\), got inf"),
])
def test_non_finite_and_out_of_range_floats_are_named(tmp_path, key, value, message):
    """JSON files may hold NaN and Infinity (Python's json reads and writes them)."""
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(dict(GOOGLE_BASE, **{key: value})))
    assert ("NaN" in path.read_text()) == (value != value)  # the literal really is in the file
    with pytest.raises(ConfigError, match=message) as err:
        BertConfig.from_json(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match=message):
        BertConfig(**{key: value})
