"""The table of heads agrees with the models, the checkpoint formats and export: every head
builds, its prefixes and markers name its tensors, it round-trips through bertforge's format and
Hugging Face's (read back by transformers' class of the same name), and its export outputs are
the tensors the model returns."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass

import pytest
import torch

from bertforge.checkpoint import load_checkpoint, load_into, save_checkpoint_as, save_native
from bertforge.errors import ConfigError
from bertforge.export import ServingModel
from bertforge.export_args import HEAD_NAMES
from bertforge.model import HEADS, build_model
from bertforge.model.heads import BACKBONE_PREFIXES, HEAD_PREFIXES
from conftest import HF_CLASSES, random_batch, tiny_config

NUM_LABELS = 3


def _built(name: str):
    torch.manual_seed(0)
    return build_model(tiny_config(), name, num_labels=NUM_LABELS)


def test_the_table_names_every_head_the_tests_know():
    assert set(HEADS) == set(HF_CLASSES)


def test_export_flags_name_the_tables_heads():
    """`bertforge export --head` takes its names from a module without torch: the table's, in order."""
    assert HEAD_NAMES == tuple(HEADS)
    for name, spec in HEADS.items():
        assert spec.name == name == spec.module.head


def test_an_unknown_head_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown head 'ner'; heads: base, pretraining, qa, classification"):
        build_model(tiny_config(), "ner")


@pytest.mark.parametrize("name", list(HEADS))
def test_prefixes_markers_and_names_cover_the_models_tensors(name):
    spec = HEADS[name]
    model = _built(name)
    assert isinstance(model, spec.module)
    keys = set(model.state_dict())
    outside = {k for k in keys if not k.startswith(BACKBONE_PREFIXES)}
    assert all(k.startswith(spec.prefixes) for k in outside)
    assert all(any(k.startswith(p) for k in outside) for p in spec.prefixes)  # no stale prefix
    assert set(spec.prefixes) <= set(HEAD_PREFIXES)
    assert set(spec.markers) <= keys
    own = {k for k in outside if not k.startswith("bert.")}  # the head's layers, not the pooler
    assert set(spec.hf_names) == own
    if spec.label_weight is not None:
        assert model.state_dict()[spec.label_weight].shape[0] == NUM_LABELS


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_round_trips_through_native_and_hugging_face(tmp_path, name):
    spec = HEADS[name]
    model = _built(name)
    cfg = model.config
    native = load_checkpoint(save_native(tmp_path / "native", model, cfg))
    assert native.format == "native" and native.head == name
    assert native.heads == ({name} if spec.markers else set())
    hf_dir = save_checkpoint_as(native, tmp_path / "hf", to="hf")
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == [HF_CLASSES[name].__name__]
    theirs, info = HF_CLASSES[name].from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    back = load_checkpoint(hf_dir)
    assert back.format == "hf" and back.head == name and back.num_labels == native.num_labels
    again = build_model(back.config, name, num_labels=back.num_labels or 2)
    load_into(again, back, require_head=True)
    for (key, want), have in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(have, want), key


@pytest.mark.parametrize("name", list(HEADS))
def test_export_outputs_are_the_models_outputs_in_order(name):
    spec = HEADS[name]
    model = _built(name).eval()
    cfg = model.config
    batch = random_batch(cfg, batch=3, seq=11)
    sizes = {"batch": 3, "sequence": 11, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
             "num_labels": NUM_LABELS}
    with torch.no_grad():
        out = model(**batch)
        served = ServingModel(model)(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    if is_dataclass(out):
        assert [f.name for f in fields(out)] == list(spec.outputs)
    assert len(served) == len(spec.outputs)
    for tensor, axes in zip(served, spec.outputs.values()):
        assert tensor.shape == tuple(sizes.get(a, a) for a in axes)
