"""Google TensorFlow checkpoints read without TensorFlow.

The fixtures under tests/fixtures/tf/ were written BY TensorFlow (make_tf_fixtures.py, with
tf.compat.v1 Saver as Google's BERT code uses) together with what TensorFlow itself reads back
(expected.npz, variables.json). Our reader must return the same bytes; the converted models
must compute what transformers' BERT computes from the same TensorFlow tensors, mapped by the
small name map in this file (written independently of bertforge's).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from bertforge import tfwire
from bertforge.checkpoint import common, google
from bertforge.checkpoint import detect_format, load_checkpoint, load_into
from bertforge.checkpoint.tf_checkpoint import (
    TFCheckpointReader, list_variables, read_tf_checkpoint, resolve_prefix,
)
from bertforge.errors import CheckpointError
from bertforge.model import build_model
from conftest import assert_same_qa_logits, random_batch
from tf_wire_reference import crc32c_extend, masked_crc, pb_bytes, pb_int, varint

TF = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
PRETRAINING, SQUAD, CLASSIFIER = TF / "uncased_L-2_H-16_A-2", TF / "squad_sharded", TF / "classifier"
DTYPES, PARTITIONED = TF / "dtypes", TF / "partitioned"
READABLE = [PRETRAINING, SQUAD, CLASSIFIER, DTYPES]


def expected(directory: Path) -> dict[str, np.ndarray]:
    with np.load(directory / "expected.npz") as npz:
        return {name: npz[name] for name in npz.files}


def tf_listing(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    raw = json.loads((directory / "variables.json").read_text())
    return {name: (dtype, tuple(shape)) for name, (dtype, shape) in raw.items()}


@pytest.fixture
def reference_crc(monkeypatch):
    """Make the reader verify checksums with the pure-Python CRC above (google-crc32c or not)."""
    monkeypatch.setattr(tfwire, "crc32c_extend", crc32c_extend)


def test_reference_crc32c_is_crc32c():
    assert crc32c_extend(0, b"123456789") == 0xE3069283  # the standard check value


# ---- bit-exact against TensorFlow ----------------------------------------------------------


@pytest.mark.parametrize("directory", READABLE, ids=lambda p: p.name)
def test_tensors_equal_tensorflows_bit_for_bit(directory, reference_crc):
    ours = read_tf_checkpoint(directory)
    theirs = expected(directory)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype, name
        assert ours[name].shape == value.shape, name
        assert ours[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("directory", READABLE + [PARTITIONED], ids=lambda p: p.name)
def test_list_variables_equals_tensorflows(directory):
    assert list_variables(directory) == tf_listing(directory)


def test_fixture_shapes_are_googles():
    """The fixtures hold what Google's code writes: heads, adam slots, global_step, shards."""
    listing = tf_listing(PRETRAINING)
    assert listing["bert/encoder/layer_1/intermediate/dense/kernel"] == ("float32", (16, 48))
    assert listing["cls/seq_relationship/output_weights"] == ("float32", (2, 16))
    assert listing["cls/predictions/output_bias"] == ("float32", (101,))
    assert listing["bert/embeddings/word_embeddings/adam_m"] == ("float32", (101, 16))
    assert listing["global_step"] == ("int64", ())
    assert tf_listing(SQUAD)["cls/squad/output_weights"] == ("float32", (2, 16))
    assert tf_listing(CLASSIFIER)["output_weights"] == ("float32", (3, 16))
    assert TFCheckpointReader(SQUAD).num_shards == 3
    assert len(list(SQUAD.glob("model.ckpt-7.data-*"))) == 3


def test_dtypes_and_bfloat16_as_torch():
    reader = TFCheckpointReader(DTYPES)
    theirs = expected(DTYPES)
    bf16 = reader.read_torch("misc/bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16.view(torch.int16), torch.from_numpy(theirs["misc/bfloat16"].view(np.int16)))
    # bfloat16 is the top half of float32: the values are those of a float32 rounding
    assert torch.allclose(bf16.float(), torch.from_numpy(theirs["misc/float64"]).float(), rtol=1e-2)
    assert reader.read_torch("misc/float16").dtype == torch.float16
    assert reader.read_torch("misc/int64").dtype == torch.int64
    assert reader.read("misc/empty_float32").shape == (0, 4)
    assert reader.read("misc/scalar_float32").shape == ()
    assert "misc/string" not in read_tf_checkpoint(DTYPES)
    with pytest.raises(CheckpointError, match="string tensor"):
        reader.read("misc/string")


def test_path_forms_resolve_to_the_same_prefix(tmp_path):
    prefix = PRETRAINING / "bert_model.ckpt"
    for form in (PRETRAINING, prefix, PRETRAINING / "bert_model.ckpt.index",
                 PRETRAINING / "bert_model.ckpt.data-00000-of-00001"):
        assert resolve_prefix(form) == prefix
    assert resolve_prefix(SQUAD) == SQUAD / "model.ckpt-7"  # through the `checkpoint` state file
    assert load_checkpoint(prefix, format="tf").heads == {"pretraining"}
    assert detect_format(PRETRAINING / "bert_model.ckpt.index") == "tf"
    # a state file written on another machine names its absolute path: fall back to the basename
    copy = shutil.copytree(SQUAD, tmp_path / "moved")
    (copy / "checkpoint").write_text('model_checkpoint_path: "/content/out/model.ckpt-7"\n')
    assert resolve_prefix(copy) == copy / "model.ckpt-7"
    # non-ASCII names: TensorFlow 2.21 writes UTF-8; protobuf's text format default octal-escapes
    for suffix in (".index", ".data-00000-of-00003", ".data-00001-of-00003", ".data-00002-of-00003"):
        (copy / f"model.ckpt-7{suffix}").rename(copy / f"modèle.ckpt-7{suffix}")
    for written in ("modèle.ckpt-7", "mod\\303\\250le.ckpt-7"):
        (copy / "checkpoint").write_text(f'model_checkpoint_path: "{written}"\n', encoding="utf-8")
        assert resolve_prefix(copy) == copy / "modèle.ckpt-7"


def test_partitioned_variable_is_refused_by_name():
    reader = TFCheckpointReader(PARTITIONED)
    assert reader.variables["part/w"].num_slices == 2
    with pytest.raises(CheckpointError, match=r"'part/w' is saved in 2 slices \(a partitioned variable\)"):
        reader.read("part/w")
    assert reader.read("whole/b").tobytes() == expected(PARTITIONED)["whole/b"].tobytes()
    with pytest.raises(CheckpointError, match="partitioned"):
        read_tf_checkpoint(PARTITIONED)


# ---- checksums -------------------------------------------------------------------------------


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupt_tensor_fails_its_checksum(tmp_path, reference_crc):
    copy = shutil.copytree(CLASSIFIER, tmp_path / "ckpt")
    var = TFCheckpointReader(copy).variables["output_weights"]
    _flip_byte(copy / "model.ckpt-3.data-00000-of-00001", var.offset + 5)
    with pytest.raises(CheckpointError, match=r"checksum mismatch for 'output_weights'"):
        read_tf_checkpoint(copy)


def test_corrupt_index_block_fails_its_checksum(tmp_path, reference_crc):
    copy = shutil.copytree(CLASSIFIER, tmp_path / "ckpt")
    _flip_byte(copy / "model.ckpt-3.index", 20)
    with pytest.raises(CheckpointError, match="checksum mismatch in the block"):
        TFCheckpointReader(copy)


def test_google_crc32c_when_installed_matches_the_reference(tmp_path):
    google_crc32c = pytest.importorskip("google_crc32c", reason="google-crc32c not installed")
    assert google_crc32c.extend(0, b"123456789") == crc32c_extend(0, b"123456789")
    assert TFCheckpointReader(CLASSIFIER).verifies_checksums
    copy = shutil.copytree(CLASSIFIER, tmp_path / "ckpt")
    var = TFCheckpointReader(copy).variables["bert/pooler/dense/kernel"]
    _flip_byte(copy / "model.ckpt-3.data-00000-of-00001", var.offset)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_tf_checkpoint(copy)


def test_without_crc32c_reading_still_works(monkeypatch):
    monkeypatch.setattr(tfwire, "crc32c_extend", None)
    reader = TFCheckpointReader(CLASSIFIER)
    assert not reader.verifies_checksums
    assert reader.read("output_bias").tobytes() == expected(CLASSIFIER)["output_bias"].tobytes()


# ---- bad input -------------------------------------------------------------------------------


def test_truncated_data_file(tmp_path):
    copy = shutil.copytree(PRETRAINING, tmp_path / "ckpt")
    data = copy / "bert_model.ckpt.data-00000-of-00001"
    full = data.read_bytes()
    data.write_bytes(full[:-100])
    with pytest.raises(CheckpointError, match=r"bert_model\.ckpt\.data-00000-of-00001: truncated: '.+' "
                                              r"needs bytes \[\d+, \d+\), the file has \d+"):
        read_tf_checkpoint(copy)
    data.write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(copy)


def test_missing_data_shard_is_named(tmp_path):
    copy = shutil.copytree(SQUAD, tmp_path / "ckpt")
    (copy / "model.ckpt-7.data-00002-of-00003").unlink()
    with pytest.raises(CheckpointError, match=r"data shard\(s\) missing: model\.ckpt-7\.data-00002-of-00003"):
        read_tf_checkpoint(copy)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(copy)
    assert len(list_variables(copy)) == len(tf_listing(SQUAD))  # listing needs no data


def test_bad_magic(tmp_path):
    copy = shutil.copytree(CLASSIFIER, tmp_path / "ckpt")
    index = copy / "model.ckpt-3.index"
    _flip_byte(index, index.stat().st_size - 1)
    with pytest.raises(CheckpointError, match=r"model\.ckpt-3\.index: bad magic number"):
        TFCheckpointReader(copy)


def test_truncated_index(tmp_path):
    copy = shutil.copytree(CLASSIFIER, tmp_path / "ckpt")
    index = copy / "model.ckpt-3.index"
    index.write_bytes(index.read_bytes()[:30])
    with pytest.raises(CheckpointError, match="too short for a TensorFlow checkpoint index"):
        TFCheckpointReader(copy)


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint here"):
        read_tf_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
        load_checkpoint(tmp_path)


def test_directory_with_two_checkpoints_asks_which(tmp_path):
    copy = shutil.copytree(CLASSIFIER, tmp_path / "ckpt")
    (copy / "checkpoint").unlink()
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(copy / f"model.ckpt-3{suffix}", copy / f"model.ckpt-9{suffix}")
    with pytest.raises(CheckpointError, match=r"holds 2 TensorFlow checkpoints \(model\.ckpt-3\.index, "
                                              r"model\.ckpt-9\.index\)"):
        read_tf_checkpoint(copy)
    assert resolve_prefix(copy / "model.ckpt-9") == copy / "model.ckpt-9"


def test_state_file_naming_a_missing_checkpoint(tmp_path):
    copy = shutil.copytree(SQUAD, tmp_path / "ckpt")
    (copy / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-99"\n')
    with pytest.raises(CheckpointError, match=r"names checkpoint model\.ckpt-99, but .*model\.ckpt-99\.index "
                                              "does not exist"):
        read_tf_checkpoint(copy)


def test_prefix_that_does_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match=r"no .*nothing\.ckpt\.index"):
        read_tf_checkpoint(tmp_path / "nothing.ckpt")


# ---- an independent bundle writer, for inputs TensorFlow would never write ----------------


def _block(entries: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    """Every entry a restart point (no shared key bytes), then the 5-byte trailer."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += varint(0) + varint(len(key)) + varint(len(value)) + key + value
    restarts = restarts or [0]
    body += struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    stored = bytes(body) + bytes([compression])
    return stored + struct.pack("<I", masked_crc(stored))


_TF_DTYPE = {np.dtype("float32"): 1, np.dtype("int64"): 9}


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], *, compression: int = 0,
                 overrides: dict[str, dict[str, int]] | None = None, per_block: int = 1000) -> None:
    """A one-shard V2 bundle, as the format's description says (see tf_checkpoint's docstring),
    `per_block` table entries to a data block."""
    data, entries = bytearray(), []
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name]).tobytes()
        f = {"dtype": _TF_DTYPE[tensors[name].dtype], "shard": 0, "offset": len(data),
             "size": len(raw), "crc": masked_crc(raw)}
        f.update((overrides or {}).get(name, {}))
        shape = b"".join(pb_bytes(2, pb_int(1, d)) for d in tensors[name].shape)
        entry = (pb_int(1, f["dtype"]) + pb_bytes(2, shape) + pb_int(3, f["shard"])
                 + pb_int(4, f["offset"]) + pb_int(5, f["size"])
                 + varint(6 << 3 | 5) + struct.pack("<I", f["crc"]))
        entries.append((name.encode(), entry))
        data += raw
    header = pb_int(1, 1) + pb_bytes(3, pb_int(1, 1))
    table, index = b"", []
    kvs = [(b"", header)] + entries
    for start in range(0, len(kvs), per_block):
        chunk = kvs[start:start + per_block]
        block = _block(chunk, compression)
        index.append((chunk[-1][0], varint(len(table)) + varint(len(block) - 5)))
        table += block
    meta_at = len(table)
    table += _block([])
    index_at = len(table)
    table += _block(index)
    handles = (varint(meta_at) + varint(index_at - meta_at - 5)
               + varint(index_at) + varint(len(table) - index_at - 5))
    footer = handles.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(table + footer)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def _two_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a/kernel": rng.standard_normal((3, 4)).astype(np.float32),
            "b/step": np.array([7, -9], dtype=np.int64)}


@pytest.mark.parametrize("per_block", [1, 1000], ids=["block-per-entry", "one-block"])
def test_independent_writer_round_trip(tmp_path, reference_crc, per_block):
    """Also the multi-block table that only checkpoints with thousands of variables reach."""
    tensors = _two_tensors()
    write_bundle(tmp_path / "x.ckpt", tensors, per_block=per_block)
    ours = read_tf_checkpoint(tmp_path / "x.ckpt")
    assert {k: v.tobytes() for k, v in ours.items()} == {k: v.tobytes() for k, v in tensors.items()}


def test_snappy_block_is_refused_clearly(tmp_path, reference_crc):
    write_bundle(tmp_path / "x.ckpt", _two_tensors(), compression=1)
    with pytest.raises(CheckpointError, match="snappy-compressed"):
        TFCheckpointReader(tmp_path / "x.ckpt")


@pytest.mark.parametrize("override, message", [
    ({"shard": 3}, r"'a/kernel' is in shard 3, out of range for a 1-shard checkpoint"),
    ({"size": 40}, r"'a/kernel' \(float32\[3, 4\]\) should take 48 bytes, the index says 40"),
    ({"offset": 10_000}, r"truncated: 'a/kernel' needs bytes \[10000, 10048\)"),
], ids=["shard", "size", "offset"])
def test_entry_out_of_range(tmp_path, override, message):
    write_bundle(tmp_path / "x.ckpt", _two_tensors(), overrides={"a/kernel": override})
    with pytest.raises(CheckpointError, match=message):
        read_tf_checkpoint(tmp_path / "x.ckpt")


def test_unknown_dtype_is_named(tmp_path):
    write_bundle(tmp_path / "x.ckpt", _two_tensors(), overrides={"b/step": {"dtype": 21}})
    with pytest.raises(CheckpointError, match=r"'b/step' has TensorFlow dtype enum 21"):
        list_variables(tmp_path / "x.ckpt")


# ---- Google names -> bertforge, against transformers --------------------------------------


def tf_to_hf_reference(name: str, value: np.ndarray) -> tuple[str, torch.Tensor]:
    """TF name -> transformers name, the way transformers' own TF loader walks the names."""
    tensor = torch.from_numpy(value.copy())
    special = {"cls/squad/output_weights": "qa_outputs.weight", "cls/squad/output_bias": "qa_outputs.bias",
               "output_weights": "classifier.weight", "output_bias": "classifier.bias",
               "cls/predictions/output_bias": "cls.predictions.bias"}
    if name in special:
        return special[name], tensor
    parts = []
    for part in name.split("/"):
        m = re.fullmatch(r"layer_(\d+)", part)
        parts += ["layer", m.group(1)] if m else [part]
    last = parts.pop()
    if last == "kernel":
        return ".".join(parts + ["weight"]), tensor.T.contiguous()
    if last.endswith("_embeddings"):
        return ".".join(parts + [last, "weight"]), tensor
    return ".".join(parts + [{"gamma": "weight", "beta": "bias", "output_weights": "weight",
                              "output_bias": "bias"}.get(last, last)]), tensor


def transformers_model(directory: Path, cls, **kwargs):
    config = transformers.BertConfig(**json.loads((directory / "bert_config.json").read_text()), **kwargs)
    model = cls(config).eval()
    state = dict(tf_to_hf_reference(name, value) for name, value in expected(directory).items()
                 if not name.endswith(("adam_m", "adam_v")) and name != "global_step")
    missing, unexpected = model.load_state_dict(state, strict=False)
    no_pooler = cls is transformers.BertForQuestionAnswering  # run_squad's graph still has one
    assert set(unexpected) == ({"bert.pooler.dense.weight", "bert.pooler.dense.bias"} if no_pooler else set())
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    return model


def ours(directory: Path, head: str):
    ckpt = load_checkpoint(directory)
    assert ckpt.format == "tf"
    model = build_model(ckpt.config, head, num_labels=ckpt.num_labels or 2).eval()
    load_into(model, ckpt, require_head=True)
    return ckpt, model


def test_pretraining_checkpoint_matches_transformers():
    ckpt, model = ours(PRETRAINING, "pretraining")
    theirs = transformers_model(PRETRAINING, transformers.BertForPreTraining)
    assert not any("adam" in k or "global_step" in k for k in ckpt.state)
    assert ckpt.do_lower_case is True  # from the directory name uncased_L-2_H-16_A-2
    assert ckpt.vocab_file == PRETRAINING / "vocab.txt"
    batch = random_batch(ckpt.config, seq=16)
    with torch.no_grad():
        out, ref = model(**batch), theirs(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out.mlm_logits[mask], ref.prediction_logits[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, rtol=0, atol=1e-5)


def test_squad_checkpoint_matches_transformers():
    ckpt, model = ours(SQUAD, "qa")
    theirs = transformers_model(SQUAD, transformers.BertForQuestionAnswering)
    assert ckpt.heads == {"qa"} and ckpt.do_lower_case is None
    batch = random_batch(ckpt.config, seq=16, seed=1)
    assert_same_qa_logits(model, theirs, batch)


def test_classifier_checkpoint_matches_transformers():
    ckpt, model = ours(CLASSIFIER, "classification")
    theirs = transformers_model(CLASSIFIER, transformers.BertForSequenceClassification, num_labels=3)
    assert ckpt.heads == {"classification"} and ckpt.num_labels == 3
    batch = random_batch(ckpt.config, seq=16, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), theirs(**batch).logits, rtol=0, atol=1e-5)


def test_kernels_are_transposed_and_output_weights_are_not():
    state = load_checkpoint(PRETRAINING).state
    theirs = expected(PRETRAINING)
    assert torch.equal(state["nsp.weight"], torch.from_numpy(theirs["cls/seq_relationship/output_weights"]))
    assert torch.equal(state["mlm.dense.weight"],
                       torch.from_numpy(theirs["cls/predictions/transform/dense/kernel"]).T)
    qkv = state["bert.encoder.layers.1.attention.qkv.weight"]
    key = torch.from_numpy(theirs["bert/encoder/layer_1/attention/self/key/kernel"])
    assert torch.equal(qkv[16:32], key.T)  # rows H..2H of the fused projection are the key's


def test_unknown_variable_is_reported_not_dropped(tmp_path):
    tensors = {name: value for name, value in expected(CLASSIFIER).items()}
    tensors["bert/encoder/layer_0/attention/self/rotary/kernel"] = np.ones((16, 16), np.float32)
    tensors["output_weights/adam_m"] = np.ones((3, 16), np.float32)  # a slot: ignored
    write_bundle(tmp_path / "model.ckpt", tensors)
    shutil.copy(CLASSIFIER / "bert_config.json", tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert "bert/encoder/layer_0/attention/self/rotary/kernel" in ckpt.state
    assert "output_weights/adam_m" not in ckpt.state
    model = build_model(ckpt.config, "classification", num_labels=3)
    with pytest.raises(CheckpointError,
                       match=r"unexpected \(1\): bert/encoder/layer_0/attention/self/rotary/kernel"):
        load_into(model, ckpt)


@pytest.mark.parametrize("name, lower", [
    ("uncased_L-12_H-768_A-12", True), ("cased_L-12_H-768_A-12", False),
    ("multi_cased_L-12_H-768_A-12", False), ("wwm_uncased_L-24_H-1024_A-16", True),
    ("chinese_L-12_H-768_A-12", None), ("multilingual_L-12_H-768_A-12", None), ("squad_out", None),
])
def test_casing_from_googles_release_names(tmp_path, name, lower):
    assert common.infer_do_lower_case(tmp_path / name / "bert_model.ckpt") is lower


def test_training_state_names():
    for name in ("global_step", "bert/pooler/dense/kernel/adam_m", "output_bias/adam_v",
                 "bert/embeddings/word_embeddings/lamb_v", "bert/pooler/dense/bias/Adam_1"):
        assert google.is_training_state(name), name
    for name in tf_listing(CLASSIFIER):
        if name != "global_step":
            assert not google.is_training_state(name) and google.google_to_hf(name), name


# ---- with TensorFlow itself, where it is installed (never in CI) ---------------------------


def test_fresh_checkpoint_written_by_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (the fixture tests "
                                                  "above cover its files)")
    tf1 = tf.compat.v1
    graph = tf.Graph()
    rng = np.random.default_rng(5)
    values = {"bert/pooler/dense/kernel": rng.standard_normal((8, 8)).astype(np.float32),
              "x/half": rng.standard_normal((3,)).astype(np.float16),
              "global_step": np.int64(12)}
    with graph.as_default():
        for name, value in values.items():
            tf1.get_variable(name, initializer=value)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "fresh.ckpt"), write_meta_graph=False)
    theirs = tf.train.load_checkpoint(str(tmp_path / "fresh.ckpt"))
    got = read_tf_checkpoint(tmp_path)
    assert set(got) == set(values)
    for name in values:
        assert got[name].tobytes() == np.asarray(theirs.get_tensor(name)).tobytes()
