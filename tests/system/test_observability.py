"""Observability: the Prometheus rules and the Grafana dashboard, checked against the real thing.

Design invariant 9 asks that every metric a dashboard or an alert uses is exercised by a test.
Here:

- `promtool check rules` and `promtool test rules` pass, and the unit tests show every alert of
  deploy/prometheus/rules.yml both firing and not firing;
- deploy/grafana/dashboard.json has the structure Grafana imports (unique panel ids, a grid that
  fits, targets on the `${datasource}` variable, only defined variables used);
- a REAL Prometheus (Debian's binary) scrapes a REAL 2-gateway cluster (coordinator, Redis, a
  throwaway Postgres so the flusher's metrics exist) every second and evaluates the rules, while
  clients make a short bounded load (rooms spanning both replicas, events, an error, an invalid
  frame, a reconnect on the other replica with `since`, a 4008 refusal). Then every dashboard target
  and every rule is evaluated through /api/v1/query and must return data.

"Returns data" for an alert: an alert's expression is a condition (`x > 0.005`, `a and b`, ...) and
is rightly empty on a healthy cluster, so the test evaluates the whole expression (it must parse
and evaluate) and then each of its operands: the expression, as Prometheus itself prints it, is
split at top-level `or`, `and`/`unless` and comparison operators (in PromQL's precedence order,
outside brackets and strings), `on(...)`/`ignoring(...)`/`group_*`/`bool` modifiers and enclosing
parentheses are dropped, number literals are skipped and `absent(x)` stands for `x`. Every operand
left must return at least one finite sample: `roomcast_postgres_up == 0` is checked as
`roomcast_postgres_up`, `min_over_time(r[15m]) > 500 and deriv(r[15m]) > 0` as both functions.
Recording rules are queried by name. Dashboard targets are evaluated twice: with the template
variables as "All" (`.*`) and with the real namespace and one real gateway instance;
`$__rate_interval` becomes 1m and `$__range` 5m. Every rule must also be healthy (no evaluation
error) and no alert may be pending or firing on the healthy cluster (fan-out latency excepted: a
slow CI machine may legitimately exceed 5 ms).

Only loopback ports are used; Prometheus keeps its data in a temp dir and is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from roomcast_client.admin import AdminClient, AdminError
from tests.harness import (
    OUTPUT,
    ROOT,
    UNIT,
    Client,
    Cluster,
    PostgresServer,
    cluster,
    free_port,
    http_get,
    stop_process,
    unique,
    wait_http_ready,
)
from tests.system.test_webhooks import backend_server

pytestmark = pytest.mark.system

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
NAMESPACE = "roomcast-obs"  # the `namespace` label the scrape config adds, as Kubernetes would
GATEWAY_JOB, COORDINATOR_JOB = "roomcast-gateway", "roomcast-coordinator"  # as the ServiceMonitors name them
LOAD_S = 12.0  # length of the client load (not scaled: the whole test must stay under 90 s)
API_SECRET = "observability-api-secret"
ENV = {
    "HISTORY_FLUSH_INTERVAL": "50",
    "HEARTBEAT_FLUSH_INTERVAL": "300",
    "CLEANUP_INTERVAL": "300",
    "MAX_CONNECTIONS_PER_DEVICE": "2",  # so the load can provoke a 4008 refusal
    "SERVER_API_KEYS": f"obs={API_SECRET}",  # the load calls the server API too
}
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "5m", "__interval": "1m"}
QUIET_EXEMPT = {"RoomcastFanoutLatencyHigh"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's prometheus package (./dev setup does)")
    return path


# ---------------------------------------------------------------- promtool


def test_promtool_checks_and_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True,
                          timeout=60, cwd=RULES_TEST.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rule_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"
    assert (fired | quiet) - alerts == set(), "tests of alerts that do not exist"
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


# ---------------------------------------------------------------- dashboard structure

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _variables_used(text: str) -> set[str]:
    return {a or b for a, b in _VAR.findall(text)}


def test_dashboard_structure() -> None:
    d = _dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "tags", "refresh"):
        assert key in d, key
    assert d["title"] == "roomcast" and d["uid"] == "roomcast"
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "instance"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "instance"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["includeAll"] and v["allValue"] == ".*"
        assert v["query"]["query"].startswith("label_values(") and v["definition"] == v["query"]["query"]
        assert _variables_used(v["query"]["query"]) <= set(variables) - {name}

    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in d["panels"]:
        for key in ("id", "type", "title", "gridPos"):
            assert key in panel, (key, panel.get("title"))
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0 and g["y"] >= 0, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):  # no two panels overlap
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            assert panel["panels"] == [] and not panel.get("targets")
            continue
        assert panel["type"] in ("timeseries", "stat"), panel["type"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert t["expr"].strip(), panel["title"]
            used = _variables_used(t["expr"]) | _variables_used(t.get("legendFormat", ""))
            assert used <= set(variables) | set(GRAFANA_BUILTINS), (panel["title"], used)
    assert any(p["type"] == "stat" for p in d["panels"]) and any(p["type"] == "timeseries" for p in d["panels"])


# ---------------------------------------------------------------- PromQL operands


_SET_OPS = [("or",), ("and", "unless")]
_CMP_OPS = ("==", "!=", ">=", "<=", ">", "<")
_WORD = re.compile(r"[A-Za-z0-9_:]")
_MODIFIER = re.compile(r"^(bool|on|ignoring|group_left|group_right)\b\s*(\([^)]*\))?\s*")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _split_top(expr: str, ops: tuple[str, ...]) -> list[str]:
    """Split `expr` at the binary operators `ops` outside brackets and string literals."""
    parts: list[str] = []
    depth, start, i, quote = 0, 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            i += 2 if ch == "\\" else 1
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in ops:
                if not expr.startswith(op, i):
                    continue
                end = i + len(op)
                if op[0].isalpha() and ((i and _WORD.match(expr[i - 1])) or (end < len(expr) and _WORD.match(expr[end]))):
                    continue
                parts.append(expr[start:i])
                start = i = end
                break
            else:
                i += 1
            continue
        i += 1
    parts.append(expr[start:])
    return parts


def _strip(expr: str) -> str:
    s = expr.strip()
    while True:
        m = _MODIFIER.match(s)
        if m and m.end():
            s = s[m.end():].strip()
            continue
        if s.startswith("(") and s.endswith(")") and _balanced(s[1:-1]):
            s = s[1:-1].strip()
            continue
        return s


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def operands(expr: str) -> list[str]:
    """The sub-expressions whose data an alert condition tests (see the module docstring)."""
    e = _strip(expr)
    for ops in (*_SET_OPS, _CMP_OPS):
        parts = _split_top(e, ops)
        if len(parts) > 1:
            return [leaf for part in parts for leaf in operands(part)]
    if _NUMBER.fullmatch(e):
        return []
    m = re.fullmatch(r"absent(?:_over_time)?\s*\((.*)\)", e, re.S)
    if m:
        return operands(m.group(1))
    return [e]


def test_operand_splitting() -> None:
    assert operands('a{x=~"(a|b)>"} > 0.005') == ['a{x=~"(a|b)>"}']
    assert operands("min_over_time(r[15m]) > 500 and deriv(r[15m]) > 0") == ["min_over_time(r[15m])", "deriv(r[15m])"]
    assert operands("rate(f[5m]) > 0 unless on(instance, job) (pg == 0)") == ["rate(f[5m])", "pg"]
    assert operands("sum by(ns) (l) < 1 or sum by(ns) (up) == 0 or absent(up)") == ["sum by(ns) (l)", "sum by(ns) (up)",
                                                                                    "up"]
    assert operands("(a / b) > bool 1") == ["a / b"]
    assert operands("roomcast_coordinator_leader and ignoring(x) order_total") == ["roomcast_coordinator_leader",
                                                                                    "order_total"]


# ---------------------------------------------------------------- a real Prometheus


@dataclass
class Prometheus:
    """Debian's prometheus binary on a free 127.0.0.1 port, data in `workdir`."""

    workdir: Path
    scrape: dict[str, list[str]]  # job -> host:port targets
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets, "labels": {"namespace": NAMESPACE}}]}
                for job, targets in self.scrape.items()
            ],
        }
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(json.dumps(config, indent=2))  # JSON is YAML
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"prometheus-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [_tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_http_ready(self.proc, self.url + "/-/ready", "prometheus", self.log, 20 * UNIT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 10)

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10)
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", (path, params, body)
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def expect_data(self, expr: str, what: str) -> None:
        """Record a failure unless `expr` returns at least one finite sample."""
        try:
            result = self.query(expr)
        except AssertionError as exc:
            self.failures.append(f"{what}: {expr}\n    error: {exc}")
            return
        values = [float(s["value"][1]) for s in result if "value" in s] + [
            float(v[1]) for s in result for v in s.get("values", [])]
        if not any(math.isfinite(v) for v in values):
            self.failures.append(f"{what}: {expr}\n    no finite sample: {result[:3]}")


@contextlib.contextmanager
def prometheus(workdir: Path, scrape: dict[str, list[str]]) -> Iterator[Prometheus]:
    prom = Prometheus(workdir, scrape).start()
    try:
        yield prom
    finally:
        prom.stop()


# ---------------------------------------------------------------- load


async def _open(url: str, device: str) -> tuple[contextlib.AbstractAsyncContextManager[Client], Client]:
    cm = Client.open(url)
    client = await cm.__aenter__()
    await client.hello(device)
    return cm, client


async def _load(c: Cluster) -> None:
    """Rooms spanning both replicas, events from every member for LOAD_S seconds, an error, an
    invalid frame, a reconnect on the other replica with `since`, and a 4008 refusal."""
    g0, g1 = c.gateways
    opened: list[contextlib.AbstractAsyncContextManager[Client]] = []

    async def member(url: str, room_id: str, create: bool) -> Client:
        cm, client = await _open(url, unique("dev"))
        opened.append(cm)
        msg = {"type": "create_room", "room_id": room_id, "game_type": "quiz"} if create else {
            "type": "join", "room_id": room_id}
        reply = await client.request(msg)
        assert reply["type"] in ("room_created", "joined"), reply
        return client

    async def play(client: Client, room_id: str, stop_at: float) -> int:
        """Send events until `stop_at`, each after the previous one's ack; returns the last seq."""
        seq = 0
        while time.monotonic() < stop_at:
            ack = await client.request({"type": "event", "room_id": room_id, "event_type": "answer",
                                        "payload": {"n": seq}})
            assert ack["type"] == "ack", ack
            seq = ack["seq"]
            client.inbox.clear()  # the room's events: delivered and counted, not needed here
            await asyncio.sleep(0.05)
        return seq

    async def errors() -> None:
        # Errors of the client's making: a room that does not exist, a frame that is not JSON.
        cm, bad = await _open(g0.url, unique("bad"))
        opened.append(cm)
        assert (await bad.request({"type": "join", "room_id": unique("nope")}))["code"] == "not_found"
        await bad.send("{not json")
        assert (await bad.expect(type="error"))["code"] == "bad_request"
        # A device over MAX_CONNECTIONS_PER_DEVICE (2): its third socket is closed with 4008.
        device = unique("many")
        for _ in range(2):
            cm, _client = await _open(g1.url, device)
            opened.append(cm)
        async with Client.open(g1.url) as third:
            await third.send({"type": "hello", "id": 1, "device_id": device})
            assert await third.closed() == 4008

    async def backend(room_id: str, stop_at: float) -> None:
        # The server API: publishes through both replicas, and a call with a wrong key (401) to
        # each (the dashboard is also checked for one instance, whichever sorts first).
        apis = [AdminClient(g.http, API_SECRET) for g in (g0, g1)]
        for g in (g0, g1):
            with contextlib.suppress(AdminError):
                await AdminClient(g.http, "not-the-right-secret").list_rooms()
        # A member on each replica joins again now and then: every join asks the join webhook,
        # so its rate (and latency) panels have data for each instance all along.
        rejoiners = [await member(g.url, room_id, create=False) for g in (g0, g1)]
        n = 0
        while time.monotonic() < stop_at:
            await apis[n % 2].publish(room_id, "tick", payload={"n": n})
            if n % 5 == 0:
                for r in rejoiners:
                    assert (await r.request({"type": "join", "room_id": room_id}))["type"] == "joined"
                    r.inbox.clear()
            n += 1
            await asyncio.sleep(0.1)

    async def moves(mover: Client, room_id: str, start: float) -> None:
        # Halfway, a player drops its socket and resumes on the other replica with `since`.
        last = await play(mover, room_id, start + LOAD_S / 2)
        await mover.ws.close()
        assert mover.welcome is not None
        cm, back = await _open(g1.url, mover.welcome["device_id"])
        opened.append(cm)
        assert back.welcome is not None and back.welcome["reconnect_count"] >= 1, back.welcome
        rejoined = await back.request({"type": "join", "room_id": room_id, "since": last})
        assert rejoined["type"] == "joined" and rejoined["recovered"], rejoined
        await play(back, room_id, start + LOAD_S)

    try:
        players: list[tuple[Client, str]] = []
        for room_id in (unique("obs") for _ in range(3)):
            players.append((await member(g0.url, room_id, create=True), room_id))
            players.append((await member(g1.url, room_id, create=False), room_id))
            players.append((await member(g1.url, room_id, create=False), room_id))
        start = time.monotonic()
        await asyncio.gather(errors(), moves(*players[0], start), backend(players[3][1], start + LOAD_S),
                             *(play(p, room_id, start + LOAD_S) for p, room_id in players[1:]))
    finally:
        for cm in opened:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)


# ---------------------------------------------------------------- the end-to-end check


def _label_values(prom: Prometheus, definition: str, substitutions: dict[str, str]) -> list[str]:
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
    assert m, definition
    selector = _substitute(m.group(1), substitutions)
    values: list[str] = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
    return values


def _substitute(expr: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables[m.group(1) or m.group(2)], expr)


def _wait_for_scrape_after(prom: Prometheus, t: float) -> None:
    """Until every target was scraped, and the rules evaluated, after wall-clock time `t`."""
    deadline = time.monotonic() + 15 * UNIT
    while time.monotonic() < deadline:
        scraped = prom.query("timestamp(up)")
        rules = prom.query("timestamp(namespace:roomcast_gateway_targets:count)")
        if len(scraped) == 3 and rules and min(float(s["value"][1]) for s in scraped + rules) > t:
            return
        time.sleep(0.2)
    raise TimeoutError("prometheus did not scrape after the load")


def _check(prom: Prometheus, c: Cluster) -> None:
    # The scrape jobs are named as in deploy/k8s, so the rules' `job` matchers are exercised too.
    gateways = sorted(f"127.0.0.1:{g.port}" for g in c.gateways)
    up = {s["metric"]["instance"]: s["value"][1] for s in prom.query("up")}
    assert up == dict.fromkeys([*gateways, f"127.0.0.1:{c.coordinators[0].port}"], "1"), up

    # ---- the dashboard: template variables, then every target, with "All" and with one instance.
    d = _dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    every = {"datasource": "n/a", "namespace": ".*", "instance": ".*", **GRAFANA_BUILTINS}
    one = {**every, "namespace": NAMESPACE, "instance": gateways[0]}
    assert NAMESPACE in _label_values(prom, variables["namespace"]["definition"], every)
    assert sorted(_label_values(prom, variables["instance"]["definition"], every)) == gateways
    assert _label_values(prom, variables["instance"]["definition"], one) == gateways
    n_targets = 0
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            n_targets += 1
            for name, subs in (("all", every), ("one instance", one)):
                expr = _substitute(t["expr"], subs)
                assert "$" not in expr, expr
                prom.expect_data(expr, f"panel {panel['title']!r} {t['refId']} ({name})")
    assert n_targets >= 40

    # ---- the rules, as Prometheus loaded them.
    loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in loaded) == sorted(r.get("alert") or r["record"] for r in _rules())
    for rule in loaded:
        if rule["health"] != "ok":
            prom.failures.append(f"rule {rule['name']} unhealthy: {rule.get('lastError')}")
        if rule["type"] == "recording":
            prom.expect_data(rule["name"], f"recording rule {rule['name']}")
            continue
        prom.query(rule["query"])  # the whole condition evaluates (empty on a healthy cluster)
        parts = operands(rule["query"])
        assert parts, rule["query"]
        for part in parts:
            prom.expect_data(part, f"alert {rule['name']} operand")
        if rule["state"] != "inactive" and rule["name"] not in QUIET_EXEMPT:
            prom.failures.append(f"alert {rule['name']} is {rule['state']} on a healthy cluster: {rule['alerts']}")

    # ---- what the load did is visible (so the panels above show real traffic, not zeros).
    def total(expr: str) -> float:
        return sum(float(s["value"][1]) for s in prom.query(expr))

    assert total('roomcast_messages_in_total{type="event"}') > 100
    assert total('roomcast_errors_total{code="not_found"}') >= 1
    assert total('roomcast_api_requests_total{route="POST /api/v1/rooms/{room_id}/events", status="200"}') >= 5
    assert total('roomcast_api_requests_total{status="401"}') >= 1
    assert total('roomcast_webhook_calls_total{hook="join", outcome="allow"}') >= 2
    assert total('roomcast_messages_in_total{type="invalid"}') >= 1
    assert total('roomcast_rate_limited_total{limit="connections_per_device"}') >= 1
    assert total('roomcast_connections_closed_total{code="4008"}') >= 1
    assert total("roomcast_fanout_latency_seconds_count") > 100
    assert total("roomcast_pubsub_lag_seconds_count") > 100
    assert total("roomcast_flush_rows_total") > 100
    assert total("roomcast_flush_lag_seconds_count") >= 1
    assert total("roomcast_coordinator_leader") == 1
    assert total("roomcast_postgres_up and on(instance) roomcast_coordinator_leader == 1") == 1
    assert total('roomcast_rooms{job="roomcast-coordinator", status="waiting"}') >= 3

    assert not prom.failures, "\n".join(prom.failures)


@pytest.mark.timeout(90)
async def test_dashboard_and_rules_return_data_from_a_real_cluster(tmp_path: Path) -> None:
    started = time.monotonic()
    pg = PostgresServer().init()
    try:
        dsn = pg.create_database(unique("obs").replace("-", "_"))
        # A game backend that allows every join and room creation: the webhook panels get data.
        with backend_server() as (_backend, hooks), cluster(2, 1, ENV | {
                "DATABASE_URL": dsn, "BACKEND_JOIN_URL": hooks + "/join"}) as c:
            scrape = {GATEWAY_JOB: [f"127.0.0.1:{g.port}" for g in c.gateways],
                      COORDINATOR_JOB: [f"127.0.0.1:{c.coordinators[0].port}"]}
            with prometheus(tmp_path, scrape) as prom:
                await _load(c)
                _wait_for_scrape_after(prom, time.time())
                _check(prom, c)
    finally:
        pg.destroy()
    assert time.monotonic() - started < 90
