"""The official VQA accuracy: answer normalisation and the leave-one-out min(#matches / 3, 1) score.

Adapted from the VQA challenge evaluation script (PythonEvaluationTools/vqaEvaluation/vqaEval.py,
https://github.com/GT-Vision-Lab/VQA), reproducing its behaviour, quirks included, so that numbers
compare with published ones.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmchat.data.vqa import VQAExample

# The official table, keys and values as published (including its odd entries such as
# "somebody'd" -> "somebodyd"); only whole words equal to a key are replaced.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCT = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
# Verbatim from the official script. Its "(?!<=\d)" is a typo for a look-behind and acts as a
# no-op look-ahead, so in effect every "." not followed by a digit is dropped ("2." -> "2",
# "3.5" stays); we keep the typo so results match the official ones character for character.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    # As in the official script the tests look at the input while the edits go to the output,
    # and one digit-comma-digit anywhere makes every listed mark vanish instead of becoming a space.
    out = text
    has_number_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCT:
        if p + " " in text or " " + p in text or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official call passes re.UNICODE where count goes, capping this at 32 periods; answers
    # never have that many, so the cap is not reproduced.
    return PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(s: str) -> str:
    """Normalise a predicted answer exactly as the official evaluation does."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(s))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official accuracy in [0, 1] of one prediction against the (ten) human answers.

    The mean, over the leave-one-out subsets of the answers, of min(#matches in the subset / 3, 1).
    Like the official script, only the prediction is fully normalised; human answers (already
    normalised in VQA files) get punctuation handling only, and only when they disagree. A single
    answer counts as ten identical ones (single-answer data sets); an empty list is an error.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    if len(answers) == 1:
        answers = list(answers) * 10
    pred = normalize_answer(prediction)
    gts = [_process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    matches = sum(gt == pred for gt in gts)
    # Leaving out answer i leaves matches - [answer i matched] matching answers among the rest.
    per_subset = [min(1.0, (matches - (gt == pred)) / 3) for gt in gts]
    return sum(per_subset) / len(per_subset)


def _as_mapping(predictions: Sequence[Mapping[str, Any]] | Mapping[int, str]) -> dict[int, str]:
    if isinstance(predictions, Mapping):
        return {int(k): v for k, v in predictions.items()}
    return {int(p["question_id"]): p["answer"] for p in predictions}


def score_predictions(
    predictions: Sequence[Mapping[str, Any]] | Mapping[int, str],
    examples: Sequence[VQAExample],
) -> dict[str, Any]:
    """Score predictions (`[{"question_id", "answer"}]` or `{question_id: answer}`).

    Returns `overall`, `per_question_type`, `per_answer_type` (percent, rounded to 2 decimals as
    the official script does), `n` (questions scored) and `missing` (scored questions without a
    prediction, counted as wrong). Examples without ground-truth answers are skipped.
    """
    answers = _as_mapping(predictions)
    scores: list[float] = []
    by_question_type: dict[str, list[float]] = defaultdict(list)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    missing = 0
    for ex in examples:
        if not ex.answers:
            continue
        if ex.question_id not in answers:
            missing += 1
        score = vqa_accuracy(answers.get(ex.question_id, ""), ex.answers)
        scores.append(score)
        by_question_type[ex.question_type or "unknown"].append(score)
        by_answer_type[ex.answer_type or "unknown"].append(score)

    def percent(values: list[float]) -> float:
        return round(100 * sum(values) / len(values), 2) if values else 0.0

    return {
        "overall": percent(scores),
        "per_question_type": {k: percent(v) for k, v in sorted(by_question_type.items())},
        "per_answer_type": {k: percent(v) for k, v in sorted(by_answer_type.items())},
        "n": len(scores),
        "missing": missing,
    }
