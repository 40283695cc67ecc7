"""Which backend serves a request, in which deployment mode, over which simulated device link.

Modes (config default, per-request override by header):
  local   model and tools on the device: nothing crosses the network, the radio stays idle.
  hybrid  model in the cloud, tools on the device: every call's request goes up the device
          link and every response chunk comes down it.
  cloud   model and tools in the cloud: a session (X-Edgemeter-Session) crosses the device
          link twice, the task going up (its first call's request) and the final answer
          coming down (POST /edgemeter/v1/sessions/{id}/end); calls in between stay in the
          datacenter. A cloud-mode call without a session header is a one-call session.

auto    a policy (proxy.policy, config.yaml's ``auto:``) picks local or hybrid per call, or
        local, hybrid or cloud once per session (``auto.scope`` or X-Edgemeter-Auto-Scope), and
        the request is routed as that mode; its record says what was chosen and why.

Placement: ``local`` needs the model on the device, ``hybrid`` and ``cloud`` need it in the
cloud. A model configured with ``device:`` and ``cloud:`` blocks is answered by the block the
mode needs, and a mode whose placement the model lacks is refused. A plain single-backend
block stands in for both placements, and everything it serves says so (``placement_emulated``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import backends
from backends import Backend

from proxy import metrics
from proxy import policy
from proxy.config import AUTO, MODE_PLACEMENT, MODES, PLACEMENTS, Config, ConfigError
from proxy.device import Device, Devices
from proxy.errors import APIError, bad_request
from proxy.radio import RadioCharge

H_MODE, H_NETWORK, H_DEVICE, H_SESSION = ("X-Edgemeter-Mode", "X-Edgemeter-Network", "X-Edgemeter-Device",
                                          "X-Edgemeter-Session")
H_TASK, H_AUTO_SCOPE = "X-Edgemeter-Task", "X-Edgemeter-Auto-Scope"
MAX_ID = 128


@dataclass
class Session:
    """An agent task attempt: its calls' totals, and in cloud mode the link its answer comes down."""
    id: str
    mode: str
    network: str
    device: Device | None
    last_seen: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.perf_counter)  # the task's first call arrived
    calls: int = 0
    uplinked: bool = False
    auto: policy.Decision | None = None  # auto mode, scope session: the decision every call follows
    totals: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "bytes_up": 0,
                                                  "bytes_down": 0, "net_delay_s": 0.0,
                                                  "compute_j": 0.0, "e2e_s": 0.0, "cloud_usd": 0.0,
                                                  "cloud_j": 0.0})
    charges: list = field(default_factory=list)  # (Device, RadioCharge) of each crossing of a device link

    def add(self, record: dict, charge: RadioCharge | None = None, device: Device | None = None) -> None:
        self.calls += 1
        self.last_seen = time.monotonic()
        t = self.totals
        for key in ("prompt_tokens", "completion_tokens", "bytes_up", "bytes_down", "compute_j", "e2e_s",
                    "cloud_usd", "cloud_j"):
            t[key] += record.get(key) or 0
        t["net_delay_s"] += record["net_delay_s"]["total"]
        if device is not None:
            self.charges.append((device, charge))

    def radio(self) -> dict:
        """Radio energy the session's transfers spent (``radio_j``), by part; a tail still
        running is only in ``radio_tail_provisional_j``, which is 0 once ``proxy.device.settle`` returns."""
        cs = [c for _, c in self.charges]
        return {"radio_j": sum(c.settled_j for c in cs), "radio_promotion_j": sum(c.promotion_j for c in cs),
                "radio_active_j": sum(c.active_j for c in cs), "radio_tail_j": sum(c.tail_j for c in cs),
                "radio_tail_provisional_j": sum(c.tail_provisional_j for c in cs)}


@dataclass(frozen=True)
class Served:
    """The backend that answers one placement of a model."""
    placement: str   # device | cloud: where the mode needs the model
    backend: Backend
    key: str         # its config block: "smollm2" (plain) or "smollm2.cloud"
    emulated: bool   # a plain single-backend block standing in for this placement
    host: str        # in-process | same-host | remote: where the backend really runs

    @property
    def record(self) -> dict:
        """What every request record and log line carries about it."""
        return {"placement": self.placement, "placement_emulated": self.emulated, "served_by": self.key,
                "served_host": self.host}


def _host(backend: Backend) -> str:
    if backend.in_process:
        return "in-process"
    host = urlsplit(getattr(backend, "base_url", "")).hostname or ""
    return "same-host" if host in ("localhost", "::1") or host.startswith("127.") else "remote"


def _create(name: str, settings: dict, key: str) -> Backend:
    try:
        return backends.create(name, settings)
    except ValueError as e:
        raise ConfigError(f"{key}.{e}") from None


def build_models(config: Config) -> dict[str, dict[str, Served]]:
    """Model name -> placement -> Served, from the checked config (see proxy.config._model_block)."""
    models = {}
    for name, block in config.models.items():
        if "backend" in block:
            backend = _create(name, {k: v for k, v in block.items() if k != "placement"}, f"models.{name}")
            if "placement" in block:  # pinned: this model exists only there
                served = [Served(block["placement"], backend, name, False, _host(backend))]
            else:  # a stand-in: one backend answers both placements, and says so
                served = [Served(p, backend, name, True, _host(backend)) for p in PLACEMENTS]
        else:
            served = [Served(p, b := _create(name, sub, f"models.{name}.{p}"), f"{name}.{p}", False, _host(b))
                      for p, sub in block.items()]
        models[name] = {s.placement: s for s in served}
    return models


def engines(models: dict[str, dict[str, Served]]) -> list[tuple[str, Served]]:
    """Each configured backend once (a stand-in serves two placements with one backend)."""
    seen = {}
    for name, placements in models.items():
        for s in placements.values():
            seen.setdefault(id(s.backend), (name, s))
    return list(seen.values())


@dataclass
class Route:
    model: str
    backend: Backend
    served: Served
    mode: str
    network: str
    device_id: str
    session: Session | None
    up: Device | None    # link the request crosses, or None
    down: Device | None  # link the response crosses, or None
    auto: dict | None = None  # auto mode: {"chosen", "policy", "reason", "scope"}, for the record

    @property
    def labels(self) -> tuple[str, str, str, str]:
        return self.model, self.backend.kind, self.mode, self.network


class Router:
    def __init__(self, config: Config, models: dict[str, dict[str, Served]], devices: Devices):
        self.config = config
        self.models = models
        self.devices = devices
        self.sessions: dict[str, Session] = {}

    def _header(self, headers, name: str, default: str, allowed=None) -> str:
        value = headers.get(name, default)
        if allowed is not None and value not in allowed:
            raise bad_request(f"header {name}: unknown value {value!r} (known: {', '.join(allowed)})", name)
        if not value or len(value) > MAX_ID or not value.isprintable():
            raise bad_request(f"header {name}: must be 1..{MAX_ID} printable characters", name)
        return value

    def route(self, headers, model: str, body: dict | None = None) -> Route:
        placements = self.models.get(model)
        if placements is None:
            raise APIError(404, f"The model '{model}' does not exist (known: {', '.join(self.models)})",
                           param="model", code="model_not_found")
        d = self.config.defaults
        mode = self._header(headers, H_MODE, d.mode, MODES + (AUTO,))
        network = self._header(headers, H_NETWORK, d.network, self.devices.presets)
        device_id = self._header(headers, H_DEVICE, d.device)
        session_id = headers.get(H_SESSION)
        if session_id is not None:
            session_id = self._header(headers, H_SESSION, "")
        # checked whatever the mode, as every header is: a bad value never passes unnoticed
        task = self._header(headers, H_TASK, "-") if H_TASK in headers else None
        scope = self._header(headers, H_AUTO_SCOPE, "call", policy.SCOPES) if H_AUTO_SCOPE in headers else None
        decision = None
        if mode == AUTO:
            decision = self._auto(scope, task, body or {}, model, network, device_id, session_id)
        routed = decision["chosen"] if decision else mode
        served = placements.get(MODE_PLACEMENT[routed])
        if served is None:  # never silently: another placement's backend would measure something else
            raise bad_request(f"model '{model}' has no {MODE_PLACEMENT[routed]} backend, which mode '{routed}' needs "
                              f"(its placements: {', '.join(placements)})", "model", "placement_unavailable")
        if not served.backend.ready:
            raise APIError(503, f"model '{model}' is still loading", type="server_error", code="not_ready")
        # per call, an auto session may cross the link on its next call even when this one stays on the device
        device = None if mode == "local" else self.devices.get(device_id, network)
        session = None
        if session_id is not None:
            session_mode = AUTO if decision and decision["scope"] == "call" else routed
            session = self._session(session_id, session_mode, network, device)
            if decision and decision["scope"] == "session" and session.auto is None:
                session.auto = policy.Decision(decision["chosen"], decision["policy"], decision["reason"])
        mode = routed
        if mode == "hybrid" or (mode == "cloud" and session is None):
            up = down = device
        elif mode == "cloud":
            up = None if session.uplinked else device  # only the task goes up; the answer comes at /end
            session.uplinked = True
            down = None
        else:
            up = down = None
        return Route(model, served.backend, served, mode, network, device_id, session, up, down, decision)

    def _auto(self, scope: str | None, task: str | None, body: dict, model: str, network: str, device_id: str,
              sid: str | None) -> dict:
        """The policy's decision for this request, or its session's when the session already has one."""
        pol = self.config.auto
        if pol is None:
            raise bad_request(f"header {H_MODE}: auto needs an auto: section (a policy) in the proxy's config "
                              "(see docs/auto.md)", H_MODE, "auto_not_configured")
        scope = (scope or pol.scope) if sid is not None else "call"  # without a session there is nothing to follow
        s = self.sessions.get(sid) if sid is not None else None
        f = policy.features(body, task)
        if scope == "session" and s is not None and s.auto is not None:
            decision = s.auto
        else:
            decision = pol.decide(f, self.state(device_id, network)).served(scope)
        metrics.AUTO_DECISIONS.labels(model, network, decision.policy, decision.chosen, decision.reason).inc()
        return {**decision.record(), "scope": scope, "prompt_tokens": f.prompt_tokens, "prompt_tokens_source": "chars/4"}

    def state(self, device_id: str, network: str) -> policy.DeviceState:
        """The device as a request finds it now: its preset's link, and whether a send would start no new
        promotion (its radio connected or promoting already, or a link without a radio)."""
        p = self.devices.presets[network]
        dev = self.devices.devices.get((device_id, network))  # looking does not create a link
        if p.radio == "none":
            connected = True
        elif dev is None:
            connected = False  # a radio never used is idle
        else:
            connected = dev.link.radio.connected(time.perf_counter())
        return policy.DeviceState(p.rtt_ms, p.up_mbps, p.down_mbps, p.loss, connected, self.config.auto.battery_pct,
                                  network)

    def _session(self, sid: str, mode: str, network: str, device: Device | None) -> Session:
        self._expire()
        s = self.sessions.get(sid)
        if s is None:
            if len(self.sessions) >= self.config.server.max_devices * 16:
                raise APIError(429, "too many open sessions; end some with POST /edgemeter/v1/sessions/{id}/end",
                               type="rate_limit_error", code="too_many_sessions")
            s = self.sessions[sid] = Session(sid, mode, network, device)
        return s

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.config.server.session_idle_s
        for sid in [k for k, s in self.sessions.items() if s.last_seen < cutoff]:
            del self.sessions[sid]

    def end_session(self, sid: str) -> Session:
        s = self.sessions.pop(sid, None)
        if s is None:
            raise APIError(404, f"no open session {sid!r}", param="session_id", code="session_not_found")
        return s
