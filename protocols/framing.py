"""Length-prefixed framing of the `cnbank` TCP link, sans-IO.

A frame is the body's length as a fixed number of ASCII digits (8 by default,
zero padded, excluding the prefix itself) followed by the body. The decoder is
fed whatever the transport delivers, in pieces of any size, and hands back
complete bodies. It judges the prefix before reading a byte of the body: a
prefix that is not all digits, is zero or announces more than the cap is
refused at once (E999) so that the receiver can answer and close without
buffering up to 10^8 bytes of an attacker's choosing.
"""

from __future__ import annotations

DEFAULT_WIDTH = 8
DEFAULT_MAX_SIZE = 16 * 1024 * 1024

_DIGITS = frozenset(b"0123456789")


class FrameError(Exception):
    """The peer sent something that is not a valid frame; answer E999 and close.

    `bodies` holds the frames completed earlier in the same `feed()` call, if
    any, so that nothing received intact is silently lost.
    """

    code = "E999"

    def __init__(self, message: str, bodies: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.bodies = bodies or []


def encode_frame(body: bytes, width: int = DEFAULT_WIDTH) -> bytes:
    """Prefix *body* with its length in *width* zero-padded ASCII digits."""
    if not body:
        # The receiving side refuses a zero length, so never produce one.
        raise ValueError("a frame body cannot be empty")
    n = len(body)
    if n >= 10 ** width:
        raise ValueError(f"a body of {n} bytes does not fit a {width}-digit length prefix")
    return b"%0*d" % (width, n) + body


class FrameDecoder:
    """Turns a byte stream into frame bodies.

    `feed()` returns the bodies completed by the bytes given (often none,
    sometimes several). After a FrameError the stream is out of sync for good:
    every later `feed()` raises the same error.
    """

    def __init__(self, width: int = DEFAULT_WIDTH, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if width < 1:
            raise ValueError("the prefix width must be at least 1")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._width = width
        self._max = max_size
        self._buf = bytearray()
        self._need: int | None = None  # body length once the prefix is read
        self._error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a complete frame.

        Non-zero when the connection closes means the peer stopped mid-frame.
        """
        return len(self._buf) + (self._width if self._need is not None else 0)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise FrameError(self._error)
        self._buf += data
        bodies: list[bytes] = []
        while True:
            if self._need is None:
                # Judge the prefix digit by digit, so that garbage is refused on
                # its first byte rather than after `width` bytes of it.
                head = bytes(self._buf[: self._width])
                bad = next((i for i, b in enumerate(head) if b not in _DIGITS), None)
                if bad is not None:
                    self._fail(f"length prefix byte {bad + 1} is {head[bad:bad + 1]!r}, "
                               "not an ASCII digit", bodies)
                if len(head) < self._width:
                    return bodies
                n = int(head)
                if n == 0:
                    self._fail("length prefix is zero", bodies)
                if n > self._max:
                    self._fail(f"length prefix announces {n} bytes, "
                               f"over the {self._max}-byte limit", bodies)
                del self._buf[: self._width]
                self._need = n
            if len(self._buf) < self._need:
                return bodies
            bodies.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    def _fail(self, message: str, bodies: list[bytes]) -> None:
        self._error = message
        self._buf.clear()
        raise FrameError(message, bodies)
