from collections.abc import Callable
from typing import Literal, overload

ReadableBuffer = bytes | bytearray | memoryview

@overload
def scan_chat(
    buf: ReadableBuffer,
    start: int,
    k: int,
    decode: Callable[[bytes], object],
    lazy: Literal[False] = ...,
    /,
) -> tuple[int, list[str], bytearray, bytearray, bytearray] | None: ...
@overload
def scan_chat(
    buf: ReadableBuffer,
    start: int,
    k: int,
    decode: Callable[[bytes], object],
    lazy: Literal[True],
    /,
) -> tuple[int, bytes, bytearray, bytearray, bytearray] | None: ...
def window_confidence(
    chosen: object, top: object, rank: object, k: int, temperature: float, how: int, /
) -> float: ...
def scan_chat_many(
    items: list[bytes], k: int, decode: Callable[[bytes], object], /
) -> tuple[int, list[str], bytearray, bytearray, bytearray] | None: ...
def buffer_address(buffer: object, /) -> int: ...

scan_completions = scan_chat  # the same call, on the completions form

def scan_completions_many(
    items: list[bytes], k: int, decode: Callable[[bytes], object], /
) -> tuple[int, list[str], bytearray, bytearray, bytearray] | None: ...
def decode_tokens(
    buf: ReadableBuffer, table: bytes, decode: Callable[[bytes], object], /
) -> list[str]: ...
