"""protocols.framing: the cnbank length-prefixed frames, fed in every possible piece size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.framing import FrameDecoder, FrameError, encode_frame

BODY_A = "<CnBank>张三𠮷</CnBank>".encode("gb18030")
BODY_B = b"x"


def test_encode_frame_prefixes_eight_zero_padded_digits():
    """The prefix is the body length in 8 ASCII digits, excluding itself."""
    assert encode_frame(b"abc") == b"00000003abc"
    assert encode_frame(BODY_A) == b"%08d" % len(BODY_A) + BODY_A


def test_encode_frame_other_width():
    """The width is a per-bank setting and is honoured both ways."""
    framed = encode_frame(b"hello", width=4)
    assert framed == b"0005hello"
    assert FrameDecoder(width=4).feed(framed) == [b"hello"]


def test_encode_frame_refuses_what_the_receiver_would_refuse():
    """An empty body (zero prefix) or a length that does not fit the width is never produced."""
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(b"x" * 100, width=2)


def test_one_frame_in_one_piece():
    """A whole frame fed at once comes back as its body."""
    assert FrameDecoder().feed(encode_frame(BODY_A)) == [BODY_A]


def test_every_single_split_point():
    """Two frames split in two at every byte boundary give the same two bodies."""
    stream = encode_frame(BODY_A) + encode_frame(BODY_B)
    for i in range(len(stream) + 1):
        d = FrameDecoder()
        got = d.feed(stream[:i]) + d.feed(stream[i:])
        assert got == [BODY_A, BODY_B], i
        assert d.pending == 0


def test_every_pair_of_split_points():
    """Three pieces cut at every pair of boundaries (prefix, body, across frames) reassemble."""
    stream = encode_frame(b"abcdef") + encode_frame(b"gh")
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            d = FrameDecoder()
            got = d.feed(stream[:i]) + d.feed(stream[i:j]) + d.feed(stream[j:])
            assert got == [b"abcdef", b"gh"], (i, j)


def test_byte_by_byte():
    """Feeding one byte at a time yields each body exactly when its last byte arrives."""
    frame = encode_frame(BODY_A)
    d = FrameDecoder()
    for k, byte in enumerate(frame[:-1]):
        assert d.feed(bytes([byte])) == []
        assert d.pending == k + 1
    assert d.feed(frame[-1:]) == [BODY_A]
    assert d.pending == 0


def test_pending_counts_a_read_prefix():
    """After the prefix and part of the body, pending says the peer stopped mid-frame."""
    d = FrameDecoder()
    d.feed(b"00000010abc")
    assert d.pending == 11


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5),
       cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_any_chunking_property(bodies, cuts):
    """Any bodies cut into any pieces come back unchanged and in order."""
    stream = b"".join(encode_frame(b) for b in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    d = FrameDecoder()
    got, last = [], 0
    for p in points + [len(stream)]:
        got += d.feed(stream[last:p])
        last = p
    assert got == bodies


def test_zero_length_is_refused():
    """A zero length prefix is E999 at once."""
    with pytest.raises(FrameError) as e:
        FrameDecoder().feed(b"00000000")
    assert e.value.code == "E999"
    assert "zero" in str(e.value)


def test_oversize_refused_without_waiting_for_the_body():
    """A prefix over max_size is refused as soon as the prefix is complete, body unsent."""
    d = FrameDecoder(max_size=10)
    assert d.feed(b"0000001") == []
    with pytest.raises(FrameError, match="over the 10-byte limit"):
        d.feed(b"1")


def test_default_cap_is_16_mib():
    """16 MiB is allowed, one byte more is refused, both judged from the prefix alone."""
    assert FrameDecoder().feed(b"%08d" % (16 * 1024 * 1024)) == []
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"%08d" % (16 * 1024 * 1024 + 1))


def test_exactly_max_size_is_accepted():
    """The cap is inclusive."""
    assert FrameDecoder(max_size=3).feed(b"00000003abc") == [b"abc"]


@pytest.mark.parametrize("prefix", [b"0000001a", b" 0000001", b"+0000001", b"-0000001",
                                    b"0x000001", b"0000\x0001", "٠٠٠٠٠٠٠١".encode()])
def test_non_digit_prefix_is_refused(prefix):
    """Anything but ASCII digits in the prefix is E999 (unicode digits included)."""
    with pytest.raises(FrameError) as e:
        FrameDecoder().feed(prefix + b"x")
    assert e.value.code == "E999"


def test_garbage_is_refused_on_its_first_byte():
    """An HTTP request or TLS hello on the port is refused without waiting for 8 bytes."""
    with pytest.raises(FrameError, match="not an ASCII digit"):
        FrameDecoder().feed(b"G")
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x16\x03\x01")


def test_garbage_after_a_good_frame_keeps_the_good_body():
    """Bodies completed before the fault travel on the error, so nothing intact is lost."""
    with pytest.raises(FrameError) as e:
        FrameDecoder().feed(encode_frame(b"ok") + b"junk")
    assert e.value.bodies == [b"ok"]


def test_decoder_stays_failed():
    """After a framing error the stream is out of sync: every later feed fails too."""
    d = FrameDecoder()
    with pytest.raises(FrameError):
        d.feed(b"zz")
    with pytest.raises(FrameError):
        d.feed(encode_frame(b"fine"))


def test_frame_error_code_is_e999():
    """FrameError carries the RetCode to answer with."""
    assert FrameError.code == "E999"
    assert FrameError("x").code == "E999"
