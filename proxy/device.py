"""Simulated devices: one link (proxy.link) and one radio (proxy.radio) per (device id, network).

Concurrent requests from one device share its link, so their bytes queue behind each
other, and its radio, so one request's transfer keeps the radio up for the next. The
same ``Device.send`` serves the live proxy and trace replay, so both cost traffic the
same way.
"""
from __future__ import annotations

from collections import OrderedDict

from .link import PRESETS, Link, presets_from_config
from .radio import RADIO_PROFILES, Radio


class Device:
    def __init__(self, network: str, preset, seed: int):
        self.network = network
        self.link = Link(preset, seed)
        self.radio_name = preset.radio
        self.radio = Radio(RADIO_PROFILES[preset.radio])

    def send(self, direction: str, t: float, nbytes: int, tally) -> float:
        """Offer ``nbytes`` at ``t`` in ``direction``; record delay and radio energy in ``tally``
        (a meter.NetTally); return when the last byte arrives."""
        promotion = self.radio.promotion_delay(t)  # an idle radio must connect before any byte moves
        d = self.link.send(direction, t + promotion, nbytes)
        start = max(t + promotion, d.at - d.split.serialization)
        up, down = (nbytes, 0) if direction == "up" else (0, nbytes)
        charge = self.radio.transfer(start, d.at, up, down)
        split = d.split.as_dict()
        split["promotion"] = promotion
        tally.record(direction, split, charge.total_j)
        return d.at


class Devices:
    """Device links by (id, network), least recently used dropped past ``max_devices``."""

    def __init__(self, presets: dict, seed: int, max_devices: int):
        self.presets = presets
        self.seed = seed
        self.max_devices = max_devices
        self.devices: OrderedDict[tuple[str, str], Device] = OrderedDict()

    @classmethod
    def from_config(cls, config) -> "Devices":
        presets = {**PRESETS, **presets_from_config(config.networks)}
        if config.defaults.network not in presets:
            from .config import ConfigError
            raise ConfigError(f"defaults.network: unknown preset {config.defaults.network!r} "
                              f"(known: {', '.join(presets)})")
        return cls(presets, config.server.seed, config.server.max_devices)

    def get(self, device_id: str, network: str) -> Device:
        key = (device_id, network)
        dev = self.devices.get(key)
        if dev is None:
            # Each device's randomness is its own, so one device's traffic never shifts another's.
            dev = Device(network, self.presets[network], hash((self.seed, device_id, network)) & 0xFFFFFFFF)
            self.devices[key] = dev
            if len(self.devices) > self.max_devices:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(key)
        return dev

    def export(self, now: float) -> None:
        """Bring every radio's totals up to ``now`` and publish them (called on /metrics scrape)."""
        from . import metrics as m
        counts: dict[tuple[str, str, str], int] = {}
        for dev in self.devices.values():
            dev.radio.advance(now)
            key = (dev.network, dev.radio_name, dev.radio.state)
            counts[key] = counts.get(key, 0) + 1
            dev.radio.export(m, dev.network, dev.radio_name)
        m.RADIO_DEVICES.clear()
        for (network, radio, state), n in counts.items():
            m.RADIO_DEVICES.labels(network, radio, state).set(n)
