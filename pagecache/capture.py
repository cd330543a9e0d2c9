"""Calling the application and holding its response until the cache has decided
what to do with it.

A response is buffered up to ``limit`` bytes, because a page is only stored
once it is complete and a stale copy can only stand in for an answer the client
has not seen yet. Past the limit nothing more is buffered: the response is
handed to the client as it comes (:meth:`Captured.respond`), and it is not
stored. Whatever happens, the application's iterable is closed exactly once.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Dict, Iterable, Iterator, List, Optional

from .entry import Headers

StartResponse = Callable[..., Any]


class Captured:
    """The status, headers and (the buffered part of) the body of a response."""

    def __init__(self) -> None:
        self.status: Optional[str] = None
        self.headers: Headers = []
        self.exc_info: Any = None
        self.chunks: List[bytes] = []
        self.size = 0
        self.limit = 0           # bytes of body buffered at most (limit_for may change it at start_response)
        self.complete = False
        self.sent = False        # headers already given to the client's start_response
        self.rest: Optional[Iterator[Any]] = None
        self._iterable: Any = None
        self._client_write: Optional[Callable[[bytes], Any]] = None
        self._client_start: Optional[StartResponse] = None  # once sent: later calls go there

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def close(self) -> None:
        """Close the application's iterable (once)."""
        iterable, self._iterable = self._iterable, None
        self.rest = None
        close = getattr(iterable, "close", None)
        if close is not None:
            close()

    def respond(self, start_response: StartResponse, extra_headers: Headers = (),
                hidden: Collection[str] = ()) -> Iterable[bytes]:
        """Hand the response to the client unchanged, but for the headers
        named in ``hidden`` (lower-case), plus ``extra_headers``."""
        if not self.sent:
            headers = [(name, value) for name, value in self.headers if name.lower() not in hidden]
            self._client_write = start_response(self.status, headers + list(extra_headers), self.exc_info)
            self._client_start = start_response
            self.sent = True
            if self.complete:  # all of it is here: as one list, so the server can say its length
                body = self.body
                self.close()
                return [body]
        return _Relay(self)


class _Relay:
    """The buffered chunks, then the rest of the application's iterable."""

    def __init__(self, captured: Captured):
        self._captured = captured

    def __iter__(self) -> Iterator[Any]:
        captured = self._captured
        chunks, captured.chunks = captured.chunks, []
        yield from chunks
        if captured.rest is not None:
            yield from captured.rest

    def close(self) -> None:
        self._captured.close()


def capture(app: Callable, environ: Dict, limit: int,
            client_start_response: Optional[StartResponse] = None,
            limit_for: Optional[Callable[[Headers], int]] = None) -> Captured:
    """Call ``app`` and buffer its response up to ``limit`` bytes of body
    (or, when given, ``limit_for(headers)`` once the application has answered).

    ``client_start_response`` is used when an application that writes its body
    through ``write()`` goes past the limit: the response then goes to the
    client at once. Exceptions from the application propagate, after the
    iterable is closed.
    """
    captured = Captured()
    captured.limit = limit

    def write(data: bytes) -> None:
        if type(data) is not bytes:
            raise TypeError(f"write() argument must be bytes, not {type(data).__name__}")
        if captured.sent:
            captured._client_write(data)
            return
        captured.size += len(data)
        if captured.size - len(data) > captured.limit:
            return  # past the limit with no client to hand it to: not kept
        captured.chunks.append(data)
        if captured.size > captured.limit and client_start_response is not None:
            captured._client_write = client_start_response(
                captured.status, list(captured.headers), captured.exc_info)
            captured._client_start = client_start_response
            captured.sent = True
            chunks, captured.chunks = captured.chunks, []
            for chunk in chunks:
                captured._client_write(chunk)

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        if captured.sent:
            # The response is the client's now (an error page after streaming
            # began, say): its server decides, as it would without the cache.
            return captured._client_start(status, headers, exc_info)
        if exc_info is not None:
            captured.exc_info = exc_info
        elif captured.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        captured.status, captured.headers = status, list(headers)
        if limit_for is not None:
            captured.limit = limit_for(captured.headers)
        return write

    iterable = app(environ, start_response)
    captured._iterable = iterable
    try:
        iterator = iter(iterable)
        for chunk in iterator:
            if not _take(captured, chunk):
                captured.chunks.append(chunk)
                captured.rest = iterator
                return captured
            if captured.size > captured.limit:
                captured.rest = iterator
                return captured
        if captured.status is None:
            raise AssertionError("the application returned without calling start_response")
        captured.complete = captured.size <= captured.limit and not captured.sent
    except BaseException:
        captured.close()
        raise
    return captured


def _take(captured: Captured, chunk: Any) -> bool:
    """Buffer one chunk; False if it is not bytes (the response can't be stored)."""
    if type(chunk) is not bytes:
        return False
    if chunk:
        captured.chunks.append(chunk)
        captured.size += len(chunk)
    return True
