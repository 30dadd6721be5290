"""Reading exactly one HTTP/1.1 request body (RFC 9112 §6-7), so a kept-alive stream stays at the next request."""

from __future__ import annotations

import io
import re
from typing import Any

MAX_LINE = 65536
# Unread body left by an app that answered early (e.g. 413) is read and dropped, so the
# client sees the answer rather than a reset; past this much the connection is closed instead.
_MAX_DRAIN_BYTES = 16 * 1024 * 1024
_DRAIN_PIECE = 64 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class BadRequestBody(ConnectionError):
    """The body does not follow its framing: the connection cannot be reused."""


class RequestBody(io.RawIOBase):
    """One request's body and nothing after it, so the next request line stays in the stream."""

    def __init__(self, rfile: io.BufferedIOBase) -> None:
        self._rfile = rfile

    def readable(self) -> bool:
        return True

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    def drain(self) -> bool:
        """Reads and drops what the app left unread; False when too much was left to read."""
        dropped = 0
        while not self.finished and dropped <= _MAX_DRAIN_BYTES:
            dropped += len(self.read(_DRAIN_PIECE) or b"")
        return self.finished

    def _read_into(self, view: memoryview) -> int:
        count = self._rfile.readinto(view)
        if count == 0:
            raise BadRequestBody("the client closed the connection in the middle of the body")
        return count


class LengthBody(RequestBody):
    def __init__(self, rfile: io.BufferedIOBase, length: int) -> None:
        super().__init__(rfile)
        self._left = length

    @property
    def finished(self) -> bool:
        return self._left == 0

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._left)
        if wanted == 0:
            return 0
        count = self._read_into(memoryview(buffer).cast("B")[:wanted])
        self._left -= count
        return count


class ChunkedBody(RequestBody):
    """Transfer-Encoding: chunked, decoded; trailers are read and dropped."""

    def __init__(self, rfile: io.BufferedIOBase) -> None:
        super().__init__(rfile)
        self._left = 0
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and not self._done:
            if self._left == 0:
                self._left = self._next_chunk_size()
                continue
            count = self._read_into(view[filled : filled + min(len(view) - filled, self._left)])
            filled += count
            self._left -= count
            if self._left == 0:
                self._expect_line_end()
        return filled

    def _next_chunk_size(self) -> int:
        size_text = self._line().split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise BadRequestBody("invalid chunk size line")
        size = int(size_text, 16)
        if size == 0:
            while self._line():  # trailer fields, up to the empty line
                pass
            self._done = True
        return size

    def _expect_line_end(self) -> None:
        if self._line():
            raise BadRequestBody("chunk data longer than its size")

    def _line(self) -> bytes:
        line = self._rfile.readline(MAX_LINE + 1)
        if not line.endswith(b"\n") or len(line) > MAX_LINE:
            raise BadRequestBody("chunk framing line missing or too long")
        return line.rstrip(b"\r\n")
