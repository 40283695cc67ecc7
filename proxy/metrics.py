"""Prometheus metric definitions, named as vLLM/SGLang users expect, prefixed ``edgemeter_``.

Labels take only configured values (model, backend, mode, network, plus fixed
enums such as direction and component), so a client cannot create new series.
``placement`` (device | cloud) is where the mode needed the model, and
``placement_emulated`` is "true" when a single-backend model stood in for it.
Device and session ids never become labels.

Several proxy processes: set PROMETHEUS_MULTIPROC_DIR (an empty directory) before
start and /metrics aggregates every process (prometheus-client multiprocess mode).
"""
from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)
from prometheus_client import REGISTRY

REQ = ("model", "backend", "mode", "network", "placement", "placement_emulated")
ENGINE = ("model", "backend", "served_by")  # one configured backend block

# 1 ms .. 10 min: covers a local token (~10 ms) up to an agent call over a bad link.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                   0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)
ENERGY_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

REQUESTS = Counter("edgemeter_requests", "Finished requests by HTTP status.", REQ + ("status",))
ERRORS = Counter("edgemeter_request_errors", "Failed requests by cause.", REQ + ("cause",))
RUNNING = Gauge("edgemeter_num_requests_running", "Requests in flight in the proxy.", REQ,
                multiprocess_mode="livesum")
WAITING = Gauge("edgemeter_num_requests_waiting", "Requests waiting for a backend slot.", ENGINE,
                multiprocess_mode="livesum")
QUEUE_TIME = Histogram("edgemeter_request_queue_time_seconds", "Time waiting for a backend slot.", REQ,
                       buckets=LATENCY_BUCKETS)
TTFT = Histogram("edgemeter_time_to_first_token_seconds",
                 "Request received to first token delivered to the client (includes simulated network).",
                 REQ, buckets=LATENCY_BUCKETS)
BACKEND_TTFT = Histogram("edgemeter_backend_time_to_first_token_seconds",
                         "Request handed to the backend to first token produced (no simulated network).",
                         REQ, buckets=LATENCY_BUCKETS)
TTFAT = Histogram("edgemeter_time_to_first_answer_token_seconds",
                  "Request received to first answer token delivered: after the model's thinking "
                  "(reasoning_content), so equal to TTFT for a model that does not think.",
                  REQ, buckets=LATENCY_BUCKETS)
ITL = Histogram("edgemeter_inter_token_latency_seconds", "Gap between delivered tokens, observed per token.",
                REQ, buckets=LATENCY_BUCKETS)
TPOT = Histogram("edgemeter_request_time_per_output_token_seconds",
                 "Per request: (end-to-end - TTFT) / (output tokens - 1).", REQ, buckets=LATENCY_BUCKETS)
E2E = Histogram("edgemeter_e2e_request_latency_seconds", "Request received to last byte delivered.", REQ,
                buckets=LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("edgemeter_prompt_tokens", "Prompt tokens processed.", REQ)
GEN_TOKENS = Counter("edgemeter_generation_tokens", "Tokens generated.", REQ)
REASONING_TOKENS = Counter("edgemeter_reasoning_tokens", "Generated tokens spent thinking (part of generation "
                           "tokens).", REQ)
REQ_PROMPT_TOKENS = Histogram("edgemeter_request_prompt_tokens", "Prompt tokens per request.", REQ,
                              buckets=TOKEN_BUCKETS)
REQ_GEN_TOKENS = Histogram("edgemeter_request_generation_tokens", "Generated tokens per request.", REQ,
                           buckets=TOKEN_BUCKETS)
BYTES = Counter("edgemeter_bytes", "HTTP body bytes through the proxy (up = client to proxy).", REQ + ("direction",))
NET_DELAY = Histogram("edgemeter_network_delay_seconds", "Simulated network delay added per request.", REQ,
                      buckets=LATENCY_BUCKETS)
NET_DELAY_PART = Counter("edgemeter_network_delay_component_seconds",
                         "Simulated delay by component (propagation, serialization, queueing, retransmission, "
                         "promotion, slow_start, paging, handshake) and direction.", REQ + ("direction", "component"))
RADIO_ENERGY = Counter("edgemeter_radio_energy_joules", "Radio energy of simulated devices by RRC state.",
                       ("network", "radio", "state"))
RADIO_TIME = Counter("edgemeter_radio_state_seconds", "Time simulated radios spent in each RRC state.",
                     ("network", "radio", "state"))
RADIO_PROMOTIONS = Counter("edgemeter_radio_promotions", "RRC promotions (idle or low-power to connected).",
                           ("network", "radio"))
RADIO_DEVICES = Gauge("edgemeter_radio_devices", "Simulated devices by current RRC state.",
                      ("network", "radio", "state"), multiprocess_mode="livesum")
REQ_RADIO_ENERGY = Counter("edgemeter_request_radio_energy_joules",
                           "Radio energy attributed to requests (promotion, transfer and tail), "
                           "counted once spent: a tail when it runs out or the next transfer cuts it.", REQ)
COMPUTE_ENERGY = Counter("edgemeter_compute_energy_joules", "On-device compute energy of in-process backends.",
                         REQ + ("method",))
DEVICE_ENERGY = Counter("edgemeter_device_energy_joules",
                        "Device energy of ended sessions by component (baseline, compute, tools, radio): "
                        "one formula in every mode, see docs/energy.md.", ("mode", "network", "component"))
ENERGY_PER_TOKEN = Histogram("edgemeter_energy_per_token_joules",
                             "Per request: (radio + on-device compute joules) / generated tokens.", REQ,
                             buckets=ENERGY_BUCKETS)
AUTO_DECISIONS = Counter("edgemeter_auto_decisions",
                         "Requests in auto mode by the mode the policy chose and why (reason: a configured "
                         "rule's name, default, or the table cell).", ("model", "network", "policy", "chosen", "reason"))
BACKEND_READY = Gauge("edgemeter_backend_ready", "1 when the model's backend is loaded.", ENGINE,
                      multiprocess_mode="max")


def render() -> tuple[bytes, str]:
    """The /metrics body: this process, or every process in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
