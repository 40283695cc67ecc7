"""Load profiles, with GuideLLM's names, one small module each.

A profile module says when requests are sent (``arrivals``: send times in seconds from the
start, without end) and which benchmarks one command runs (``benchmarks``: awaits the
``bench`` callback once per ``Spec``). The sweep has no schedule of its own: it runs the
others.
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator

PROFILES = ("synchronous", "concurrent", "throughput", "constant", "poisson", "sweep")


@dataclass
class Spec:
    """One benchmark: a profile, its rate (open loop) and its cap on requests in flight."""
    profile: str
    rate: float | None = None
    cap: int | None = None
    burstiness: float = 1.0

    @property
    def name(self) -> str:
        if self.profile in ("constant", "poisson"):
            return f"{self.profile}@{self.rate:.3g}/s" + (f" max{self.cap}" if self.cap else "")
        return self.profile if self.profile == "synchronous" else f"{self.profile}@{self.cap}"


def profile(name: str) -> ModuleType:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}")
    return importlib.import_module(f"harness.load.profiles.{name}")


def arrivals(name: str, rate: float | None = None, *, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """The send times of profile ``name``."""
    schedule = getattr(profile(name), "arrivals", None)
    if schedule is None:
        raise ValueError(f"profile {name!r} has no schedule of its own")
    return schedule(rate, burstiness=burstiness, seed=seed)


def at_once(rate: float | None = None, **_) -> Iterator[float]:
    """Closed-loop profiles send at once: the cap on requests in flight paces them."""
    return itertools.repeat(0.0)


def need_rate(name: str, rate: float | None) -> float:
    if not rate or rate <= 0:
        raise ValueError(f"profile {name} needs a rate > 0")
    return rate
