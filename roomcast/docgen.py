"""Regenerate the README's configuration table from roomcast.settings.SPECS.

    python -m roomcast.docgen README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from roomcast.settings import markdown_table

HEADER = "| Variable | Flag | Default | Meaning |"


def update(path: Path) -> bool:
    text = path.read_text()
    start = text.index(HEADER)
    end = text.find("\n\n", start)
    new = text[:start] + markdown_table() + (text[end:] if end >= 0 else "\n")
    if new != text:
        path.write_text(new)
        return True
    return False


if __name__ == "__main__":
    changed = update(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
    print("README table updated" if changed else "README table already current")
