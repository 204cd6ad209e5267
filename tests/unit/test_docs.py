"""The docs keep up with the code: README.md (quick start), docs/configuration.md (every
setting, the generated table), docs/operations.md (every metric, its type and labels) and
docs/protocol.md (every message type, error code, close code and server-made event)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from coordinator.service import CoordinatorMetrics
from gateway.metrics import Metrics
from roomcast import docgen
from roomcast.errors import CloseCode, ErrorCode
from roomcast.history.flusher import FlusherMetrics
from roomcast.metrics_util import RedirectsCollector
from roomcast.protocol import MESSAGE_TYPES, RESERVED_EVENT_TYPES, ROOM_STATUSES
from roomcast.settings import SPECS, markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
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


def _section_containing(text: str, words: str) -> str:
    """The body of the first `## ` section whose heading contains `words`."""
    match = re.search(rf"^## [^\n]*{re.escape(words)}[^\n]*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"no '## ' heading containing '{words}'"
    return match.group(1)


def _table_row(text: str, first_cell: str) -> str:
    match = re.search(rf"^\| {re.escape(first_cell)} \|.*$", text, re.M)
    assert match is not None, f"no table row starting with '| {first_cell} |'"
    return match.group(0)


# ---------------------------------------------------------------- README.md


def test_readme_quick_start_has_both_commands() -> None:
    quick_start = _section_containing(_read(README), "Quick start")
    for command in QUICK_START_COMMANDS:
        assert re.search(rf"^{re.escape(command)}\b", quick_start, re.M), (
            f"the Quick start section must show `{command}` at the start of a line"
        )


def test_readme_stays_short() -> None:
    lines = _read(README).count("\n")
    assert lines <= 200, f"README.md has {lines} lines; the reference belongs in docs/ (at most ~200)"


def test_readme_links_every_reference_page() -> None:
    text = _read(README)
    for page in ("protocol", "configuration", "operations", "kubernetes", "python-client", "development", "security"):
        assert f"(docs/{page}.md)" in text, f"README.md does not link docs/{page}.md"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"^```.*?^```", "", _read(path), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_and_docs_links_point_to_files_and_headings_that_exist() -> None:
    for path in (README, *sorted((ROOT / "docs").glob("*.md"))):
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", _read(path)):
            if "://" in target or target.startswith("mailto:"):
                continue
            file = (path.parent / target) if target else path
            assert file.exists(), f"{path.relative_to(ROOT)} links {target}, which does not exist"
            if anchor and file.suffix == ".md":
                assert anchor in _anchors(file), f"{path.relative_to(ROOT)} links {target}#{anchor}: no such heading"


# ---------------------------------------------------------------- docs/configuration.md


@pytest.mark.parametrize("env", [spec.env for spec in SPECS])
def test_configuration_documents_every_setting(env: str) -> None:
    assert f"`{env}`" in _read(CONFIGURATION), f"docs/configuration.md does not mention `{env}`"


def test_configuration_table_is_the_generated_one() -> None:
    table = markdown_table()
    assert table in _section(_read(CONFIGURATION), "Settings"), (
        "the table of docs/configuration.md differs from roomcast.settings.SPECS; regenerate it with\n"
        "  .venv/bin/python -m roomcast.docgen"
    )


def test_docgen_targets_docs_configuration() -> None:
    assert docgen.TARGET == CONFIGURATION


def test_configuration_gives_every_duration_its_unit() -> None:
    table = _section(_read(CONFIGURATION), "Settings")
    for spec in SPECS:
        row = _table_row(table, f"`{spec.env}`")
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] == (spec.unit or "—"), f"{spec.env}: the Unit cell is {cells[3]!r}"
        if spec.field.endswith("_ms"):
            assert cells[3] == "ms", f"{spec.env} is a duration: its unit must say ms"


# ---------------------------------------------------------------- docs/operations.md


def _exported_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Every metric of the gateway, the coordinator and the flusher: exposed name -> (type, label names)."""
    flusher = FlusherMetrics(CollectorRegistry())
    metrics: dict[str, tuple[str, frozenset[str]]] = {}
    for holder in (Metrics(), CoordinatorMetrics(), flusher):
        for value in vars(holder).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            (family,) = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            metrics[name] = (family.type, frozenset(value._labelnames))
    # Collected at scrape time (gateway and coordinator register it beside their metrics).
    metrics[RedirectsCollector.NAME + "_total"] = ("counter", frozenset(RedirectsCollector.LABELS))
    return metrics


def _metric_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in _section(_read(OPERATIONS), "Metrics").splitlines():
        match = re.match(r"^\| `(roomcast_\w+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    return rows


def test_operations_metric_table_matches_the_code() -> None:
    exported = _exported_metrics()
    rows = _metric_rows()
    assert set(rows) == set(exported), (
        f"docs/operations.md metrics table: not exported {sorted(set(rows) - set(exported))}, "
        f"not documented {sorted(set(exported) - set(rows))}"
    )
    for name, (where, kind, labels, _meaning) in rows.items():
        assert where, name
        assert kind == exported[name][0], f"{name}: documented as {kind}, exported as {exported[name][0]}"
        documented = frozenset(re.findall(r"`(\w+)`", labels))
        assert documented == exported[name][1], f"{name}: labels {sorted(documented)}, exported {sorted(exported[name][1])}"


def test_operations_names_only_metrics_that_exist() -> None:
    exported = set(_exported_metrics())
    histograms = {n for n, (kind, _) in _exported_metrics().items() if kind == "histogram"}
    text = _read(OPERATIONS)
    for name in set(re.findall(r"(?<![\w:])roomcast_\w+", text)):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in exported or base in histograms, f"docs/operations.md names {name}, which no process exports"


def test_operations_lists_every_rate_limit_label() -> None:
    row = _metric_rows()["roomcast_rate_limited_total"]
    for limit in Metrics().rate_limited_by:
        assert f"`{limit}`" in row[3], f"roomcast_rate_limited_total: limit `{limit}` is not listed"


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
