"""Stop strings over streamed text.

Text that could still turn into a stop string is held back, so a stop string split across
tokens (or across steps) never leaks to the client; the stop string itself is not emitted unless
asked for. A match can only begin inside the held-back text: anything emitted was, when emitted,
no prefix of any stop string.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stop: list[str], include_in_output: bool = False) -> None:
        self.stop = [s for s in stop if s]
        self.include_in_output = include_in_output
        self._held = ""
        self.matched: str | None = None

    @property
    def held_text(self) -> str:
        return self._held

    def feed(self, text: str) -> str:
        """Add new text; return what can be emitted now. Sets `matched` when a stop string hits."""
        assert self.matched is None, "fed after a stop string matched"
        if not self.stop:
            return text
        buf = self._held + text
        first: tuple[int, str] | None = None
        for s in self.stop:
            i = buf.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            i, s = first
            self.matched = s
            self._held = ""
            return buf[: i + len(s)] if self.include_in_output else buf[:i]
        hold = self._longest_stop_prefix_suffix(buf)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end (for a reason other than a stop string): release the held text."""
        text, self._held = self._held, ""
        return text

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), longest, -1):
                if buf.endswith(s[:n]):
                    longest = n
                    break
        return longest
