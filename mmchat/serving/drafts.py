"""Draft tokens for speculative decoding, from the answers the engine has already given.

Every decode step is a forward of the whole batch for one token a row. But most of an answer is
decided by its first token: the shipped model answers "purple" as "p", "urple", end and "circle" as
"c", "ir", "cle", end, so a one-word answer took up to four forwards. The scheduler therefore feeds a
greedy row's next token together with the tokens likely to follow it (the draft), and keeps the
longest run of them that the model itself chooses at those positions, plus the model's own next
token (Leviathan et al., arXiv:2211.17192; with a greedy row the answer is the one plain decoding
gives, token for token). A right draft turns several decode steps into one.

The drafts come from an n-gram table of the answers this engine finished, built as it serves, as
prompt-lookup decoding drafts from the prompt: after a context seen often enough with one
continuation, that continuation is drafted. The longest context known decides, and a context may
begin at the answer's start, so "c" opening an answer and "c" inside one are told apart.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Container, Sequence

START = -1  # stands before an answer's first token in every context


class AnswerNgrams:
    """Counts of the token after each context of 1 to `order` tokens in the answers learnt.

    A draft token is the continuation of the longest context seen at least `min_count` times, when it
    followed there at least `min_share` of the time; otherwise drafting stops. At most `max_contexts`
    contexts are kept, the least recently seen dropped first."""

    def __init__(self, order: int = 3, min_count: int = 2, min_share: float = 0.9, max_contexts: int = 1 << 16):
        self.order = order
        self.min_count = min_count
        self.min_share = min_share
        self.max_contexts = max_contexts
        self._next: OrderedDict[tuple[int, ...], Counter] = OrderedDict()

    def learn(self, answer: Sequence[int]) -> None:
        """Count an answer's tokens (its end-of-turn token included, if it has one)."""
        seq = [START, *answer]
        for i in range(1, len(seq)):
            for n in range(1, self.order + 1):
                if n > i:
                    break
                context = tuple(seq[i - n : i])
                counts = self._next.get(context)
                if counts is None:
                    counts = self._next[context] = Counter()
                else:
                    self._next.move_to_end(context)
                counts[seq[i]] += 1
        while len(self._next) > self.max_contexts:
            self._next.popitem(last=False)

    def predict(self, seq: Sequence[int]) -> int | None:
        """The token after `seq` (START first), or None where the table is not sure."""
        for n in range(min(self.order, len(seq)), 0, -1):
            counts = self._next.get(tuple(seq[-n:]))
            if counts is None:
                continue
            total = sum(counts.values())
            if total < self.min_count:
                continue  # seen too rarely: a shorter context may know more
            token, count = counts.most_common(1)[0]
            return token if count >= self.min_share * total else None
        return None

    def draft(self, answer: Sequence[int], limit: int, stop: Container[int]) -> list[int]:
        """Up to `limit` tokens likely to follow `answer` (the tokens chosen so far), never a `stop` token."""
        seq = [START, *answer]
        drafted: list[int] = []
        while len(drafted) < limit:
            token = self.predict(seq)
            if token is None or token in stop:
                break
            drafted.append(token)
            seq.append(token)
        return drafted
