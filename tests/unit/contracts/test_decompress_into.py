"""`decompress_into`: the cold-start decoder writes into a reused buffer, with the checks `decompress` makes."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings, strategies as st

from nest.contracts.chunks import LZ4_PIECE, Codec, compress, decompress_into
from nest.contracts.errors import InvalidInput


@given(st.binary(max_size=50_000), st.sampled_from(list(Codec)), st.integers(0, 64))
@settings(max_examples=60, deadline=None)
@example(b"", Codec.LZ4, 0)
@example(b"", Codec.ZSTD, 0)
def test_every_codec_round_trips_through_a_reused_buffer(raw: bytes, codec: Codec, slack: int) -> None:
    scratch = memoryview(bytearray(b"\xee" * (len(raw) + slack)))
    assert bytes(decompress_into(codec, compress(codec, raw), len(raw), scratch)) == raw
    assert bytes(decompress_into(codec, compress(codec, raw[::-1]), len(raw), scratch)) == raw[::-1]


def test_lz4_pieces_fill_the_buffer_in_order() -> None:
    raw = os.urandom(LZ4_PIECE * 3 + 12345)
    scratch = memoryview(bytearray(len(raw)))
    assert decompress_into(Codec.LZ4, compress(Codec.LZ4, raw), len(raw), scratch) == raw


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("declared", [1024, 1024**2 - 1, 1024**2 + 1])
def test_a_chunk_must_unpack_to_exactly_its_declared_size(codec: Codec, declared: int) -> None:
    """The bomb guard: a chunk never writes past its declared size into the buffer, nor passes as shorter."""
    data = compress(codec, b"\x01" * 1024**2)
    scratch = memoryview(bytearray(2 * 1024**2))
    with pytest.raises(InvalidInput, match="bytes"):
        decompress_into(codec, data, declared, scratch)
    if codec is not Codec.NONE:
        assert not any(scratch[declared:])


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.LZ4])
def test_a_truncated_or_garbled_chunk_is_refused(codec: Codec) -> None:
    raw = os.urandom(200_000)
    data = compress(codec, raw)
    scratch = memoryview(bytearray(len(raw)))
    with pytest.raises(InvalidInput, match="chunk"):
        decompress_into(codec, data[: len(data) // 2], len(raw), scratch)
    with pytest.raises(InvalidInput, match="not a valid"):
        decompress_into(codec, b"garbage!" * 8, len(raw), scratch)
