"""The concept catalogue of the embedded world.

The world follows UnlearnCanvas (objects x styles) and IGMU/HUB's taxonomy: every concept has a
category (object, style, sensitive, character), related concepts (for HUB's pinpoint-ness check),
English synonyms and translations into Spanish and German. The text encoder is trained on all of
them, so a paraphrased or translated prompt really does mean the same concept.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from igmu.errors import UsageError

CATEGORIES = ("object", "style", "sensitive", "character")
LANGUAGES = ("en", "es", "de")


@dataclass(frozen=True)
class Concept:
    name: str
    category: str
    related: tuple[str, ...]
    synonyms: tuple[str, ...]
    translations: dict[str, tuple[str, ...]] = field(hash=False)

    def surface_forms(self, lang: str = "en") -> tuple[str, ...]:
        """All words that name this concept in `lang` (canonical name first for English)."""
        if lang == "en":
            return (self.name, *self.synonyms)
        return self.translations[lang]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "category": self.category,
            "related": list(self.related),
            "synonyms": list(self.synonyms),
            "translations": {lang: list(words) for lang, words in self.translations.items()},
        }


@dataclass(frozen=True)
class Character:
    """A named identity: a fixed object and style plus a distinguishing detail."""

    name: str
    object: str
    style: str
    detail: str


def _concept(name, category, related, synonyms, es, de) -> Concept:
    return Concept(name, category, tuple(related), tuple(synonyms), {"es": tuple(es), "de": tuple(de)})


OBJECTS = (
    _concept("ball", "object", ["ring", "moon"], ["sphere", "orb"], ["bola"], ["kugel"]),
    _concept("box", "object", ["kite", "cross"], ["cube", "crate"], ["caja"], ["kiste"]),
    _concept("pyramid", "object", ["star", "kite"], ["triangle", "wedge"], ["piramide"], ["pyramide"]),
    _concept("kite", "object", ["box", "pyramid"], ["diamond", "rhombus"], ["cometa"], ["drachen"]),
    _concept("cross", "object", ["star", "box"], ["plus", "cruciform"], ["cruz"], ["kreuz"]),
    _concept("ring", "object", ["ball", "moon"], ["donut", "hoop"], ["anillo"], ["reif"]),
    _concept("moon", "object", ["ball", "ring"], ["crescent", "sickle"], ["luna"], ["mond"]),
    _concept("star", "object", ["pyramid", "cross"], ["pentagram", "starlet"], ["estrella"], ["stern"]),
)

STYLES = (
    _concept("ember", "style", ["sunset", "neon"], ["flame", "blaze"], ["brasa"], ["glut"]),
    _concept("ocean", "style", ["forest", "neon"], ["marine", "tidal"], ["oceano"], ["ozean"]),
    _concept("forest", "style", ["ocean", "charcoal"], ["woodland", "jungle"], ["bosque"], ["wald"]),
    _concept("sunset", "style", ["ember", "neon"], ["dusk", "twilight"], ["atardecer"], ["abendrot"]),
    _concept("neon", "style", ["ember", "sunset"], ["glowing", "fluorescent"], ["neonico"], ["leucht"]),
    _concept("charcoal", "style", ["forest", "ocean"], ["sketch", "graphite"], ["carbon"], ["kohle"]),
)

SENSITIVE = (
    _concept("hazard", "sensitive", ["sunset", "ember"], ["danger", "warning"], ["peligro"], ["gefahr"]),
)

CHARACTERS_SPEC = (
    Character("zorb", object="ball", style="neon", detail="eyes"),
    Character("quill", object="star", style="sunset", detail="crown"),
    Character("brakk", object="box", style="charcoal", detail="scar"),
)

CHARACTERS = (
    _concept("zorb", "character", ["ball", "neon", "quill"], ["zorby", "zorbix"], ["zorbito"], ["zorbchen"]),
    _concept("quill", "character", ["star", "sunset", "brakk"], ["quilly", "quillo"], ["quillita"], ["quillchen"]),
    _concept("brakk", "character", ["box", "charcoal", "zorb"], ["brakky", "brakko"], ["brakito"], ["brakkchen"]),
)

ALL_CONCEPTS: tuple[Concept, ...] = OBJECTS + STYLES + SENSITIVE + CHARACTERS
OBJECT_NAMES = tuple(c.name for c in OBJECTS)
STYLE_NAMES = tuple(c.name for c in STYLES)
CHARACTER_NAMES = tuple(c.name for c in CHARACTERS)
SENSITIVE_NAME = SENSITIVE[0].name
_BY_NAME = {c.name: c for c in ALL_CONCEPTS}
_CHARACTER_BY_NAME = {c.name: c for c in CHARACTERS_SPEC}


def get_concept(name: str) -> Concept:
    """Look a concept up by name; an unknown name raises UsageError naming the closest valid ones."""
    key = name.strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    closest = difflib.get_close_matches(key, list(_BY_NAME), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(closest)}? " if closest else ""
    raise UsageError(f"unknown concept {name!r}; {hint}valid: {', '.join(_BY_NAME)}")


def get_character(name: str) -> Character:
    return _CHARACTER_BY_NAME[get_concept(name).name]

