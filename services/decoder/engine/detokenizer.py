"""Incremental detokenization and stop strings.

Text deltas never split a UTF-8 character (output is held back while the decoded window ends in U+FFFD)
and concatenate exactly to tokenizer.decode(output_ids, skip_special_tokens=True), cut before the first
stop string when one appears. Text that could still become a stop string is held back until it cannot.
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed generated token ids one at a time; get the text that is safe to emit.

    Decodes a sliding window of tokens starting at a character boundary (vLLM's prefix/read offsets), so
    each step costs O(window), not O(output).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: a token boundary that is also a character boundary
        self._read_offset = 0  # tokens whose text is already in self._text
        self._text = ""  # decoded text so far (only complete characters), before any stop cut
        self._emitted = 0  # characters of self._text already returned
        self.stopped_on: str | None = None  # the stop string that ended generation, if any

    @property
    def text(self) -> str:
        """The final text so far: everything emitted plus what is held back, cut at a stop string."""
        return self._text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one token; returns the new text that can be emitted now ("" when held back)."""
        if self.stopped_on is not None:
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._append(new_text[len(prefix_text) :])
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        return self._emit(final=False)

    def finish(self) -> str:
        """Generation ended: flush what was held back (a trailing incomplete character stays U+FFFD, as in
        a full decode)."""
        if self.stopped_on is None:
            full = self._decode(self._ids)
            if full.startswith(self._text):
                self._append(full[len(self._text) :])
            else:  # a tokenizer whose decode is not prefix-stable: trust the full decode
                self._text = full
                self._apply_stop(0)
        return self._emit(final=True)

    def _append(self, piece: str) -> None:
        if not piece:
            return
        before = len(self._text)
        self._text += piece
        self._apply_stop(before)

    def _apply_stop(self, new_from: int) -> None:
        if not self._stop:
            return
        longest = max(len(s) for s in self._stop)
        search_from = max(0, new_from - longest + 1)
        hits = [(i, s) for s in self._stop if (i := self._text.find(s, search_from)) >= 0]
        if hits:
            index, stop = min(hits)
            self._text = self._text[:index]
            self.stopped_on = stop

    def _emit(self, final: bool) -> str:
        end = len(self._text)
        if not final and self.stopped_on is None:
            end -= self._held_for_stop()
        end = max(end, self._emitted)
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta

    def _held_for_stop(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        held = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(self._text)), held, -1):
                if self._text.endswith(stop[:k]):
                    held = k
                    break
        return held
