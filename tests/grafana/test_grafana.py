"""The Grafana dashboards and the Prometheus/Grafana setup in grafana/.

The main test runs a real proxy and a real Prometheus scraping it every second, sends
two waves of requests (local, hybrid and cloud modes over several network presets, one
upstream failure, one request to the in-process SmolLM2), then evaluates every query of
every panel through Prometheus' HTTP API: each must parse and return at least one finite
value. A second one sends steady traffic of known rate, tokens and delays and checks the
panels' values against it. The other tests lint the dashboard JSON and the provisioning
and compose files.
"""
from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, local_model, make_config, wait_ready
from tests.fake_upstream import make_app
from tests.prom_fixture import Prometheus, PromQLError, finite, prometheus_binary

GRAFANA = ROOT / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}
REQ_LABELS = ("model", "backend", "mode", "network")

# Grafana's values while a test runs: every variable at "All" (its allValue), and windows
# long enough to cover the whole run, which lasts well under a minute.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "1m", "$model": ".*", "$backend": ".*", "$mode": ".*",
                 "$network": ".*"}

# Panels whose queries may come back empty after this short run: (dashboard uid, panel title) -> why.
# None today: the two waves give every panel data.
MAY_BE_EMPTY: dict[tuple[str, str], str] = {}

# Traffic of one wave: (model, mode, network, expected HTTP status).
WAVE = [("echo", "local", "local", 200), ("echo", "hybrid", "wifi", 200), ("echo", "hybrid", "4g", 200),
        ("echo", "cloud", "5g", 200), ("echo", "cloud", "wifi", 200), ("500", "local", "local", 502),
        ("smollm2", "local", "local", 200)]


def dashboards() -> dict[str, dict]:
    return {p.name: orjson.loads(p.read_bytes()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def data_panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def substitute(expr: str) -> str:
    # longest first, so $mode never eats the start of $model
    for var in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(var, SUBSTITUTIONS[var])
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


def queries() -> list[tuple[str, dict, dict]]:
    """(dashboard uid, panel, target) for every query of every panel."""
    return [(d["uid"], p, t) for d in dashboards().values() for p in data_panels(d) for t in p["targets"]]


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- static checks ---

def test_committed_dashboards_are_what_the_builder_makes():
    builder = load_builder()
    assert set(builder.DASHBOARDS) == set(dashboards())
    for name, build in builder.DASHBOARDS.items():
        assert (GRAFANA / "dashboards" / name).read_text() == builder.render(build), \
            f"{name} is stale: run python grafana/build_dashboards.py"


def test_dashboard_json_is_well_formed():
    uids = set()
    for name, dash in dashboards().items():
        assert dash["uid"] not in uids and dash["schemaVersion"] >= 39 and dash["title"]
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"

        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for label in REQ_LABELS:
            v = variables[label]
            assert v["type"] == "query" and v["datasource"] == DS and v["includeAll"] and v["allValue"] == ".*"
            assert re.fullmatch(rf"label_values\(edgemeter_requests_total(\{{.*\}})?, {label}\)", v["definition"])
            assert v["query"]["query"] == v["definition"]

        boxes = []
        for p in dash["panels"]:
            g = p["gridPos"]
            assert all(isinstance(g[k], int) for k in "xywh") and g["w"] > 0 and g["h"] > 0, p["title"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{name}: {p['title']} leaves the 24-column grid"
            for other, o in boxes:
                overlap = g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and \
                    g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]
                assert not overlap, f"{name}: {p['title']!r} overlaps {other!r}"
            boxes.append((p["title"], g))

        for p in data_panels(dash):
            assert p["datasource"] == DS, f"{name}: {p['title']} does not use ${{datasource}}"
            assert p["targets"], f"{name}: {p['title']} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
            for t in p["targets"]:
                assert t["datasource"] == DS and t["expr"].strip()


def test_monitoring_stack_files_fit_together():
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())
    prom, graf = compose["services"]["prometheus"], compose["services"]["grafana"]
    # host networking: the proxy listens on the host's loopback by default
    assert prom["network_mode"] == graf["network_mode"] == "host"

    def mounts(service):
        out = {}
        for v in service["volumes"]:
            src, dst = v.split(":")[:2]
            if src.startswith("./"):
                assert (GRAFANA / src).exists(), f"compose mounts missing {src}"
                out[src] = dst
        return out
    prom_mounts, graf_mounts = mounts(prom), mounts(graf)
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    assert prom_mounts["./prometheus.yml"] == config_flag.split("=", 1)[1]
    listen = next(a for a in prom["command"] if a.startswith("--web.listen-address=")).split("=", 1)[1]

    scrape = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"] and scrape["global"]["scrape_interval"] == "5s"

    provisioning = GRAFANA / "provisioning"
    assert graf_mounts["./provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "edgemeter.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == f"http://{listen}"
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "edgemeter.yml").read_text())["providers"]
    assert provider["type"] == "file" and graf_mounts["./dashboards"] == provider["options"]["path"]
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (GRAFANA / "dashboards" / home.rsplit("/", 1)[1]).exists()
    for dash in dashboards().values():  # the dashboards open on the provisioned datasource
        current = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")["current"]
        assert current["value"] == source["uid"]


def test_promtool_accepts_the_scrape_config():
    promtool = Path(prometheus_binary()).with_name("promtool")  # shipped beside it, in the same package
    done = subprocess.run([str(promtool), "check", "config", str(GRAFANA / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- against a real Prometheus ---

async def send(client, model: str, mode: str, network: str, session: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "stream": True, "max_tokens": 4,
            "n_tokens": 4, "temperature": 0}
    async with client.post("/v1/chat/completions", data=orjson.dumps(body),
                           headers={"Content-Type": "application/json", "X-Edgemeter-Mode": mode,
                                    "X-Edgemeter-Network": network, "X-Edgemeter-Session": session}) as r:
        await r.read()
        return r.status


async def wave(client) -> None:
    sessions = [f"{m}-{mode}-{net}-{time.monotonic_ns()}" for m, mode, net, _ in WAVE]
    statuses = await asyncio.gather(*(send(client, m, mode, net, sid) for (m, mode, net, _), sid in zip(WAVE, sessions)))
    assert list(statuses) == [s for *_, s in WAVE]
    # the device-energy ledger comes at a session's end: end the local ones (no radio tail to wait for)
    for (_, mode, _, _), sid in zip(WAVE, sessions):
        if mode == "local":
            async with client.post(f"/edgemeter/v1/sessions/{sid}/end", json={"tool_cpu_s": 0.5}) as r:
                assert r.status == 200


@pytest.fixture
async def proxy(aiohttp_server, aiohttp_client):
    from proxy.app import create_app
    upstream = await aiohttp_server(make_app())
    base = str(upstream.make_url("/v1"))
    config = make_config({"echo": {"backend": "upstream", "base_url": base, "model": "echo"},
                          "500": {"backend": "upstream", "base_url": base, "model": "500"},
                          "smollm2": local_model()})
    server = await aiohttp_server(create_app(config))
    await wait_ready(server)
    return await aiohttp_client(server)


async def test_every_panel_query_returns_data_from_prometheus(proxy, tmp_path):
    prometheus_binary()  # skip before starting anything when there is no Prometheus
    titles = {(uid, p["title"]) for uid, p, _ in queries()}
    assert set(MAY_BE_EMPTY) <= titles, "the allowlist names a panel that does not exist"
    async with Prometheus(f"{proxy.server.host}:{proxy.server.port}", tmp_path) as prom:
        # Counters appear at their first increment, and rate() needs an increase between two
        # samples: wave 1 creates every series, wave 2 moves them after a scrape has seen them.
        await wave(proxy)
        await prom.wait_scrapes(after=time.time(), n=1)
        await wave(proxy)
        await prom.wait_scrapes(after=time.time(), n=2)

        labels_of: dict[str, set[str]] = {}  # sample name -> its label names, as the proxy exposes them
        for family in text_string_to_metric_families(await (await proxy.get("/metrics")).text()):
            for sample in family.samples:
                labels_of.setdefault(sample.name, set()).update(sample.labels)
        problems = []

        for uid, panel, t in queries():
            where = f"{uid} / {panel['title']!r} [{t['refId']}]"
            for name in re.findall(r"\bedgemeter_\w+", t["expr"]):
                if name not in labels_of:
                    problems.append(f"{where}: {name} is not in the proxy's /metrics")
            # every selector honours the variables for the labels its metric has
            for name, matchers in re.findall(r"\b(edgemeter_\w+)\{([^}]*)\}", t["expr"]):
                for label in set(REQ_LABELS) & labels_of.get(name, set()):
                    if f'{label}=~"${label}"' not in matchers:
                        problems.append(f"{where}: {name} ignores ${label}")
            try:
                values = await prom.query(substitute(t["expr"]))
            except PromQLError as e:
                problems.append(f"{where}: Prometheus rejected the query: {e}")
                continue
            if not finite(values) and (uid, panel["title"]) not in MAY_BE_EMPTY:
                problems.append(f"{where}: no finite value ({values}) from {substitute(t['expr'])}")

        # The variables' label_values(selector, label) become the label-values API.
        expected = {"model": {"echo", "500", "smollm2"}, "backend": {"upstream", "llama.cpp"},
                    "mode": {"local", "hybrid", "cloud"}, "network": {"local", "wifi", "4g", "5g"}}
        for dash in dashboards().values():
            for v in dash["templating"]["list"]:
                if v["type"] != "query":
                    continue
                selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"]).groups()
                values = set(await prom.api(f"label/{label}/values", **{"match[]": substitute(selector)}))
                if not expected[label] <= values:
                    problems.append(f"{dash['uid']} variable {label}: {sorted(values)} lacks "
                                    f"{sorted(expected[label] - values)}")

        assert not problems, "\n".join(problems)



# --- panel values against known traffic ---

# Steady traffic of known shape: RATE requests a second, each TOKENS tokens from a scripted upstream
# that answers after FIRST_S, over a preset whose only delay is a fixed path (no jitter, loss, handshake
# or radio; 10 Gb/s), so every request's added delay is exactly its RTT: half up, half down. Each
# value sits 110 ms or more below its latency bucket's upper edge (a loaded machine only adds time):
# backend TTFT 0.52 s and TTFT 0.64 s in (0.5, 0.75], end-to-end 0.76 s in (0.75, 1], network 0.24 s
# in (0.2, 0.3] (exact: no scheduling in it).
RATE, TOKENS, FIRST_S, RTT_S = 10.0, 4, 0.52, 0.240
TRUTH_NET = {"dashnet": {"rtt_ms": RTT_S * 1000, "jitter_ms": 0, "loss": 0.0, "handshake_rtts": 0}}
# The panels see only this traffic: their variables select its model and network; the window is short
# enough to lie inside the steady run and holds several 1 s scrapes.
TRUTH_SUBSTITUTIONS = {**SUBSTITUTIONS, "$model": "dash", "$network": "dashnet", "$__rate_interval": "5s"}


def bucket(value: float) -> tuple[float, float]:
    """The latency histogram bucket holding ``value``: a quantile from it can only be resolved to that."""
    from proxy.metrics import LATENCY_BUCKETS
    edges = (0.0, *LATENCY_BUCKETS)
    return next((lo, hi) for lo, hi in zip(edges, edges[1:]) if lo < value <= hi)


async def panel(prom: Prometheus, uid: str, title: str, ref: str) -> list[tuple[dict, float]]:
    """One panel query as Grafana would send it with TRUTH_SUBSTITUTIONS: (labels, value) per series."""
    (expr,) = [t["expr"] for u, p, t in queries() if u == uid and p["title"] == title and t["refId"] == ref]
    for var in sorted(TRUTH_SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(var, TRUTH_SUBSTITUTIONS[var])
    data = await prom.api("query", query=expr, time=f"{time.time():.3f}")
    return [(s["metric"], float(s["value"][1])) for s in data["result"]]


async def test_panel_values_match_the_traffic_sent(aiohttp_server, aiohttp_client, tmp_path):
    prometheus_binary()
    from proxy.app import create_app
    upstream = await aiohttp_server(make_app())
    config = make_config({"dash": {"backend": "upstream", "base_url": str(upstream.make_url("/v1")),
                                   "model": "slow_first"}}, networks=TRUTH_NET)
    server = await aiohttp_server(create_app(config))
    await wait_ready(server)
    client = await aiohttp_client(server)
    records = []

    async def one(i: int) -> None:
        body = {"model": "dash", "messages": [{"role": "user", "content": "hi"}], "delay": FIRST_S,
                "n_tokens": TOKENS, "stream": False}
        async with client.post("/v1/chat/completions", data=orjson.dumps(body),
                               headers={"Content-Type": "application/json", "X-Edgemeter-Mode": "hybrid",
                                        "X-Edgemeter-Network": "dashnet", "X-Edgemeter-Device": f"dash-{i}"}) as r:
            assert r.status == 200
            records.append((await r.json())["edgemeter"])

    async def traffic(stop: asyncio.Event) -> None:
        """Launch on an absolute schedule: a late wake-up shifts one launch, never the rate."""
        t0, tasks = time.perf_counter(), []
        i = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        await asyncio.gather(*tasks)

    async with Prometheus(f"{server.host}:{server.port}", tmp_path) as prom:
        stop = asyncio.Event()
        sender = asyncio.create_task(traffic(stop))
        try:
            await asyncio.sleep(2.0)  # the series exist and the first requests are done
            await prom.wait_scrapes(after=time.time(), n=6)  # a 5 s window of steady traffic, plus one
            got = {(uid, title, ref): await panel(prom, uid, title, ref) for uid, title, ref in (
                ("edgemeter-overview", "Requests / s", "A"), ("edgemeter-overview", "Output tokens / s", "A"),
                ("edgemeter-overview", "Time to first token", "A"), ("edgemeter-overview", "Time to first token", "B"),
                ("edgemeter-overview", "Backend TTFT vs delivered TTFT", "A"),
                ("edgemeter-overview", "End-to-end latency", "A"),
                ("edgemeter-overview", "Tokens per request (p50)", "B"),
                ("edgemeter-network-energy", "Added network delay per request", "A"),
                ("edgemeter-network-energy", "Mean added delay by component", "A"),
                ("edgemeter-network-energy", "Mean added delay by direction", "A"))}
        finally:
            stop.set()
            await sender

    def value(uid, title, ref) -> float:
        (labels, v), = got[uid, title, ref]
        return v
    # rates: the window's count is the sent rate, give or take one request in the ~4 s between its samples
    assert value("edgemeter-overview", "Requests / s", "A") == pytest.approx(RATE, rel=0.15)
    assert value("edgemeter-overview", "Output tokens / s", "A") == pytest.approx(RATE * TOKENS, rel=0.15)
    # quantiles: every request has the same value, so each quantile lies in that value's bucket
    ttft = RTT_S / 2 + FIRST_S  # non-streamed: the uplink, then the first token
    assert sorted(r["ttft_s"] for r in records)[len(records) // 2] == pytest.approx(ttft, abs=0.05)
    for ref in ("A", "B"):
        lo, hi = bucket(ttft)
        assert lo < value("edgemeter-overview", "Time to first token", ref) <= hi, ref
    lo, hi = bucket(FIRST_S)
    assert lo < value("edgemeter-overview", "Backend TTFT vs delivered TTFT", "A") <= hi
    lo, hi = bucket(RTT_S + FIRST_S)
    assert lo < value("edgemeter-overview", "End-to-end latency", "A") <= hi
    assert 1 < value("edgemeter-overview", "Tokens per request (p50)", "B") <= TOKENS  # bucket (1, 4]
    lo, hi = bucket(RTT_S)
    assert lo < value("edgemeter-network-energy", "Added network delay per request", "A") <= hi
    # means of counters that move together: exact up to the serialization at 10 Gb/s
    net = "edgemeter-network-energy"
    parts = {labels["component"]: v for labels, v in got[net, "Mean added delay by component", "A"]}
    assert parts["propagation"] == pytest.approx(RTT_S, rel=0.01)
    assert sum(parts.values()) == pytest.approx(RTT_S, rel=0.01)
    ways = {labels["direction"]: v for labels, v in got[net, "Mean added delay by direction", "A"]}
    assert ways == {"up": pytest.approx(RTT_S / 2, rel=0.01), "down": pytest.approx(RTT_S / 2, rel=0.01)}
