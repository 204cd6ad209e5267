"""MOVED/ASK counting (roomcast/redis/client_redirects.py) and its metric, without a Redis: the
parser's error hook is fed the error replies a cluster node sends. The real redirects, from a slot
migrated under a room in use, are in tests/system/test_redirects.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from redis.exceptions import AskError, MovedError, ResponseError

from roomcast.metrics_util import RedirectsCollector
from roomcast.redis.client_redirects import Redirects, counting_parser


class _Conn:
    host, port = "10.0.0.7", 7001


def test_parser_counts_moved_and_ask_by_the_node_that_sent_them() -> None:
    counts = Redirects()
    parser = counting_parser(counts)(socket_read_size=65536)
    parser.node = f"{_Conn.host}:{_Conn.port}"  # what on_connect sets from the connection
    assert isinstance(parser.parse_error("MOVED 3999 10.0.0.8:7002"), MovedError)
    assert isinstance(parser.parse_error("MOVED 3999 10.0.0.8:7002"), MovedError)
    ask = parser.parse_error("ASK 3999 10.0.0.8:7002")
    assert isinstance(ask, AskError) and not isinstance(ask, MovedError)
    assert type(parser.parse_error("ERR unknown command")) is ResponseError  # not a redirect: not counted
    assert counts.counts == {("moved", "10.0.0.7:7001"): 2, ("ask", "10.0.0.7:7001"): 1}


def test_metric_exports_every_seeded_node_at_zero_and_the_counts() -> None:
    counts = Redirects()
    counts.seed(["10.0.0.7:7001", "10.0.0.9:7003"])
    counts.seen("moved", "10.0.0.7:7001")
    registry = CollectorRegistry()
    registry.register(RedirectsCollector(counts.counts))
    text = generate_latest(registry).decode()
    assert "# TYPE roomcast_redis_redirects_total counter" in text
    assert 'roomcast_redis_redirects_total{kind="moved",node="10.0.0.7:7001"} 1.0' in text
    assert 'roomcast_redis_redirects_total{kind="ask",node="10.0.0.9:7003"} 0.0' in text
    counts.seen("ask", "10.0.0.9:7003")  # read at scrape time
    assert 'roomcast_redis_redirects_total{kind="ask",node="10.0.0.9:7003"} 1.0' in generate_latest(registry).decode()
