"""course_lib.quant.pack: int4 packing round trip, storage size, byte layout, signed/unsigned codes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.quant import pack_int4, quantize, to_signed, to_unsigned, unpack_int4

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@FAST
@given(st.lists(st.integers(1, 5), min_size=0, max_size=2), st.integers(1, 16), st.integers(0, 2**31 - 1),
       st.sampled_from([torch.uint8, torch.int8, torch.int32, torch.int64]))
def test_pack_then_unpack_is_identity_and_halves_storage(lead, half_last, seed, dtype):
    shape = (*lead, 2 * half_last)
    codes = torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (*lead, half_last)
    assert torch.equal(unpack_int4(packed), codes.to(torch.uint8))
    as_bytes = codes.to(torch.uint8)  # one code per byte: the int8 storage it replaces
    assert packed.numel() * packed.element_size() * 2 == as_bytes.numel() * as_bytes.element_size()


def test_nibble_order():
    """Element 2i -> low nibble, element 2i+1 -> high nibble: [1, 2] -> 0x21."""
    assert pack_int4(torch.tensor([1, 2, 15, 0])).tolist() == [0x21, 0x0F]
    assert unpack_int4(torch.tensor([0x21, 0xF0], dtype=torch.uint8)).tolist() == [1, 2, 0, 15]


@pytest.mark.parametrize("bits", range(2, 9))
def test_signed_unsigned_round_trip(bits):
    half = 2 ** (bits - 1)
    q = torch.arange(-half, half, dtype=torch.int8 if bits < 8 else torch.int16).to(torch.int8)
    u = to_unsigned(q, bits)
    assert u.dtype == torch.uint8 and u.tolist() == list(range(2 * half))
    assert torch.equal(to_signed(u, bits), q)


def test_int4_weight_codes_pack_to_half_the_bytes():
    qt = quantize(torch.randn(64, 128), 4, granularity="group", group_size=32)
    packed = pack_int4(to_unsigned(qt.q, 4))
    assert packed.numel() * packed.element_size() == qt.q.numel() * qt.q.element_size() // 2
    assert torch.equal(to_signed(unpack_int4(packed), 4), qt.q)


def test_pack_errors():
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..15"):
        pack_int4(torch.tensor([3, 16]))
    with pytest.raises(ValueError, match="to_unsigned"):
        pack_int4(torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="integer dtype"):
        pack_int4(torch.zeros(4))
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        to_unsigned(torch.tensor([8]), 4)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        to_signed(torch.tensor([16]), 4)
