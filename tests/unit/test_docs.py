"""The docs keep up with the code: README.md (quick start, configuration) and
docs/protocol.md (every message type, error code, close code and server-made event)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from roomcast.errors import CloseCode, ErrorCode
from roomcast.protocol import MESSAGE_TYPES, RESERVED_EVENT_TYPES, ROOM_STATUSES
from roomcast.settings import SPECS, markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
QUICK_START_COMMANDS = ("./dev run", "./dev test")
SERVER_MESSAGE_TYPES = ("welcome", "pong", "room_created", "joined", "left", "ack", "rooms", "event", "error")


def _read(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return path.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of the `## heading` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"no '## {heading}' section"
    return match.group(1)


def _table_row(text: str, first_cell: str) -> str:
    match = re.search(rf"^\| {re.escape(first_cell)} \|.*$", text, re.M)
    assert match is not None, f"no table row starting with '| {first_cell} |'"
    return match.group(0)


# ---------------------------------------------------------------- README.md


def test_readme_quick_start_has_both_commands() -> None:
    quick_start = _section(_read(README), "Quick start")
    for command in QUICK_START_COMMANDS:
        assert re.search(rf"^{re.escape(command)}\b", quick_start, re.M), (
            f"the Quick start section must show `{command}` at the start of a line"
        )


@pytest.mark.parametrize("env", [spec.env for spec in SPECS])
def test_readme_documents_every_setting(env: str) -> None:
    assert f"`{env}`" in _read(README), f"README.md does not mention `{env}`"


def test_readme_configuration_table_is_the_generated_one() -> None:
    table = markdown_table()
    assert table in _section(_read(README), "Configuration"), (
        "the Configuration table of README.md differs from roomcast.settings.SPECS; paste the output of\n"
        '  .venv/bin/python -c "from roomcast.settings import markdown_table; print(markdown_table())"'
    )


# ---------------------------------------------------------------- docs/protocol.md


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_protocol_has_a_section_and_example_per_client_message(kind: str) -> None:
    text = _read(PROTOCOL)
    assert f"`{kind}`" in text, f"docs/protocol.md does not mention `{kind}`"
    assert f'> {{"type":"{kind}"' in text, f"docs/protocol.md has no example of a client sending `{kind}`"


@pytest.mark.parametrize("kind", SERVER_MESSAGE_TYPES)
def test_protocol_shows_every_server_message(kind: str) -> None:
    assert f'< {{"type":"{kind}"' in _read(PROTOCOL), f"docs/protocol.md has no example of a `{kind}` reply"


@pytest.mark.parametrize("code", [c.value for c in ErrorCode])
def test_protocol_explains_every_error_code(code: str) -> None:
    errors = _section(_read(PROTOCOL), "7. Errors")
    _table_row(errors, f"`{code}`")


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: str(int(c)))
def test_protocol_explains_every_close_code_with_its_advice(code: CloseCode) -> None:
    close_codes = _section(_read(PROTOCOL), "9. Close codes")
    row = _table_row(close_codes, str(int(code)))
    assert f"**{code.reconnect_advice}**" in row, (
        f"close code {int(code)}: the table must give the advice **{code.reconnect_advice}** "
        "(roomcast.errors.CloseCode.reconnect_advice)"
    )


@pytest.mark.parametrize("event_type", sorted(RESERVED_EVENT_TYPES))
def test_protocol_explains_every_server_made_event(event_type: str) -> None:
    _table_row(_section(_read(PROTOCOL), "6. Events"), f"`{event_type}`")


def test_protocol_names_every_room_status() -> None:
    text = _read(PROTOCOL)
    for status in ROOM_STATUSES:
        assert f"`{status}`" in text


def test_protocol_examples_from_the_server_are_json() -> None:
    """Every `<` line of an example is a complete server frame (or a close frame)."""
    text = _read(PROTOCOL)
    blocks = re.findall(r"^```text\n(.*?)^```", text, re.M | re.S)
    assert blocks, "docs/protocol.md has no examples"
    seen = 0
    for block in blocks:
        for line in block.splitlines():
            match = re.match(r"^(?:\w+ +)?< (.*)$", line)
            if match is None or match.group(1).startswith("[close "):
                continue
            frame = json.loads(match.group(1))
            assert frame.get("type") in SERVER_MESSAGE_TYPES, line
            seen += 1
    assert seen > 50
