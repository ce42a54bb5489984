"""Generation settings and the one check of them, for the UI, the API and the evaluation alike.

Values may come from a slider, a JSON body or Python: `None`, NaN, infinities, booleans posing as
numbers, text and out-of-range numbers are refused with a `ChatInputError` whose message names the
setting, what it got and what it takes, so it can be shown to the user as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The engine's own bound; the app passes its slider's (smaller) maximum to `from_request`.
MAX_NEW_TOKENS_LIMIT = 4096
MAX_TEMPERATURE = 2.0


class ChatInputError(ValueError):
    """Input the engine refuses; the message is meant for the user as it is."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(name: str, value: Any) -> float:
    """A finite number from an int, a float or a numeric string; anything else is refused."""
    if value is None:
        raise ChatInputError(f"{name} is empty; please set it (a number).")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ChatInputError(f"{name} must be a number, not the text {_shown(value)}.") from None
    # bool is an int subclass: True as "1 token" is a caller's mistake, not a setting.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ChatInputError(f"{name} must be a number, not {_shown(value)}.")
    if not math.isfinite(value):
        raise ChatInputError(f"{name} must be a finite number, not {value}.")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    """A yes/no setting: a bool, 0/1, or the text true/false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ChatInputError(f"{name} must be true or false, not {_shown(value)}.")


def check_max_new_tokens(value: Any, limit: int = MAX_NEW_TOKENS_LIMIT) -> int:
    tokens = _number("Max new tokens", value)
    if tokens != int(tokens):
        raise ChatInputError(f"Max new tokens must be a whole number, not {value}.")
    if not 1 <= tokens <= limit:
        raise ChatInputError(f"Max new tokens must be between 1 and {limit}, not {int(tokens)}.")
    return int(tokens)


@dataclass
class GenerationSettings:
    """How to generate; every value is checked (and normalised) when the settings are made."""

    # A description of six objects is 40 tokens with the shipped model's tokenizer; 32 cut it short.
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95

    def __post_init__(self) -> None:
        self.max_new_tokens = check_max_new_tokens(self.max_new_tokens)
        self.do_sample = _flag("Sample", self.do_sample)
        self.temperature = _number("Temperature", self.temperature)
        self.top_p = _number("Top-p", self.top_p)
        # The temperature only matters when sampling; greedy decoding ignores it.
        if self.do_sample and not 0 < self.temperature <= MAX_TEMPERATURE:
            raise ChatInputError(
                f"Temperature must be above 0 and at most {MAX_TEMPERATURE:g} when sampling, not "
                f"{self.temperature:g} (or switch sampling off)."
            )
        if not 0 < self.top_p <= 1:
            raise ChatInputError(f"Top-p must be above 0 and at most 1, not {self.top_p:g}.")

    @classmethod
    def from_request(
        cls, max_new_tokens: Any, do_sample: Any, temperature: Any, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT
    ) -> GenerationSettings:
        """Settings from raw UI/API values, with the caller's own token limit."""
        return cls(
            max_new_tokens=check_max_new_tokens(max_new_tokens, max_new_tokens_limit),
            do_sample=do_sample,
            temperature=temperature,
        )

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
