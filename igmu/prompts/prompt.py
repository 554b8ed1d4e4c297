"""One prompt to generate from, and the named sets of prompts a run generates and scores."""

from __future__ import annotations

from dataclasses import dataclass, replace

from igmu.errors import UsageError
from igmu.prompts.splits import SPLITS

FORGET, FORGET_REMOVED, RETAIN, RELATED, PARAPHRASE = SET_NAMES = (
    "forget", "forget_removed", "retain", "related", "paraphrase")
DEFAULT_LANG = "en"


@dataclass(frozen=True)
class Prompt:
    text: str
    seed: int
    split: str
    set: str
    label: str | None = None  # what a judge should see (retain/related), or the target (forget/paraphrase)
    category: str | None = None  # the label's category: which judge checks it
    lang: str = DEFAULT_LANG
    guidance: float | None = None  # per-prompt guidance scale, where the source file gives one


@dataclass(frozen=True)
class PromptSets:
    version: str
    target: str
    category: str
    sets: dict[str, tuple[Prompt, ...]]  # keyed by SET_NAMES; forget_removed aligned 1:1 with forget
    source: str  # "shipped" or the user's file path

    def split(self, name: str) -> PromptSets:
        """Only the prompts of one split; forget_removed keeps following forget's splits."""
        if name not in SPLITS:
            raise UsageError(f"split {name!r} is not valid; valid: {', '.join(SPLITS)}")
        sets = {set_name: tuple(p for p in prompts if p.split == name) for set_name, prompts in self.sets.items()}
        forget = self.sets.get(FORGET, ())
        if len(forget) == len(self.sets.get(FORGET_REMOVED, ())):
            sets[FORGET_REMOVED] = tuple(removed for kept, removed in zip(forget, self.sets[FORGET_REMOVED])
                                         if kept.split == name)
        return replace(self, sets=sets)

    def sizes(self) -> dict[str, int]:
        return {name: len(prompts) for name, prompts in self.sets.items()}
