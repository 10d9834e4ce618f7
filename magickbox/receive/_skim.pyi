def skim(
    data: bytes | bytearray | memoryview,
    pos: int,
    implicit: bool,
    little: bool,
    capture: frozenset[int],
    values: dict[int, bytes],
    vrs: dict[int, str | None],
) -> int: ...
