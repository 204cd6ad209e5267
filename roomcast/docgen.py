"""Regenerate the configuration table of docs/configuration.md from roomcast.settings.SPECS.

    python -m roomcast.docgen                # docs/configuration.md
    python -m roomcast.docgen PATH           # another file holding the table
"""

from __future__ import annotations

import sys
from pathlib import Path

from roomcast.settings import markdown_table

HEADER = "| Variable | Flag | Default |"
TARGET = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def update(path: Path = TARGET) -> bool:
    text = path.read_text()
    start = text.index(HEADER)
    end = text.find("\n\n", start)
    new = text[:start] + markdown_table() + (text[end:] if end >= 0 else "\n")
    if new != text:
        path.write_text(new)
        return True
    return False


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET
    changed = update(target)
    print(f"{target}: configuration table {'updated' if changed else 'already current'}")
