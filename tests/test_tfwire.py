"""bertforge.tfwire against protobuf encodings and CRC-32C written out independently
(tests/tf_wire_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tf_wire_reference import masked_crc, pb_bytes, pb_int, varint

from bertforge import tfwire
from bertforge.errors import DataError

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(INT64 | st.integers(0, 300), max_size=60))
def test_packed_varints_decode_what_protobuf_encodes(values):
    data = b"".join(varint(v) for v in values)
    got = tfwire.packed_varints(data, "x", DataError).view(np.int64)
    assert got.tolist() == values


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2000), st.integers(0, 2**64 - 1) | st.binary(max_size=40)), max_size=12))
def test_proto_fields_read_back_each_field(fields):
    message = b"".join(pb_int(n, v) if isinstance(v, int) else pb_bytes(n, v) for n, v in fields)
    assert tfwire.proto_fields(message, "x", DataError) == fields


def test_malformed_varints_are_refused():
    with pytest.raises(DataError, match="ends inside a value"):
        tfwire.packed_varints(varint(300)[:1], "file.tfrecord", DataError)
    with pytest.raises(DataError, match="longer than 10 bytes"):
        tfwire.packed_varints(b"\xff" * 11 + b"\x01", "file.tfrecord", DataError)
    with pytest.raises(DataError, match="file.tfrecord: protobuf field 3 runs past"):
        tfwire.proto_fields(pb_bytes(3, b"abcdef")[:-2], "file.tfrecord", DataError)


@pytest.mark.skipif(tfwire.crc32c_extend is None, reason="google-crc32c's C implementation is not installed")
@given(st.binary(max_size=300))
def test_masked_crc32c_is_tensorflows(data):
    assert tfwire.masked_crc32c(data) == masked_crc(data)
