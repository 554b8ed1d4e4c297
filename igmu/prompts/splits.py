"""Validation and test splits, kept apart in seeds as well as in prompt texts: a method tuned on the
validation prompts is scored on test prompts whose noise it has never seen."""

from __future__ import annotations

import hashlib

SPLITS = ("validation", "test")
# Every validation seed lies below this, every test seed at or above it.
TEST_SEED_START = 1_000_000
# Hashed seeds fill [start, start + span) of their split, so the two ranges never meet.
SEED_SPAN = TEST_SEED_START
# Eight hex digits are 32 bits: enough spread for seeds and splits, and the same on every platform.
HASH_HEX_DIGITS = 8


def split_seed_start(split: str) -> int:
    return TEST_SEED_START if split == "test" else 0


def seed_in_split(seed: int, split: str) -> bool:
    return seed >= TEST_SEED_START if split == "test" else 0 <= seed < TEST_SEED_START


def split_range_text(split: str) -> str:
    return f">= {TEST_SEED_START}" if split == "test" else f"< {TEST_SEED_START}"


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hashed_split(text: str) -> str:
    """The same split for the same text on every machine; about half of all texts in each."""
    # The last digits, so that the split does not correlate with the seed taken from the first ones.
    return SPLITS[int(_text_digest(text)[-HASH_HEX_DIGITS:], 16) % len(SPLITS)]


def hashed_seed(text: str, split: str) -> int:
    """A seed derived from the text, inside its split's range."""
    return split_seed_start(split) + int(_text_digest(text)[:HASH_HEX_DIGITS], 16) % SEED_SPAN
