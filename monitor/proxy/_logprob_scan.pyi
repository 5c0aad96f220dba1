from collections.abc import Callable

def scan_chat(
    buf: bytes, start: int, k: int, decode: Callable[[bytes], object], /
) -> tuple[int, list[str], bytearray, bytearray, bytearray] | None: ...
def token_logprobs(
    chosen: object, top: object, rank: object, k: int, temperature: float, /
) -> bytearray: ...
def scan_chat_many(
    items: list[bytes], k: int, decode: Callable[[bytes], object], /
) -> tuple[int, list[str], bytearray, bytearray, bytearray] | None: ...
