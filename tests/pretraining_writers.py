"""Pretraining files in other toolkits' layouts, written independently of bertforge's readers:

- NVIDIA's HDF5, with h5py, in the dtypes and gzip compression of DeepLearningExamples'
  create_pretraining_data.py (input_ids i4, input_mask i1, segment_ids i1,
  masked_lm_positions i4, masked_lm_ids i4, next_sentence_labels i1; masked-LM entries padded
  with 0);
- Habana's packed HDF5 (pack_pretraining_data_pytorch.py's fields: sequences back to back,
  input_mask numbering them, positions restarting at 0, masked-LM offsets into the row,
  next_sentence_positions/labels/weights per sequence);
- Google's TFRecords of tf.train.Example, the protobuf encoded by hand (tf_wire_reference), or
  by the protobuf library itself (`example_class`).

Samples are dicts of arrays in NVIDIA's field names plus masked_lm_weights (what the reader
must return): input_ids, input_mask, segment_ids (n, T), masked_lm_positions, masked_lm_ids,
masked_lm_weights (n, P), next_sentence_labels (n,).
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np
from tf_wire_reference import pb_bytes, pb_fixed32, pb_int, tfrecord, varint

CLS, SEP, MASK = 101, 102, 103


def synthetic_samples(n: int, seq: int, max_pred: int, seed: int, vocab: int = 30522,
                      min_len: int = 8) -> dict[str, np.ndarray]:
    """n made-up samples in BERT's shape: [CLS] A [SEP] B [SEP] of random length, up to
    max_pred masked positions (sorted, never [CLS]/[SEP]), NSP labels 0/1."""
    rng = np.random.default_rng(seed)
    out = {"input_ids": np.zeros((n, seq), np.int64), "input_mask": np.zeros((n, seq), np.int64),
           "segment_ids": np.zeros((n, seq), np.int64), "masked_lm_positions": np.zeros((n, max_pred), np.int64),
           "masked_lm_ids": np.zeros((n, max_pred), np.int64),
           "masked_lm_weights": np.zeros((n, max_pred), np.float32),
           "next_sentence_labels": rng.integers(0, 2, n)}
    for i in range(n):
        length = int(rng.integers(min_len, seq + 1))
        b_start = int(rng.integers(3, length - 1))  # [CLS] A(>=1) [SEP] B(>=1) [SEP]
        ids = rng.integers(1000, vocab, length)
        ids[0], ids[b_start - 1], ids[length - 1] = CLS, SEP, SEP
        out["input_ids"][i, :length] = ids
        out["input_mask"][i, :length] = 1
        out["segment_ids"][i, b_start:length] = 1
        candidates = [j for j in range(1, length - 1) if j != b_start - 1]
        m = int(rng.integers(1, min(max_pred, len(candidates)) + 1))
        positions = np.sort(rng.choice(candidates, m, replace=False))
        out["masked_lm_positions"][i, :m] = positions
        out["masked_lm_ids"][i, :m] = ids[positions]
        out["masked_lm_weights"][i, :m] = 1.0
        out["input_ids"][i, positions] = MASK
    return out


def from_batch(batch: dict) -> dict[str, np.ndarray]:
    """A bertforge batch (PretrainingDataset's keys) as samples in NVIDIA's field names."""
    weights = batch["masked_lm_weights"].numpy()
    return {"input_ids": batch["input_ids"].numpy(), "input_mask": batch["attention_mask"].numpy(),
            "segment_ids": batch["token_type_ids"].numpy(),
            "masked_lm_positions": batch["masked_lm_positions"].numpy() * (weights > 0),
            "masked_lm_ids": batch["masked_lm_ids"].numpy() * (weights > 0),
            "masked_lm_weights": weights, "next_sentence_labels": batch["next_sentence_labels"].numpy()}


def rows(samples: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in samples.items()}


def write_nvidia_hdf5(path: Path, s: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for key, dtype in (("input_ids", "i4"), ("input_mask", "i1"), ("segment_ids", "i1"),
                           ("masked_lm_positions", "i4"), ("masked_lm_ids", "i4"), ("next_sentence_labels", "i1")):
            f.create_dataset(key, data=s[key], dtype=dtype, compression="gzip")
    return path


def write_packed_hdf5(path: Path, s: dict[str, np.ndarray], packs: list[list[int]], max_per_pack: int = 3) -> Path:
    """Samples packed as `packs` says (sample numbers per row, in order), Habana's layout."""
    seq, max_pred = s["input_ids"].shape[1], s["masked_lm_positions"].shape[1]
    n = len(packs)
    f_ = {"input_ids": np.zeros((n, seq), np.int32), "input_mask": np.zeros((n, seq), np.int32),
          "segment_ids": np.zeros((n, seq), np.int8), "positions": np.zeros((n, seq), np.int32),
          "masked_lm_positions": np.zeros((n, max_pred + max_per_pack), np.int32),
          "masked_lm_ids": np.zeros((n, max_pred + max_per_pack), np.int32),
          "next_sentence_positions": np.zeros((n, max_per_pack), np.int32),
          "next_sentence_labels": np.zeros((n, max_per_pack), np.int8),
          "next_sentence_weights": np.zeros((n, max_per_pack), np.int32)}
    for r, pack in enumerate(packs):
        offset = mlm = 0
        for k, i in enumerate(pack):
            length = int(s["input_mask"][i].sum())
            assert offset + length <= seq
            f_["input_ids"][r, offset:offset + length] = s["input_ids"][i, :length]
            f_["input_mask"][r, offset:offset + length] = k + 1
            f_["segment_ids"][r, offset:offset + length] = s["segment_ids"][i, :length]
            f_["positions"][r, offset:offset + length] = np.arange(length)
            m = int((s["masked_lm_weights"][i] > 0).sum())
            f_["masked_lm_positions"][r, mlm:mlm + m] = offset + s["masked_lm_positions"][i, :m]
            f_["masked_lm_ids"][r, mlm:mlm + m] = s["masked_lm_ids"][i, :m]
            f_["next_sentence_positions"][r, k] = offset
            f_["next_sentence_labels"][r, k] = s["next_sentence_labels"][i]
            f_["next_sentence_weights"][r, k] = 1
            offset, mlm = offset + length, mlm + m
    with h5py.File(path, "w") as f:
        for key, value in f_.items():
            f.create_dataset(key, data=value, compression="gzip")
    return path


def greedy_packs(s: dict[str, np.ndarray], max_per_pack: int = 3) -> list[list[int]]:
    """Consecutive samples packed while they fit one row (tokens, and masked-LM entries in the
    packed width of max_predictions + max_per_pack)."""
    seq, mlm_width = s["input_ids"].shape[1], s["masked_lm_positions"].shape[1] + max_per_pack
    lengths = s["input_mask"].sum(axis=1).tolist()
    masked = (s["masked_lm_weights"] > 0).sum(axis=1).tolist()
    packs, current, used, used_mlm = [], [], 0, 0
    for i, (length, m) in enumerate(zip(lengths, masked)):
        if current and (used + length > seq or used_mlm + m > mlm_width or len(current) == max_per_pack):
            packs.append(current)
            current, used, used_mlm = [], 0, 0
        current.append(i)
        used, used_mlm = used + length, used_mlm + m
    return packs + [current]


# ---- TFRecords -------------------------------------------------------------------------------


def int64_feature(values, packed: bool) -> bytes:
    values = [int(v) for v in values]
    body = pb_bytes(1, b"".join(varint(v) for v in values)) if packed else b"".join(pb_int(1, v) for v in values)
    return pb_bytes(3, body)  # Feature.int64_list


def float_feature(values, packed: bool) -> bytes:
    values = [float(v) for v in values]
    body = (pb_bytes(1, struct.pack(f"<{len(values)}f", *values)) if packed
            else b"".join(pb_fixed32(1, struct.pack("<f", v)) for v in values))
    return pb_bytes(2, body)  # Feature.float_list


def example(features: dict[str, bytes]) -> bytes:
    """tf.train.Example { Features { map<string, Feature> } } from encoded Feature messages."""
    entries = b"".join(pb_bytes(1, pb_bytes(1, key.encode()) + pb_bytes(2, value)) for key, value in features.items())
    return pb_bytes(1, entries)


def google_example(s: dict[str, np.ndarray], i: int, packed: bool = True) -> bytes:
    """Sample i as Google's write_instance_to_example_files writes it."""
    feats = {key: int64_feature(s[key][i], packed) for key in
             ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids")}
    feats["masked_lm_weights"] = float_feature(s["masked_lm_weights"][i], packed)
    feats["next_sentence_labels"] = int64_feature([s["next_sentence_labels"][i]], packed)
    return example(feats)


def write_tfrecord(path: Path, records: list[bytes]) -> Path:
    path.write_bytes(b"".join(tfrecord(r) for r in records))
    return path


def write_google_tfrecord(path: Path, s: dict[str, np.ndarray], packed: bool = True) -> Path:
    return write_tfrecord(path, [google_example(s, i, packed) for i in range(len(s["input_ids"]))])


def example_class():
    """tf.train.Example as a class of the protobuf library (its descriptor built here, field
    numbers as in TensorFlow's example.proto / feature.proto), or None without protobuf."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        return None
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="bertforge_test_example.proto", package="tftest", syntax="proto3")
    for name, kind in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        m = fd.message_type.add(name=name)
        field = m.field.add(name="value", number=1, type=kind, label=F.LABEL_REPEATED)
        if kind != F.TYPE_BYTES:
            field.options.packed = True
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name, kind in ((1, "bytes_list", "BytesList"), (2, "float_list", "FloatList"),
                               (3, "int64_list", "Int64List")):
        feature.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                          type_name=f".tftest.{kind}", oneof_index=0)
    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tftest.Feature")
    features.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                       type_name=".tftest.Features.FeatureEntry")
    ex = fd.message_type.add(name="Example")
    ex.field.add(name="features", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tftest.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tftest.Example"))
