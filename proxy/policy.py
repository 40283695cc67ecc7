"""``auto`` mode: a policy picks the deployment mode of a request (or of an agent session).

Two kinds, configured under ``auto:`` in config.yaml, both pure functions of small inputs
(``Features`` of the request, ``DeviceState`` of the simulated device) with no I/O:

  rules  an ordered list; the first rule whose every condition holds decides, else ``default``.
         Conditions compare a feature with a number (``prompt_tokens: "<= 50"``), test a flag
         (``tools: false``, ``radio_connected: true``) or name task classes (``task: [gsm8k]``).
  table  fitted from a sweep by ``python -m harness auto fit``: task class x network preset ->
         the mode that minimised the stated objective; a cell not in the table gets ``default``.

A decision is ``local`` or ``hybrid`` per call; ``cloud`` (model and tools in the cloud) only
for a whole session, so a per-call decision of ``cloud`` is served as ``hybrid`` (the same cloud
placement of the model) and says so in its reason.
"""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from pathlib import Path

CHOICES = ("local", "hybrid", "cloud")
SCOPES = ("call", "session")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
NUMERIC = ("prompt_tokens", "max_tokens", "rtt_ms", "up_mbps", "down_mbps", "loss", "battery_pct")
FLAGS = ("tools", "radio_connected")


@dataclass(frozen=True)
class Features:
    """What the request says about itself."""
    prompt_tokens: int          # estimated: see ``prompt_tokens_source``
    max_tokens: int | None      # None: the client set no limit
    tools: bool                 # the request offers tools
    task: str | None            # X-Edgemeter-Task


@dataclass(frozen=True)
class DeviceState:
    """The simulated device as the request finds it."""
    rtt_ms: float
    up_mbps: float
    down_mbps: float
    loss: float
    radio_connected: bool       # a send now pays no promotion (and extends a tail rather than starting one)
    battery_pct: float          # configured: auto.battery_pct
    network: str


@dataclass(frozen=True)
class Decision:
    chosen: str
    policy: str                 # rules | table
    reason: str                 # a rule's name, "default", or the table cell; bounded by the config

    def served(self, scope: str) -> "Decision":
        """Per call, ``cloud`` cannot move the agent's tools: the model's cloud placement (hybrid) serves."""
        if scope == "call" and self.chosen == "cloud":
            return Decision("hybrid", self.policy, self.reason + ":cloud_needs_session")
        return self

    def record(self) -> dict:
        return {"chosen": self.chosen, "policy": self.policy, "reason": self.reason}


def estimate_tokens(body: dict) -> int:
    """Prompt tokens as characters / 4 (OpenAI's rule of thumb for English text): exact counts
    need the backend's tokenizer, which an upstream may not have, and a routing rule needs only
    the order of magnitude."""
    if "messages" in body:
        chars = 0
        for m in body["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):  # content parts: count their text
                chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    else:
        prompt = body.get("prompt", "")
        chars = len(prompt) if isinstance(prompt, str) else sum(len(p) for p in prompt if isinstance(p, str))
    return (chars + 3) // 4


def features(body: dict, task: str | None) -> Features:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return Features(estimate_tokens(body), limit if isinstance(limit, int) else None, bool(body.get("tools")), task)


# --- rules ---

@dataclass(frozen=True)
class Condition:
    key: str
    op: str | None    # numeric comparison, or None for a flag / task list
    value: object

    def holds(self, f: Features, d: DeviceState) -> bool:
        if self.key == "task":
            return f.task in self.value
        actual = getattr(f, self.key) if hasattr(f, self.key) else getattr(d, self.key)
        if self.op is None:
            return actual == self.value
        return actual is not None and OPS[self.op](actual, self.value)


@dataclass(frozen=True)
class Rule:
    name: str
    when: tuple[Condition, ...]
    mode: str


def _condition(key: str, value, path: str) -> Condition:
    if key == "task":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: must be a task class or a list of them")
        return Condition(key, None, tuple(names))
    if key in FLAGS:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: must be true or false")
        return Condition(key, None, value)
    if key in NUMERIC:
        op, _, num = str(value).strip().partition(" ")
        try:
            if op not in OPS:
                raise ValueError
            number = float(num)
        except ValueError:
            raise ValueError(f"{path}: must be a comparison such as \"<= 50\" (one of {' '.join(OPS)}), "
                             f"got {value!r}") from None
        return Condition(key, op, number)
    raise ValueError(f"{path}: unknown condition (known: task, {', '.join(FLAGS + NUMERIC)})")


def parse_rules(rules, path: str) -> tuple[Rule, ...]:
    if not isinstance(rules, list):
        raise ValueError(f"{path}: must be a list of {{name, when, mode}}")
    out, names = [], set()
    for i, r in enumerate(rules):
        p = f"{path}[{i}]"
        if not isinstance(r, dict) or set(r) - {"name", "when", "mode"} or "mode" not in r:
            raise ValueError(f"{p}: must be a mapping with keys name, when, mode")
        name = str(r.get("name") or f"rule{i + 1}")
        if name in names or name == "default":
            raise ValueError(f"{p}.name: {name!r} is taken")
        names.add(name)
        if r["mode"] not in CHOICES:
            raise ValueError(f"{p}.mode: must be one of {', '.join(CHOICES)}, got {r['mode']!r}")
        when = r.get("when") or {}
        if not isinstance(when, dict):
            raise ValueError(f"{p}.when: must be a mapping of condition to value")
        out.append(Rule(name, tuple(_condition(k, v, f"{p}.when.{k}") for k, v in when.items()), r["mode"]))
    return tuple(out)


def decide_rules(rules: tuple[Rule, ...], default: str, f: Features, d: DeviceState) -> Decision:
    for rule in rules:
        if all(c.holds(f, d) for c in rule.when):
            return Decision(rule.mode, "rules", rule.name)
    return Decision(default, "rules", "default")


# --- table ---

def load_table(path: str | Path) -> dict:
    """A ``harness auto fit`` file: {"table": {task: {network: {"mode": ..., ...}}}, ...}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read policy table {path}: {e}") from None
    table = data.get("table") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: not a policy table (no 'table' mapping)")
    for task, nets in table.items():
        for net, cell in (nets or {}).items():
            if not isinstance(cell, dict) or cell.get("mode") not in CHOICES:
                raise ValueError(f"{path}: table.{task}.{net}.mode must be one of {', '.join(CHOICES)}")
    return data


def decide_table(table: dict, default: str, f: Features, d: DeviceState) -> Decision:
    cell = (table.get(f.task or "") or {}).get(d.network)
    if cell is None:
        return Decision(default, "table", "default")
    return Decision(cell["mode"], "table", "cell")


# --- configured ---

@dataclass(frozen=True)
class Policy:
    kind: str                     # rules | table
    default: str
    scope: str                    # call | session: how often it decides within an agent session
    battery_pct: float
    rules: tuple[Rule, ...] = ()
    table: dict | None = None

    def decide(self, f: Features, d: DeviceState) -> Decision:
        if self.kind == "table":
            return decide_table(self.table["table"], self.default, f, d)
        return decide_rules(self.rules, self.default, f, d)


def from_config(cfg: dict | None, base_dir: str | Path = ".") -> Policy | None:
    """The ``auto:`` section; None when there is none (``auto`` mode then refuses requests).
    Raises ValueError("auto.key: what is wrong")."""
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        raise ValueError("auto: must be a mapping")
    known = {"policy", "default", "scope", "battery_pct", "rules", "table"}
    for key in cfg:
        if key not in known:
            raise ValueError(f"auto.{key}: unknown key (known: {', '.join(sorted(known))})")
    kind = cfg.get("policy", "rules")
    if kind not in ("rules", "table"):
        raise ValueError(f"auto.policy: must be rules or table, got {kind!r}")
    default = cfg.get("default", "hybrid")
    if default not in CHOICES:
        raise ValueError(f"auto.default: must be one of {', '.join(CHOICES)}, got {default!r}")
    scope = cfg.get("scope", "call")
    if scope not in SCOPES:
        raise ValueError(f"auto.scope: must be call or session, got {scope!r}")
    battery = cfg.get("battery_pct", 100.0)
    if isinstance(battery, bool) or not isinstance(battery, (int, float)) or not 0 <= battery <= 100:
        raise ValueError(f"auto.battery_pct: must be a number in 0..100, got {battery!r}")
    if kind == "table":
        if "table" not in cfg:
            raise ValueError("auto.table: policy: table needs the path of a `python -m harness auto fit` file")
        path = Path(base_dir) / cfg["table"]
        try:
            table = load_table(path)
        except ValueError as e:
            raise ValueError(f"auto.table: {e}") from None
        return Policy("table", default, scope, float(battery), table=table)
    return Policy("rules", default, scope, float(battery), rules=parse_rules(cfg.get("rules") or [], "auto.rules"))
