"""Simulated devices: one ``proxy.link.Link`` (stage chains plus radio) per (device id, network).

Concurrent requests from one device share its link, so their bytes queue behind each
other, and its radio, so one request's transfer keeps the radio up for the next.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from proxy import metrics as m
from proxy.link import Link, presets_from_config


class Device:
    __slots__ = ("network", "link", "exported")

    def __init__(self, network: str, preset, seed: int):
        self.network = network
        self.link = Link(preset, seed)
        self.exported = {"promotions": 0}  # radio totals already added to the Prometheus counters

    def send(self, direction: str, t: float, nbytes: int, tally) -> float:
        """Offer ``nbytes`` at ``t``; record the delay and radio energy in ``tally`` (a meter.NetTally);
        return when the last byte arrives."""
        d = self.link.send(direction, t, nbytes, tally.charge)
        tally.record(direction, d.split)
        return d.at

    def export(self, now: float) -> None:
        """Bring the radio up to ``now`` and add what it spent since the last export to the counters."""
        radio, radio_name = self.link.radio, self.link.preset.radio
        radio.advance(now)
        for state, joules in radio.energy_j.items():
            seconds = radio.time_s[state]
            old_j, old_s = self.exported.get(state, (0.0, 0.0))
            if joules > old_j:
                m.RADIO_ENERGY.labels(self.network, radio_name, state).inc(joules - old_j)
            if seconds > old_s:
                m.RADIO_TIME.labels(self.network, radio_name, state).inc(seconds - old_s)
            self.exported[state] = (joules, seconds)
        if radio.promotions > self.exported["promotions"]:
            m.RADIO_PROMOTIONS.labels(self.network, radio_name).inc(radio.promotions - self.exported["promotions"])
            self.exported["promotions"] = radio.promotions


async def settle(charges) -> float:
    """Wait until every (device, RadioCharge) in ``charges`` is settled: its tail cut by a
    later transfer or run out. Returns the seconds waited (at most one radio tail when
    nothing else transmits: LTE 10.1 s, 3G 17 s). The device counters are brought up to
    date on the way, so /metrics agrees with what the waiter reports."""
    t0 = time.perf_counter()
    while pending := [(dev, c) for dev, c in charges if c.pending]:
        now = time.perf_counter()
        for dev, _ in pending:
            dev.export(now)
        ends = [dev.link.radio.quiet_at for dev, c in pending if c.pending]
        if ends:
            await asyncio.sleep(max(0.001, max(ends) - now))
    return time.perf_counter() - t0


class Devices:
    """Device links by (id, network); the least recently used is dropped past ``max_devices``."""

    def __init__(self, presets: dict, seed: int, max_devices: int):
        self.presets = presets
        self.seed = seed
        self.max_devices = max_devices
        self.devices: OrderedDict[tuple[str, str], Device] = OrderedDict()
        self.published: set[tuple[str, str, str]] = set()  # RADIO_DEVICES label sets ever set

    @classmethod
    def from_config(cls, config) -> "Devices":
        from .config import ConfigError
        try:
            presets = presets_from_config(config.networks)  # built-ins plus config.yaml's
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if config.defaults.network not in presets:
            raise ConfigError(f"defaults.network: unknown preset {config.defaults.network!r} "
                              f"(known: {', '.join(presets)})")
        return cls(presets, config.server.seed, config.server.max_devices)

    def get(self, device_id: str, network: str) -> Device:
        key = (device_id, network)
        dev = self.devices.get(key)
        if dev is None:
            # Each device draws its own randomness, so one device's traffic never shifts another's.
            dev = self.devices[key] = Device(network, self.presets[network], f"{self.seed}:{device_id}")
            if len(self.devices) > self.max_devices:
                _, dropped = self.devices.popitem(last=False)
                # Nothing transmits on it again: its pending tail runs out whole, so settle it now.
                if (end := dropped.link.radio.quiet_at) is not None:
                    dropped.export(end)
        else:
            self.devices.move_to_end(key)
        return dev

    def reset(self, device_id: str, now: float) -> dict:
        """Start the device over, as after a long idle spell: each of its links' pending radio tail
        runs out whole (charged to its request, as if nothing cut it: no real-time wait), the
        counters take it, and the link is dropped, so the next request finds an idle radio, a new
        connection (handshake) and a fresh congestion window."""
        out = {"device": device_id, "links": [], "tail_settled_j": 0.0}
        for key in [k for k in self.devices if k[0] == device_id]:
            dev = self.devices.pop(key)
            radio = dev.link.radio
            before = radio.non_idle_j
            dev.export(max(now, radio.quiet_at or now))
            out["links"].append(key[1])
            out["tail_settled_j"] += radio.non_idle_j - before
        return out

    def export(self, now: float) -> None:
        """Publish every radio's totals and how many devices sit in each state (on /metrics scrape)."""
        counts: dict[tuple[str, str, str], int] = {}
        for dev in self.devices.values():
            dev.export(now)
            key = (dev.network, dev.link.preset.radio, dev.link.radio.state)
            counts[key] = counts.get(key, 0) + 1
        # States no device is in any more go to 0 (clear() is not allowed in multiprocess mode).
        for labels in self.published - counts.keys():
            m.RADIO_DEVICES.labels(*labels).set(0)
        for labels, n in counts.items():
            m.RADIO_DEVICES.labels(*labels).set(n)
        self.published |= counts.keys()
