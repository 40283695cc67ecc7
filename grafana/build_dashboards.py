"""Build the Grafana dashboards in grafana/dashboards/ from the panel lists below.

    python grafana/build_dashboards.py          # rewrite the JSON files
    python grafana/build_dashboards.py --check  # exit 1 if they are out of date

The JSON is generated so that every panel gets the same datasource reference, the
same template-variable filters and a packed, non-overlapping layout; edit this file,
not the JSON. tests/grafana/test_grafana.py runs every query below against a real Prometheus.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 42  # Grafana 12's classic dashboard JSON model

# Every request metric carries these labels; each query filters on all of them so the
# variables at the top of the dashboard narrow every panel.
REQ = 'model=~"$model",backend=~"$backend",mode=~"$mode",network=~"$network"'
BACKEND = 'model=~"$model",backend=~"$backend"'
RADIO = 'network=~"$network"'
QUANTILES = (0.5, 0.9, 0.99)


# --- queries ---

def rate(metric: str, labels: str = REQ, window: str = "$__rate_interval") -> str:
    return f"rate({metric}{{{labels}}}[{window}])"


def quantile(q: float, histogram: str, by: str = "", window: str = "$__rate_interval") -> str:
    keys = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) ({rate(histogram + '_bucket', REQ, window)}))"


def quantile_targets(histogram: str, prefix: str = "") -> list[dict]:
    return [target(quantile(q, histogram), f"{prefix}p{round(q * 100)}") for q in QUANTILES]


def mean(histogram: str, by: str = "", window: str = "$__rate_interval") -> str:
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}({rate(histogram + '_sum', REQ, window)}) / {agg}({rate(histogram + '_count', REQ, window)})"


def target(expr: str, legend: str = "", instant: bool = False, fmt: str = "time_series") -> dict:
    return {"datasource": DS, "editorMode": "code", "expr": expr, "format": fmt, "instant": instant,
            "legendFormat": legend or "__auto", "range": not instant}


# --- panels ---

def timeseries(title: str, desc: str, targets: list[dict], unit: str, w: int = 12, h: int = 8,
               stack: bool = False, min0: bool = True) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 25 if stack else 8, "showPoints": "never",
              "spanNulls": False, "stacking": {"group": "A", "mode": "normal" if stack else "none"}}
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if min0:
        defaults["min"] = 0
    return {"type": "timeseries", "title": title, "description": desc, "_w": w, "_h": h,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"calcs": ["mean", "lastNotNull"], "displayMode": "table", "placement": "bottom",
                                   "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": targets}


def stat(title: str, desc: str, expr: str, unit: str, w: int = 4) -> dict:
    return {"type": "stat", "title": title, "description": desc, "_w": w, "_h": 4,
            "fieldConfig": {"defaults": {"unit": unit, "color": {"mode": "thresholds"},
                                         "thresholds": {"mode": "absolute",
                                                        "steps": [{"color": "blue", "value": None}]}},
                            "overrides": []},
            "options": {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "textMode": "auto", "wideLayout": True},
            "targets": [target(expr)]}


def bargauge(title: str, desc: str, expr: str, legend: str, unit: str, w: int = 8, h: int = 9) -> dict:
    return {"type": "bargauge", "title": title, "description": desc, "_w": w, "_h": h,
            "fieldConfig": {"defaults": {"unit": unit, "min": 0, "color": {"mode": "continuous-BlYlRd"},
                                         "thresholds": {"mode": "absolute",
                                                        "steps": [{"color": "green", "value": None}]}},
                            "overrides": []},
            "options": {"displayMode": "gradient", "orientation": "horizontal", "namePlacement": "left",
                        "showUnfilled": True, "sizing": "auto", "valueMode": "color", "minVizHeight": 16,
                        "minVizWidth": 8, "maxVizHeight": 300,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
            "targets": [target(expr, legend, instant=True)]}


def state_timeline(title: str, desc: str, expr: str, legend: str, steps: list[dict], mappings: list[dict],
                   w: int = 12, h: int = 8) -> dict:
    return {"type": "state-timeline", "title": title, "description": desc, "_w": w, "_h": h,
            "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}, "mappings": mappings,
                                         "thresholds": {"mode": "absolute", "steps": steps},
                                         "custom": {"fillOpacity": 80, "lineWidth": 0}},
                            "overrides": []},
            "options": {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.85,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
                        "tooltip": {"mode": "single", "sort": "none"}},
            "targets": [target(expr, legend)]}


def table(title: str, desc: str, columns: list[tuple[str, str, str]], w: int = 24, h: int = 9) -> dict:
    """One instant query per column, joined on (mode, network) by Grafana's merge transformation."""
    targets, rename, units = [], {}, []
    for i, (name, expr, unit) in enumerate(columns):
        ref = chr(ord("A") + i)
        targets.append({**target(expr, instant=True, fmt="table"), "refId": ref})
        rename[f"Value #{ref}"] = name
        units.append({"matcher": {"id": "byName", "options": name},
                      "properties": [{"id": "unit", "value": unit}]})
    return {"type": "table", "title": title, "description": desc, "_w": w, "_h": h,
            "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
                            "overrides": units},
            "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]},
                        "sortBy": [{"displayName": "mode", "desc": False}]},
            "transformations": [{"id": "merge", "options": {}},
                                {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                               "indexByName": {}, "renameByName": rename}}],
            "targets": targets}


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def layout(panels: list[dict]) -> list[dict]:
    """Pack panels left to right into the 24-column grid; a row header or a full line starts a new line."""
    out, x, y, line_h = [], 0, 0, 0
    for pid, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24 or p["type"] == "row":
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        p["id"] = pid
        if p["type"] != "row":
            p["datasource"] = DS
            for i, t in enumerate(p["targets"]):
                t.setdefault("refId", chr(ord("A") + i))
        x, line_h = x + w, max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
        out.append(p)
    return out


# --- variables ---

def variables() -> list[dict]:
    out = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "edgemeter-prometheus"}, "hide": 0, "includeAll": False,
            "multi": False, "options": [], "refresh": 1, "regex": ""}]
    chain = []  # each variable's values narrowed by the ones before it
    for name, label in (("model", "Model"), ("backend", "Backend"), ("mode", "Mode"), ("network", "Network")):
        selector = "edgemeter_requests_total" + ("{" + ",".join(chain) + "}" if chain else "")
        query = f"label_values({selector}, {name})"
        out.append({"name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
                    "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                    "current": {"text": ["All"], "value": ["$__all"]}, "hide": 0, "includeAll": True,
                    "allValue": ".*", "multi": True, "options": [], "refresh": 2, "regex": "", "sort": 1})
        chain.append(f'{name}=~"${name}"')
    return out


def dashboard(uid: str, title: str, description: str, panels: list[dict]) -> dict:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": True, "keepTime": True,
                   "tags": ["edgemeter"], "targetBlank": False, "title": "Edgemeter", "type": "dashboards"}],
        "panels": layout(panels),
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["edgemeter"],
        "templating": {"list": variables()},
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# --- the dashboards ---

TTFT = "edgemeter_time_to_first_token_seconds"
BACKEND_TTFT = "edgemeter_backend_time_to_first_token_seconds"
E2E = "edgemeter_e2e_request_latency_seconds"
EPT = "edgemeter_energy_per_token_joules"
NET_DELAY = "edgemeter_network_delay_seconds"
BY_MODE_NET = '{{mode}} · {{network}}'


def per_request(counter_expr: str, window: str = "$__rate_interval") -> str:
    """A rate divided by the request rate of the same selection: the mean per request."""
    return f"{counter_expr} / on() group_left() sum({rate(NET_DELAY + '_count', REQ, window)})"


def overview() -> dict:
    panels = [
        row("At a glance"),
        stat("Requests / s", "Finished requests per second, all statuses.",
             f"sum({rate('edgemeter_requests_total')})", "reqps"),
        stat("Error ratio", "Failed requests / finished requests.",
             f"sum({rate('edgemeter_request_errors_total')}) / sum({rate('edgemeter_requests_total')})",
             "percentunit"),
        stat("In flight", "Requests inside the proxy now.", f"sum(edgemeter_num_requests_running{{{REQ}}})", "short"),
        stat("TTFT p50", "Median time to first token as the client saw it (simulated network included).",
             quantile(0.5, TTFT), "s"),
        stat("Output tokens / s", "Generated tokens per second.",
             f"sum({rate('edgemeter_generation_tokens_total')})", "suffix: tok/s"),
        stat("Energy / token p50", "Median per-request (radio + on-device compute) joules per generated token.",
             quantile(0.5, EPT), "joule"),

        row("Traffic"),
        timeseries("Requests by status", "Finished requests per second by HTTP status (499: client went away).",
                   [target(f"sum by (status) ({rate('edgemeter_requests_total')})", "{{status}}")], "reqps",
                   w=8, stack=True),
        timeseries("Errors by cause", "Failed requests per second by cause (upstream_5xx, upstream_timeout, ...).",
                   [target(f"sum by (cause) ({rate('edgemeter_request_errors_total')})", "{{cause}}")], "reqps",
                   w=8, stack=True),
        timeseries("In flight and waiting",
                   "Requests inside the proxy, and requests queued for a slot of an in-process backend.",
                   [target(f"sum by (model, mode) (edgemeter_num_requests_running{{{REQ}}})",
                           "running {{model}} · {{mode}}"),
                    target(f"sum by (model) (edgemeter_num_requests_waiting{{{BACKEND}}})", "waiting {{model}}")],
                   "short", w=8),
        timeseries("Queue time", "Time a request waited for a backend slot (in-process backends).",
                   quantile_targets("edgemeter_request_queue_time_seconds"), "s", w=8),
        state_timeline("Backends ready", "1 when the model's backend has loaded; until then requests get 503.",
                       f"max by (model, backend) (edgemeter_backend_ready{{{BACKEND}}})", "{{model}} ({{backend}})",
                       [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                       [{"type": "value", "options": {"0": {"text": "loading", "index": 0},
                                                      "1": {"text": "ready", "index": 1}}}], w=16),

        row("Latency"),
        timeseries("Time to first token", "Request received to first token delivered to the client.",
                   quantile_targets(TTFT), "s"),
        timeseries("Backend TTFT vs delivered TTFT",
                   "Backend: request handed to the backend to first token produced. Delivered: what the client "
                   "saw, including queueing, proxying and the simulated network. The gap is the cost of the link.",
                   [target(quantile(q, h), f"{name} p{round(q * 100)}")
                    for h, name in ((BACKEND_TTFT, "backend"), (TTFT, "delivered")) for q in (0.5, 0.9)], "s"),
        timeseries("Inter-token latency", "Gap between delivered tokens, observed per token.",
                   quantile_targets("edgemeter_inter_token_latency_seconds"), "s", w=8),
        timeseries("Time per output token", "Per request: (end-to-end - TTFT) / (output tokens - 1).",
                   quantile_targets("edgemeter_request_time_per_output_token_seconds"), "s", w=8),
        timeseries("End-to-end latency", "Request received to last byte delivered.", quantile_targets(E2E), "s",
                   w=8),

        row("Tokens and bytes"),
        timeseries("Tokens / s in and out", "Prompt tokens processed (in) and tokens generated (out) per second.",
                   [target(f"sum by (model) ({rate('edgemeter_prompt_tokens_total')})", "in {{model}}"),
                    target(f"sum by (model) ({rate('edgemeter_generation_tokens_total')})", "out {{model}}")],
                   "suffix: tok/s", w=8),
        timeseries("Bytes up and down", "HTTP body bytes per second; up = client to proxy.",
                   [target(f"sum by (direction) ({rate('edgemeter_bytes_total')})", "{{direction}}")], "Bps", w=8),
        timeseries("Tokens per request (p50)", "Median prompt and generated tokens per request.",
                   [target(quantile(0.5, "edgemeter_request_prompt_tokens"), "prompt"),
                    target(quantile(0.5, "edgemeter_request_generation_tokens"), "generated")], "short", w=8),

        row("Deployment modes × network presets (over the dashboard's time range)"),
        bargauge("TTFT p50 by mode × network", "Median delivered time to first token.",
                 quantile(0.5, TTFT, "mode, network", "$__range"), BY_MODE_NET, "s"),
        bargauge("End-to-end p50 by mode × network", "Median request latency, first byte up to last byte down.",
                 quantile(0.5, E2E, "mode, network", "$__range"), BY_MODE_NET, "s"),
        bargauge("Energy per token p50 by mode × network",
                 "Median per-request (radio + on-device compute) joules per generated token. Local mode on a "
                 "remote backend spends neither, so it has no bar.",
                 quantile(0.5, EPT, "mode, network", "$__range"), BY_MODE_NET, "joule"),
        table("Mode × network summary", "One line per deployment mode and network preset.", [
            ("requests", f"sum by (mode, network) (increase(edgemeter_requests_total{{{REQ}}}[$__range]))", "short"),
            ("TTFT p50", quantile(0.5, TTFT, "mode, network", "$__range"), "s"),
            ("backend TTFT p50", quantile(0.5, BACKEND_TTFT, "mode, network", "$__range"), "s"),
            ("e2e p50", quantile(0.5, E2E, "mode, network", "$__range"), "s"),
            ("added network delay (mean)", mean(NET_DELAY, "mode, network", "$__range"), "s"),
            ("energy / token (mean)", mean(EPT, "mode, network", "$__range"), "joule"),
            ("radio J / request",
             f"sum by (mode, network) ({rate('edgemeter_request_radio_energy_joules_total', REQ, '$__range')}) / "
             f"sum by (mode, network) ({rate('edgemeter_requests_total', REQ, '$__range')})", "joule"),
        ]),
    ]
    return dashboard("edgemeter-overview", "Edgemeter · Overview",
                     "Requests, latency per token, throughput, and deployment modes compared.", panels)


def network_energy() -> dict:
    radio_j = "edgemeter_radio_energy_joules_total"
    radio_s = "edgemeter_radio_state_seconds_total"
    delay_part = "edgemeter_network_delay_component_seconds_total"
    panels = [
        row("Simulated network"),
        timeseries("Added network delay per request",
                   "Wall time the simulated network added to what the client saw (upload, plus what the last "
                   "chunk still waited at the end).", quantile_targets(NET_DELAY), "s", w=8),
        timeseries("Mean added delay by component",
                   "Mean seconds per request by cause: propagation, serialization, queueing, retransmission, "
                   "congestion window (slow_start), radio promotion and paging, connection handshake.",
                   [target(per_request(f"sum by (component) ({rate(delay_part)})"), "{{component}}")], "s",
                   w=8, stack=True),
        timeseries("Mean added delay by direction", "Mean seconds per request spent uplink and downlink.",
                   [target(per_request(f"sum by (direction) ({rate(delay_part)})"), "{{direction}}")], "s",
                   w=8, stack=True),
        bargauge("Delay split: direction × component",
                 "Mean seconds per request over the dashboard's time range.",
                 per_request(f"sum by (direction, component) ({rate(delay_part, REQ, '$__range')})", "$__range"),
                 "{{direction}} · {{component}}", "s", w=12),
        bargauge("Added delay p90 by mode × network", "90th percentile of the added network delay per request.",
                 quantile(0.9, NET_DELAY, "mode, network", "$__range"), BY_MODE_NET, "s", w=12),

        row("Radio (RRC state machine per simulated device)"),
        timeseries("Devices by RRC state", "Simulated devices in each radio state at each scrape.",
                   [target(f"sum by (state) (edgemeter_radio_devices{{{RADIO}}})", "{{state}}")], "short",
                   stack=True),
        state_timeline("RRC states over time", "Which states the radios of each network occupy (number of devices).",
                       f"sum by (network, state) (edgemeter_radio_devices{{{RADIO}}})", "{{network}} · {{state}}",
                       [{"color": "transparent", "value": None}, {"color": "blue", "value": 1},
                        {"color": "purple", "value": 5}], []),
        timeseries("Radio power by state",
                   "Joules per second spent in each state, all simulated devices together (promotion, active, "
                   "tails, idle).", [target(f"sum by (state) ({rate(radio_j, RADIO)})", "{{state}}")], "watt",
                   w=8, stack=True),
        timeseries("Time share by state", "Fraction of radio time spent in each state.",
                   [target(f"sum by (state) ({rate(radio_s, RADIO)}) / on() group_left() "
                           f"sum({rate(radio_s, RADIO)})", "{{state}}")], "percentunit", w=8, stack=True),
        timeseries("Promotions / s", "RRC promotions (idle or low-power to connected) per second.",
                   [target(f"sum by (network, radio) (rate(edgemeter_radio_promotions_total{{{RADIO}}}"
                           f"[$__rate_interval]))", "{{network}} ({{radio}})")], "ops", w=8),
        bargauge("Radio joules by state", "Energy spent in each state over the dashboard's time range.",
                 f"sum by (state) (increase({radio_j}{{{RADIO}}}[$__range]))", "{{state}}", "joule", w=12),
        bargauge("Radio joules by network", "Energy spent per network preset over the dashboard's time range.",
                 f"sum by (network, radio) (increase({radio_j}{{{RADIO}}}[$__range]))", "{{network}} ({{radio}})",
                 "joule", w=12),

        row("Energy"),
        timeseries("Radio vs compute power",
                   "Joules per second: radio energy attributed to requests (promotion, transfer, tail) and "
                   "on-device compute of in-process backends.",
                   [target(f"sum({rate('edgemeter_request_radio_energy_joules_total')})", "radio"),
                    target(f"sum({rate('edgemeter_compute_energy_joules_total')})", "compute")], "watt",
                   w=8, stack=True),
        timeseries("Compute power by model and method",
                   "On-device compute joules per second; method says measured (rapl, nvml) or estimated.",
                   [target(f"sum by (model, method) ({rate('edgemeter_compute_energy_joules_total')})",
                           "{{model}} ({{method}})")], "watt", w=8),
        timeseries("Energy per token", "Per request: (radio + on-device compute joules) / generated tokens.",
                   [*quantile_targets(EPT), target(mean(EPT), "mean")], "joule", w=8),
        bargauge("Energy per token (mean) by mode × network", "Mean over the dashboard's time range.",
                 mean(EPT, "mode, network", "$__range"), BY_MODE_NET, "joule", w=12),
        bargauge("Compute joules by model", "On-device compute energy over the dashboard's time range.",
                 f"sum by (model, method) (increase(edgemeter_compute_energy_joules_total{{{REQ}}}[$__range]))",
                 "{{model}} ({{method}})", "joule", w=12),
    ]
    return dashboard("edgemeter-network-energy", "Edgemeter · Network and energy",
                     "Simulated network delay, radio RRC states and energy, compute energy.", panels)


DASHBOARDS = {"edgemeter-overview.json": overview, "edgemeter-network-energy.json": network_energy}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = OUT / name, render(build)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/build_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
