#!/usr/bin/env python3
"""Pin an image of a kustomization's `images:` block to a registry reference, tag and digest.

    pin-image.py KUSTOMIZATION NAME REPOSITORY:TAG@sha256:HEX    # rewrite NAME's newName, newTag, digest
    pin-image.py --show KUSTOMIZATION NAME                       # print NAME's newName:newTag

`make image` and `make pin-postgres` call it with the digest a registry reported, so every pod
runs the exact image that was pushed or reviewed. Only the three value lines of NAME's entry
change: comments and the other entries stay as written. Standard library only, because it runs
wherever `docker` runs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REFERENCE = re.compile(r"(?P<name>[^@\s]+):(?P<tag>[\w][\w.-]{0,127})@(?P<digest>sha256:[0-9a-f]{64})")
FIELDS = ("newName", "newTag", "digest")


def entry(text: str, name: str) -> tuple[re.Match, int]:
    """NAME's entry in the `images:` block: its `- name:` line and the indented lines under it."""
    block = re.search(r"^images:\n((?:[ \t]+.*\n|\n)*)", text, re.M)
    if block is None:
        raise SystemExit("no `images:` block")
    found = [m for m in re.finditer(r"^(?P<indent>[ \t]*)- name: (?P<name>\S+)\n(?P<body>(?:(?P=indent)  .*\n)*)",
                                    block.group(1), re.M) if m.group("name").strip("'\"") == name]
    if len(found) != 1:
        raise SystemExit(f"{len(found)} entries named {name!r} in the `images:` block")
    return found[0], block.start(1)


def field(body: str, key: str) -> str:
    match = re.search(rf"^\s+{key}: (.*)$", body, re.M)
    if match is None:
        raise SystemExit(f"the entry has no {key}")
    return match.group(1).strip().strip("'\"")


def show(path: Path, name: str) -> str:
    match, _ = entry(path.read_text(), name)
    return f"{field(match.group('body'), 'newName')}:{field(match.group('body'), 'newTag')}"


def pin(path: Path, name: str, reference: str) -> None:
    parsed = REFERENCE.fullmatch(reference)
    if parsed is None:
        raise SystemExit(f"not REPOSITORY:TAG@sha256:<64 hex digits>: {reference!r}")
    text = path.read_text()
    match, offset = entry(text, name)
    body = match.group("body")
    for key in FIELDS:
        field(body, key)  # each must be there already, so the entry keeps its layout
        value = parsed.group({"newName": "name", "newTag": "tag", "digest": "digest"}[key])
        body = re.sub(rf"^(\s+{key}: ).*$", lambda m, v=value: f'{m.group(1)}"{v}"', body, count=1, flags=re.M)
    start, end = offset + match.start("body"), offset + match.end("body")
    path.write_text(text[:start] + body + text[end:])


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "--show":
        print(show(Path(argv[1]), argv[2]))
    elif len(argv) == 3:
        pin(Path(argv[0]), argv[1], argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
