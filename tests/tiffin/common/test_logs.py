"""Log lines batched per event-loop turn: whole lines, in order, none lost, written before the next turn."""

from __future__ import annotations

import asyncio
import io

from tiffin.common.logs import _BatchedLines


def test_outside_a_loop_each_line_goes_out_at_once() -> None:
    out = io.StringIO()
    writer = _BatchedLines.factory(out)()
    writer.info('{"event": "a"}')
    assert out.getvalue() == '{"event": "a"}\n'


async def test_inside_a_loop_lines_share_one_write_soon_after() -> None:
    writes: list[str] = []
    written = asyncio.Event()

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            written.set()
            return len(text)

    writer = _BatchedLines.factory(Recording())()
    for n in range(5):
        writer.info(f'{{"n": {n}}}')
    assert writes == []  # held until this turn ends
    await asyncio.wait_for(written.wait(), 10)
    assert writes == ["".join(f'{{"n": {n}}}\n' for n in range(5))]
    writer.error('{"n": 5}')
    writer.flush()  # as at exit
    assert writes[-1] == '{"n": 5}\n'
