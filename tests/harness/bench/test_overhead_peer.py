"""The overhead benchmark's nginx comparison: the verdicts against the issue's targets and the
report's peer table, from rows whose figures are given."""
from __future__ import annotations

from harness.bench.overhead import NGINX_CONF, Path_, Scenario, report, summarize, targets

INFO = {"created": "now", "machine": {"cpu": "cpu", "cores": 2, "system": "linux", "python": "3.11"},
        "loadavg": {"before": 1.0, "after": 1.5}, "command": "python -m harness bench overhead --peer nginx"}


def row(name: str, c: int, stream: bool, **figures) -> dict:
    out = summarize(Scenario(name, stream, 16, 0.0, c), Path_(), Path_(), {}) if not stream else \
        {"scenario": name, "stream": True, "concurrency": c}
    out.update(figures)
    return out


def test_verdicts_against_nginx():
    rows = [row("small", 1, False, added_e2e_p50_ms=0.45, nginx_added_e2e_p50_ms=0.10, nginx_throughput_ratio=0.9),
            row("stream", 64, True, throughput_ratio=0.93, nginx_throughput_ratio=0.92, capacity_ratio=0.96,
                nginx_capacity_ratio=1.01)]
    lines = [t for t in targets(rows) if "nginx" in t]
    assert "difference 0.350 ms (target <= 0.3): MISSED" in lines[0]
    assert "Edgemeter 0.93, nginx 0.92 (target: Edgemeter >= nginx): met" in lines[1]
    rows[1]["nginx_throughput_ratio"] = 0.94
    assert "MISSED" in [t for t in targets(rows) if "nginx" in t][1]


def test_report_says_when_nginx_is_missing():
    rows = [row("small", 1, False, added_e2e_p50_ms=0.45)]
    text = report(rows, {**INFO, "peer_missing": "nginx is not installed (Debian: apt-get install nginx)"})
    assert "Peer: nginx is not installed" in text and "Beside nginx" not in text


def test_nginx_config_forwards_bytes_as_they_come():
    conf = NGINX_CONF.format(tmp="/tmp/x", up_port=1, port=2, keepalive=8)
    assert "proxy_buffering off;" in conf and "keepalive 8;" in conf and 'proxy_set_header Connection "";' in conf
