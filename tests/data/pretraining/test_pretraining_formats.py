"""Pretraining data other toolkits prepared: NVIDIA's and Habana's HDF5, Google's and MLPerf's
TFRecords. Files are written by independent writers (tests/pretraining_writers.py: h5py, a
hand-written protobuf encoder, the protobuf library) and every field must read back as written;
order, rank sharding, resume and the refusal of bad input are checked on them."""

from __future__ import annotations

import gzip
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from pretraining_writers import (example_class, google_example, greedy_packs, rows, synthetic_samples,
                                 write_google_tfrecord, write_nvidia_hdf5, write_packed_hdf5, write_tfrecord)
from tf_wire_reference import crc32c_extend

from bertforge import tfwire
from bertforge.data.pretraining import StaticMaskDataset, open_pretraining_data
from bertforge.data.pretraining.sources import resolve_files
from bertforge.errors import CheckpointError, DataError

SEQ, PRED, N = 40, 6, 90
# batch key -> the written field it must equal
FIELDS = {"input_ids": "input_ids", "attention_mask": "input_mask", "token_type_ids": "segment_ids",
          "masked_lm_positions": "masked_lm_positions", "masked_lm_ids": "masked_lm_ids",
          "masked_lm_weights": "masked_lm_weights", "next_sentence_labels": "next_sentence_labels"}
LAYOUTS = {"nvidia": "NVIDIA HDF5", "packed": "Habana packed HDF5", "tfrecord": "TFRecord",
           "tfrecord-unpacked-lists": "TFRecord"}


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return synthetic_samples(N, SEQ, PRED, seed=0, min_len=6)


def write(kind: str, directory, s: dict[str, np.ndarray], files: int = 3):
    """`s` split into `files` files of `kind`, named as MLPerf names them (no extension)."""
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(s["input_ids"]), files + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part, path = rows(s, slice(lo, hi)), directory / f"part-{k:05d}-of-{files:05d}"
        if kind == "nvidia":
            write_nvidia_hdf5(path, part)
        elif kind == "packed":
            write_packed_hdf5(path, part, greedy_packs(part))
        else:
            write_google_tfrecord(path, part, packed=kind == "tfrecord")
    return directory


def read_all(ds) -> dict[str, np.ndarray]:
    parts = list(ds.eval_batches(1000))
    return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}


def open_data(spec, seed: int = 0, **kw) -> StaticMaskDataset:
    ds = open_pretraining_data(spec, flag="--input_dir", seed=seed, **kw)
    assert isinstance(ds, StaticMaskDataset)
    return ds


# ---- every field, as written ------------------------------------------------------------------


@pytest.mark.parametrize("kind", LAYOUTS)
def test_every_field_reads_back_as_written(kind, tmp_path, samples):
    ds = open_data(str(write(kind, tmp_path / kind, samples)))
    assert ds.layout == LAYOUTS[kind]
    assert (ds.num_samples, ds.max_seq_length) == (N, SEQ)
    # Habana's masked-LM arrays are wider: max_predictions + sequences per pack
    assert ds.max_predictions_per_seq == PRED + (3 if kind == "packed" else 0)
    got = read_all(ds)
    for key, field in FIELDS.items():
        value = got[key][:, :PRED] if key.startswith("masked_lm") else got[key]
        assert np.array_equal(value, samples[field]), key
        assert got[key].dtype == (np.float32 if key == "masked_lm_weights" else np.int64), key
    assert not got["masked_lm_weights"][:, PRED:].any()


def test_nvidia_masked_entries_end_at_the_first_zero_position(tmp_path):
    """NVIDIA's reader takes the entries before the first 0 position ([CLS] is never masked);
    what follows is padding even when it is not 0."""
    s = synthetic_samples(2, 16, 4, seed=1)
    s["masked_lm_positions"][0] = [3, 5, 0, 9]
    s["masked_lm_ids"][0] = [2000, 2001, 7, 2003]
    got = read_all(open_data(str(write_nvidia_hdf5(tmp_path / "a.hdf5", s))))
    assert got["masked_lm_positions"][0].tolist() == [3, 5, 0, 0]
    assert got["masked_lm_ids"][0].tolist() == [2000, 2001, 0, 0]
    assert got["masked_lm_weights"][0].tolist() == [1, 1, 0, 0]


def test_tfrecord_weights_are_taken_as_written(tmp_path):
    s = synthetic_samples(3, 16, 4, seed=2)
    s["masked_lm_weights"][1, 0] = 0.5
    got = read_all(open_data(str(write_google_tfrecord(tmp_path / "a.tfrecord", s))))
    assert np.array_equal(got["masked_lm_weights"], s["masked_lm_weights"])


def test_our_example_encoding_is_what_protobuf_parses(samples):
    """The hand-written encoder of these tests, checked against the protobuf library."""
    cls = example_class()
    if cls is None:
        pytest.skip("protobuf is not installed")
    for packed in (True, False):
        message = cls()
        message.ParseFromString(google_example(samples, 4, packed))
        feature = message.features.feature
        assert list(feature["input_ids"].int64_list.value) == samples["input_ids"][4].tolist()
        assert list(feature["masked_lm_weights"].float_list.value) == samples["masked_lm_weights"][4].tolist()
        assert list(feature["next_sentence_labels"].int64_list.value) == [samples["next_sentence_labels"][4]]


def test_examples_serialized_by_protobuf_read_back(tmp_path, samples):
    cls = example_class()
    if cls is None:
        pytest.skip("protobuf is not installed")
    records = []
    for i in range(10):
        message = cls()
        for key in ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids"):
            message.features.feature[key].int64_list.value.extend(samples[key][i].tolist())
        message.features.feature["masked_lm_weights"].float_list.value.extend(samples["masked_lm_weights"][i].tolist())
        message.features.feature["next_sentence_labels"].int64_list.value.append(int(samples["next_sentence_labels"][i]))
        records.append(message.SerializeToString())
    got = read_all(open_data(str(write_tfrecord(tmp_path / "protobuf.tfrecord", records))))
    for key, field in FIELDS.items():
        assert np.array_equal(got[key], samples[field][:10]), key


# ---- which files, which format ------------------------------------------------------------------


def test_files_are_named_as_directory_glob_list_or_comma_list(tmp_path, samples):
    d = write("nvidia", tmp_path / "d", samples, files=3)
    names = sorted(p.name for p in d.iterdir())
    (d / ".hidden").write_text("skipped")
    assert [p.name for p in resolve_files(str(d), "--input_dir")] == names
    assert [p.name for p in resolve_files(str(d / "part-0000[02]*"), "--input_dir")] == [names[0], names[2]]
    assert [p.name for p in resolve_files(f"{d / names[2]},{d / names[0]}", "--input_dir")] == [names[2], names[0]]
    assert [p.name for p in resolve_files([str(d / names[1]), str(d)], "--input_dir")] == [names[1], names[0], names[2]]
    with pytest.raises(DataError, match="--input_dir: .*nothing-here does not exist"):
        resolve_files(str(tmp_path / "nothing-here"), "--input_dir")
    with pytest.raises(DataError, match="no file matches"):
        resolve_files(str(d / "*.tfrecord"), "--input_dir")


def test_unsupported_files_are_listed(tmp_path, samples):
    d = tmp_path / "mess"
    d.mkdir()
    (d / "notes.txt").write_text("some text\n")
    (d / "wiki.txt").write_text("more text\n")
    (d / "data.tfrecord.gz").write_bytes(gzip.compress(b"x" * 100))
    with pytest.raises(DataError) as err:
        open_data(str(d))
    message = str(err.value)
    assert "--input_dir" in message and "2 text (notes.txt, wiki.txt)" in message
    assert "1 gzip-compressed (data.tfrecord.gz)" in message and "Decompress" in message
    assert "Supported:" in message and "TFRecord" in message and "HDF5" in message


def test_one_data_set_is_one_format(tmp_path, samples):
    d = write("nvidia", tmp_path / "mixed", samples, files=2)
    write_google_tfrecord(d / "extra.tfrecord", rows(samples, slice(0, 5)))
    with pytest.raises(DataError, match=r"several kinds: 2 HDF5 \(.*\); 1 TFRecord \(extra.tfrecord\)"):
        open_data(str(d))


def test_layouts_must_agree_across_files(tmp_path):
    write_nvidia_hdf5(tmp_path / "a.hdf5", synthetic_samples(4, 32, 5, seed=3))
    write_nvidia_hdf5(tmp_path / "b.hdf5", synthetic_samples(4, 64, 5, seed=4))
    with pytest.raises(DataError, match=r"b.hdf5: NVIDIA HDF5 of sequence length 64 .*/a.hdf5 is NVIDIA HDF5 of 32"):
        open_data(str(tmp_path))


def test_hdf5_without_the_fields_names_what_is_missing(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("input_ids", data=np.zeros((2, 8), np.int32))
        f.create_dataset("labels", data=np.zeros(2, np.int32))
    with pytest.raises(DataError, match=r"other.h5: not BERT pretraining data .*no input_mask, segment_ids, "
                                        r"masked_lm_positions, masked_lm_ids, next_sentence_labels "
                                        r"\(it has: input_ids, labels\)"):
        open_data(str(tmp_path))


def test_variable_length_hdf5_is_refused_with_a_pointer(tmp_path):
    with h5py.File(tmp_path / "part_eval_10k", "w") as f:
        ids = f.create_dataset("input_ids", (2,), dtype=h5py.vlen_dtype(np.dtype("int16")))
        ids[0], ids[1] = np.array([101, 7, 102], np.int16), np.array([101, 102], np.int16)
        f.create_dataset("next_sentence_labels", data=np.zeros(2, np.int8))
    with pytest.raises(DataError, match=r"part_eval_10k: variable-length HDF5 .* not supported; use the fixed-length"):
        open_data(str(tmp_path))


def test_hdf5_shapes_must_agree(tmp_path, samples):
    s = rows(samples, slice(0, 4))
    write_nvidia_hdf5(tmp_path / "a.hdf5", s)
    with h5py.File(tmp_path / "a.hdf5", "a") as f:
        del f["segment_ids"]
        f.create_dataset("segment_ids", data=np.zeros((4, SEQ - 1), np.int8))
    with pytest.raises(DataError, match=r"a.hdf5: segment_ids has shape \(4, 39\), expected \(4, 40\)"):
        open_data(str(tmp_path))


def test_tfrecord_examples_must_be_pretraining_examples(tmp_path, samples):
    from pretraining_writers import example, int64_feature
    write_tfrecord(tmp_path / "a.tfrecord", [example({"input_ids": int64_feature([1, 2], True)})])
    with pytest.raises(DataError, match=r"a.tfrecord: record 0: not a BERT pretraining example: no input_mask, "
                                        r".*\(it has: input_ids\)"):
        open_data(str(tmp_path))


def test_packed_tfrecords_are_refused(tmp_path, samples):
    from pretraining_writers import example, int64_feature
    record = example({"input_ids": int64_feature([1], True), "next_sentence_positions": int64_feature([0], True)})
    write_tfrecord(tmp_path / "a.tfrecord", [record])
    with pytest.raises(DataError, match="packed-sequence example .*not supported"):
        open_data(str(tmp_path))


@pytest.fixture
def reference_crc(monkeypatch):
    """Verify checksums with the reference CRC-32C (google-crc32c's C code or not)."""
    monkeypatch.setattr(tfwire, "crc32c_extend", crc32c_extend)


def test_corrupt_and_truncated_tfrecords_are_refused(tmp_path, samples, reference_crc):
    path = write_google_tfrecord(tmp_path / "a.tfrecord", rows(samples, slice(0, 6)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    ds = open_data(str(path))  # headers are intact: counting works, reading the record fails
    with pytest.raises(DataError, match=r"a.tfrecord: record \d: checksum mismatch"):
        read_all(ds)
    write_google_tfrecord(path, rows(samples, slice(0, 6)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"a.tfrecord: truncated: its last record \(number 5\)"):
        open_data(str(path))


@pytest.mark.parametrize("kind", ["nvidia", "tfrecord"])
@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s["input_mask"].__setitem__((7, 2), 0), "input_mask must be 1 on the real tokens"),
    (lambda s: s["segment_ids"].__setitem__((7, 1), 2), "segment_ids must be 0 or 1"),
    (lambda s: s["masked_lm_positions"].__setitem__((7, 0), SEQ - 1), "masked_lm_positions must point at real tokens"),
    (lambda s: s["input_ids"].__setitem__((7, 1), 40000), r"input_ids must be in \[0, 30522\)"),
    (lambda s: s["next_sentence_labels"].__setitem__(7, 3), "next_sentence_labels must be 0 or 1"),
], ids=["mask", "segment", "position", "vocab", "nsp"])
def test_bad_samples_are_named(kind, corrupt, message, tmp_path, samples):
    s = rows(samples, slice(0, 10))
    s = {k: v.copy() for k, v in s.items()}
    s["input_mask"][7, SEQ - 1] = 0  # sample 7 is shorter than SEQ, so that SEQ - 1 is padding
    s["input_ids"][7, SEQ - 1] = 0
    corrupt(s)
    write("nvidia" if kind == "nvidia" else "tfrecord", tmp_path / kind, s, files=1)
    ds = open_data(str(tmp_path / kind))
    ds.vocab_size = 30522
    where = "row 7" if kind == "nvidia" else "record 7"
    with pytest.raises(DataError, match=rf"part-00000-of-00001: {where}: {message}"):
        read_all(ds)


def test_packed_rows_must_hold_contiguous_sequences(tmp_path, samples):
    s = rows(samples, slice(0, 6))
    path = write_packed_hdf5(tmp_path / "p.h5", s, greedy_packs(s))
    with h5py.File(path, "a") as f:
        starts = f["next_sentence_positions"][()]
        row = int(np.flatnonzero(f["next_sentence_weights"][()].sum(1) > 1)[0])
        starts[row, 1] += 1
        f["next_sentence_positions"][...] = starts
    with pytest.raises(DataError, match=rf"p.h5: row {row}, sequence 2: its tokens .* not one run starting"):
        read_all(open_data(str(path)))


# ---- order, sharding, resume --------------------------------------------------------------------


def _equal(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_an_epoch_visits_every_sample_once_a_window_at_a_time(tmp_path, samples):
    ds = open_data(str(write("nvidia", tmp_path / "d", samples, files=6)), seed=5)
    files = np.searchsorted(ds._ends, np.arange(N), side="right")
    for epoch in (0, 1):
        order = ds.epoch_indices(epoch, 0, N)
        assert sorted(order.tolist()) == list(range(N))
        # shuffle_window 1: the epoch reads one file after the other, each file shuffled
        visited = files[order]
        assert (np.diff(visited) != 0).sum() == 5
        assert not np.array_equal(np.sort(order[:15]), order[:15])
    assert not np.array_equal(ds.epoch_indices(0, 0, N), ds.epoch_indices(1, 0, N))
    # epoch_indices of any slice is the slice of the whole
    assert np.array_equal(ds.epoch_indices(1, 7, 52), ds.epoch_indices(1, 0, N)[7:52])
    # the seed decides the order
    assert np.array_equal(open_data(str(tmp_path / "d"), seed=5).epoch_indices(0, 0, N), ds.epoch_indices(0, 0, N))
    assert not np.array_equal(open_data(str(tmp_path / "d"), seed=6).epoch_indices(0, 0, N), ds.epoch_indices(0, 0, N))
    wide = open_data(str(tmp_path / "d"), seed=5, shuffle_window=3).epoch_indices(0, 0, N)
    assert len(set(files[wide[:45]].tolist())) == 3  # a window of three files, mixed


def test_batches_are_the_samples_of_the_epoch_order(tmp_path, samples):
    ds = open_data(str(write("tfrecord", tmp_path / "d", samples)), seed=2)
    order = ds.epoch_indices(0, 0, N)
    written = {samples["input_ids"][i].tobytes(): i for i in range(N)}
    assert len(written) == N
    run = ds.batches(16)
    for k in range(N // 16):
        batch = next(run)
        got = [written[row.numpy().tobytes()] for row in batch["input_ids"]]
        assert got == order[16 * k:16 * (k + 1)].tolist()


@pytest.mark.parametrize("kind", ["nvidia", "packed", "tfrecord"])
def test_two_ranks_see_the_one_rank_batch_in_halves(kind, tmp_path, samples):
    d = str(write(kind, tmp_path / kind, samples))
    one = open_data(d).batches(20)
    r0, r1 = open_data(d).batches(20, rank=0, world_size=2), open_data(d).batches(20, rank=1, world_size=2)
    for _ in range(6):  # past the end of the first epoch (4 batches of 20 out of 90)
        whole, half0, half1 = next(one), next(r0), next(r1)
        assert half0["input_ids"].shape[0] == 10
        assert _equal(whole, {k: torch.cat([half0[k], half1[k]]) for k in whole})


@pytest.mark.parametrize("kind", ["nvidia", "packed", "tfrecord"])
def test_resume_returns_the_identical_next_batch(kind, tmp_path, samples):
    d = str(write(kind, tmp_path / kind, samples))
    ds = open_data(d)
    per_epoch = N // 16
    run = ds.batches(16)
    states, batches = [], []
    for _ in range(per_epoch + 2):
        batches.append(next(run))
        states.append(ds.state_dict())
    assert states[per_epoch - 1]["epoch"] == 0 and states[per_epoch]["epoch"] == 1
    for k in (1, per_epoch - 1, per_epoch):  # mid-epoch, at its end, in the next one
        resumed = open_data(d)
        resumed.load_state_dict(json.loads(json.dumps(states[k])))
        assert _equal(next(resumed.batches(16)), batches[k + 1]), k
    r0, r1 = open_data(d), open_data(d)
    r0.load_state_dict(states[1])
    r1.load_state_dict(states[1])
    halves = next(r0.batches(16, 0, 2)), next(r1.batches(16, 1, 2))
    assert _equal(batches[2], {k: torch.cat([halves[0][k], halves[1][k]]) for k in halves[0]})


def test_resume_rejects_other_data(tmp_path, samples):
    d = write("nvidia", tmp_path / "d", samples)
    state = open_data(str(d)).state_dict()
    with pytest.raises(CheckpointError, match="seed"):
        open_data(str(d), seed=1).load_state_dict(state)
    with pytest.raises(CheckpointError, match="shuffle_window"):
        open_data(str(d), shuffle_window=2).load_state_dict(state)
    other = tmp_path / "other"
    shutil.copytree(d, other)
    (other / "part-00002-of-00003").rename(other / "part-00009-of-00003")
    with pytest.raises(CheckpointError, match="files"):
        open_data(str(other)).load_state_dict(state)
    # the same files elsewhere resume
    moved = tmp_path / "moved"
    shutil.copytree(d, moved)
    open_data(str(moved)).load_state_dict(state)


@pytest.mark.parametrize("kind", ["nvidia", "tfrecord"])
def test_memory_holds_the_files_of_the_current_batch(kind, tmp_path, samples):
    ds = open_data(str(write(kind, tmp_path / kind, samples, files=6)))
    held = lambda: [s for s in ds.shards if (s._arrays if kind == "nvidia" else s._records) is not None]  # noqa: E731
    run = ds.batches(10)
    for _ in range(12):
        next(run)
        assert 1 <= len(held()) <= 2  # a batch of 10 spans at most two files of 15
    ds.close()
    assert not held()
