"""Whole answers drafted into a newcomer's prefill, as a tree, so that a short answer takes one forward.

A greedy answer's first token comes from its prompt's forward (the prefill); the drafts of
`drafts.py` then verify the rest of it in the next decode step. So every answer took at least two
forwards, the second mostly to learn that the answer had ended: a lone user's turn was a prefill
(about 10 ms on the 2-core CPU) and 1.3 decode steps (about 7 ms each). Yet the answers to one kind
of question repeat: the shipped model gave 19 distinct answers to 300 questions.

So the prefill feeds, after a greedy newcomer's prompt, the answers given before to questions that
begin as its own does, as a tree: one node per distinct answer prefix (a trie), each node at the
position its token would have in its answer and attending to the prompt and its own ancestors
only (tree attention, as SpecInfer, arXiv:2305.09781, and Medusa verify several drafts in one
forward). Walking the tree with the model's own choices, from the prompt's last position, keeps
each node whose token the model chose there, and the model's token after the last node kept: when
that ends the turn, the answer was given by the prefill alone. The nodes not kept are masked out
of the row's keys/values, as a refused draft is, so the answer and the turns after it are those
plain greedy decoding gives, token for token.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Container, Hashable, Sequence
from dataclasses import dataclass, field

import torch


def question_kind(question: str) -> str:
    """What answers are drafted by: the question's first two words ("how many", "what color", "is the")."""
    return " ".join(question.lower().split()[:2])


class LikelyAnswers:
    """How often each answer (its tokens, the end-of-turn token last) was given to each kind of question.

    An answer becomes a candidate once given `min_count` times: once by default, as the scheduler
    weighs each answer by its share (a fresh engine's 16-user runs, 7 each: 166-168 answers ended in
    their prefill against 86-127 when twice was asked). At most `max_kinds` kinds are kept, the
    least recently seen dropped first, and per kind the `max_answers` most common. An answer of more
    than `max_tokens` tokens is not kept: no tree holds it (the scheduler grows them to 32 nodes at
    most). Filled to its bounds (256 kinds x 64 answers of 33 tokens from a 128,000-token
    vocabulary), the table held 21 MB (tracemalloc); 1,024 x 128 would hold 171 MB."""

    def __init__(self, min_count: int = 1, max_kinds: int = 256, max_answers: int = 32, max_tokens: int = 33):
        self.min_count = min_count
        self.max_kinds = max_kinds
        self.max_answers = max_answers
        self.max_tokens = max_tokens
        self._answers: OrderedDict[Hashable, Counter] = OrderedDict()

    def learn(self, kind: Hashable, answer: Sequence[int]) -> None:
        if len(answer) > self.max_tokens:
            return
        counts = self._answers.get(kind)
        if counts is None:
            counts = self._answers[kind] = Counter()
        else:
            self._answers.move_to_end(kind)
        counts[tuple(answer)] += 1
        if len(counts) > 2 * self.max_answers:  # descriptions rarely repeat: keep the common ones
            self._answers[kind] = Counter(dict(counts.most_common(self.max_answers)))
        while len(self._answers) > self.max_kinds:
            self._answers.popitem(last=False)

    def candidates(self, kind: Hashable) -> list[tuple[tuple[int, ...], float]]:
        """(answer, its share of this kind's answers), most common first, each given `min_count` times."""
        counts = self._answers.get(kind)
        if not counts:
            return []
        total = sum(counts.values())
        return [(answer, n / total) for answer, n in counts.most_common() if n >= self.min_count]


@dataclass
class AnswerTree:
    """A trie of drafted answers; node i holds `tokens[i]`, after node `parents[i]` (-1: the prompt)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)  # 0 for the answer's first token
    covered: float = 0.0  # the share of this kind's answers the tree holds whole
    _child: dict[tuple[int, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def nodes_for(self, answer: Sequence[int]) -> int:
        """How many nodes adding `answer` would take."""
        node, new = -1, 0
        for token in answer:
            nxt = self._child.get((node, token)) if new == 0 else None
            if nxt is None:
                new += 1
            else:
                node = nxt
        return new

    def add(self, answer: Sequence[int], share: float) -> None:
        node = -1
        for depth, token in enumerate(answer):
            nxt = self._child.get((node, token))
            if nxt is None:
                nxt = self._child[(node, token)] = len(self.tokens)
                self.tokens.append(token)
                self.parents.append(node)
                self.depths.append(depth)
            node = nxt
        self.covered += share

    def walk(self, first: int, choices: Sequence[int], stop: Container[int]) -> tuple[list[int], list[int]]:
        """The model's tokens and the nodes that were fed them: from its `first` token, each node whose
        token it chose is kept and its choice there (`choices[node]`) is the next token.
        Returns (tokens chosen, nodes kept): one token more than nodes."""
        tokens, kept, node = [first], [], -1
        while tokens[-1] not in stop:
            nxt = self._child.get((node, tokens[-1]))
            if nxt is None:
                break
            node = nxt
            kept.append(node)
            tokens.append(int(choices[node]))
        return tokens, kept

    def attends(self) -> torch.Tensor:
        """(n, n) bool: node i sees node j when j is i or one of its ancestors."""
        n = len(self.tokens)
        seen = torch.eye(n, dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:  # parents come first, so their rows are complete
                seen[i] |= seen[parent]
        return seen


def grow_tree(
    candidates: list[tuple[tuple[int, ...], float]], stop: Container[int], max_nodes: int, max_depth: int
) -> AnswerTree:
    """The most common answers (without their end token) that fit in `max_nodes` nodes, `max_depth` deep."""
    tree = AnswerTree()
    for answer, share in candidates:
        if not answer or answer[-1] not in stop:
            continue  # an answer cut short by the token limit: nothing says how it ends
        body = answer[:-1]
        if len(body) > max_depth:
            continue
        if len(tree) + tree.nodes_for(body) <= max_nodes:
            tree.add(body, share)
    return tree


def tree_mask(mask: torch.Tensor, new: int, trees: Sequence[AnswerTree | None]) -> torch.Tensor:
    """The (B, 1, T, L) bool attention mask of a forward whose last `new` columns are new, from its
    (B, L) mask of real columns: each new position sees the real columns up to itself, except that
    a row's tree (`trees[b]`, in its last `len(tree)` columns) sees the prompt and, of the tree, its
    own ancestors only. Every position sees itself, so no row of the softmax is empty (a padded
    position's output is unused)."""
    B, L = mask.shape
    P = L - new
    causal = torch.ones(new, L, dtype=torch.bool, device=mask.device).tril(diagonal=P)  # (T, L)
    allowed = mask.bool()[:, None, :] & causal  # (B, T, L)
    for b, tree in enumerate(trees):
        if tree:
            k = len(tree)
            allowed[b, new - k :, L - k :] = tree.attends().to(mask.device)
    q = torch.arange(new, device=mask.device)
    allowed[:, q, P + q] = True
    return allowed[:, None]
