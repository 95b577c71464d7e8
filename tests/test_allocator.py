"""gateway/allocator.py: big blocks stay mapped on their own after one is freed (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.allocator import _libc

PROBE = r"""
import ctypes, sys
from gateway.allocator import fix_thresholds

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert fix_thresholds()
libc.free(libc.malloc(4 << 20))          # one 4 MiB block freed: glibc would raise its threshold
before = libc.mallinfo2().hblkhd
p = libc.malloc(2 << 20)                 # the next big block: mapped on its own, or from the heap?
print(libc.mallinfo2().hblkhd - before >= 2 << 20)
libc.free(p)
"""


@pytest.mark.skipif(_libc() is None or not hasattr(_libc(), "mallinfo2"), reason="not glibc >= 2.33")
@pytest.mark.parametrize("mode, mapped", [("fixed", "True"), ("default", "False")])
def test_a_big_block_is_mapped_on_its_own_after_a_bigger_one_was_freed(mode, mapped):
    """With the thresholds fixed, a 2 MiB block allocated after a 4 MiB one was freed is its own
    mapping (returned to the system when freed); with glibc's default it comes from the heap
    (the dynamic threshold rose to 4 MiB), which is the growth the daemon showed in the push."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == mapped
