"""Does the simulated link deliver what its presets promise?

    python -m harness bench link [--chunks 20000] [--presets 4g,wifi] [--seed 0] [--no-realtime]

Virtual clock, per preset (the link does not care whose clock it is):
  delay    sparse 200 B chunks (2 s apart) on the preset without loss or radio: mean and
           sd of one-way delay minus the known serialization time, vs rtt/2 and
           jitter/sqrt(2). Target: error <= max(1 ms, 2%). With jitter the standard
           error of the mean is sd/sqrt(chunks): 0.5 ms for poor_cellular at 20000.
  rate     a bulk download of 2000 x 16 KB chunks offered at once: wire bytes over the
           time the second half took to arrive (slow start is over by then), vs the
           configured rate. Target: error <= 3%.
  loss     4 KB chunks (3 segments) 0.5 s apart on the full preset: lost segments / sent.
  us/send  cost of one ``send`` with the full preset (radio included), SSE-sized chunks.
A second table prices one typical streamed chat request per preset, from a cold radio:
2 KB up, 0.5 s to the first token, then 200 frames of 150 B every 20 ms; what the link
added to first-frame and last-frame arrival, and the radio energy charged to it.
Real time: one preset driven by asyncio: a request goes up, then a frame every 5 ms
comes down, each released with ``asyncio.sleep`` at its scheduled arrival; lateness =
actual release - scheduled. Frames 5 ms apart with tens of ms of jitter often wait for
a slower one ahead of them (in-order delivery), so the scheduled mean exceeds rtt/2.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from dataclasses import replace

from proxy.link import PRESETS, Link, Loss, NetworkPreset, wire_bytes
from proxy.radio import RadioCharge


def _clean(p: NetworkPreset) -> NetworkPreset:
    return replace(p, loss=0.0, loss_model="bernoulli", gemodel=None, radio="none")


def measure_delay(p: NetworkPreset, n: int, seed: int) -> tuple[float, float]:
    link, size = Link(_clean(p), seed), 200
    ser = wire_bytes(size) * 8 / (p.down_mbps * 1e6)
    delays = [link.send("down", i * 2.0, size).at - i * 2.0 - ser for i in range(n)]
    return statistics.fmean(delays), statistics.pstdev(delays)


def measure_rate(p: NetworkPreset, n: int, seed: int) -> float:
    link, size = Link(_clean(p), seed), 16_384
    arrivals = [link.send("down", 0.0, size).at for _ in range(n)]
    half = n // 2
    return (n - 1 - half) * wire_bytes(size) * 8 / (arrivals[-1] - arrivals[half]) / 1e6


def measure_loss(p: NetworkPreset, n: int, seed: int) -> float:
    link = Link(replace(p, radio="none"), seed)
    for i in range(n):
        link.send("down", i * 0.5, 4096)
    stage = next((s for s in link.down if isinstance(s, Loss)), None)
    return stage.lost / stage.segments if stage else 0.0


def measure_cost(p: NetworkPreset, n: int, seed: int) -> float:
    send = Link(p, seed).send
    t0 = time.perf_counter()
    for i in range(n):
        send("down", i * 0.02, 120)
    return (time.perf_counter() - t0) / n * 1e6


def _within(err: float, ref: float, floor: float, rel: float) -> bool:
    return abs(err) <= max(floor, rel * ref)


def virtual_table(names: list[str], n: int, seed: int) -> list[str]:
    rows = ["| preset | one-way cfg ms | achieved ms | sd cfg ms | achieved sd ms | down cfg Mbps | achieved Mbps "
            "| loss cfg % | achieved % | µs/send | targets |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        p = PRESETS[name]
        cfg_delay, cfg_sd = p.rtt_ms / 2, p.jitter_ms / math.sqrt(2)
        mean, sd = (round(v * 1000, 2) + 0.0 for v in measure_delay(p, n, seed))  # no "-0.00"
        rate = measure_rate(p, 2000, seed)
        loss = measure_loss(p, n, seed)
        cost = measure_cost(p, 50_000, seed)
        ok = _within(mean - cfg_delay, cfg_delay, 1.0, 0.02) and _within(rate - p.down_mbps, p.down_mbps, 0, 0.03)
        rows.append(f"| {name} | {cfg_delay:.2f} | {mean:.2f} | {cfg_sd:.2f} | {sd:.2f} | {p.down_mbps:g} | "
                    f"{rate:.2f} | {p.loss * 100:.2f} | {loss * 100:.2f} | {cost:.1f} | {'ok' if ok else 'MISSED'} |")
    return rows


def request_cost(p: NetworkPreset, seed: int) -> tuple[float, float, RadioCharge]:
    link, charge = Link(p, seed), RadioCharge()
    up = link.send("up", 0.0, 2048, charge).at
    frames = [link.send("down", up + 0.5 + i * 0.02, 150, charge).at for i in range(200)]
    link.radio.advance(frames[-1] + 60.0)  # let the tail run out so it is settled
    return frames[0] - 0.5, frames[-1] - (0.5 + 199 * 0.02), charge


def request_table(names: list[str], seed: int) -> list[str]:
    rows = ["| preset | radio | added to first frame ms | added to last frame ms | promotion J | active J "
            "| tail J | radio J |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        p = PRESETS[name]
        first, last, c = request_cost(p, seed)
        rows.append(f"| {name} | {p.radio} | {first * 1e3:.1f} | {last * 1e3:.1f} | {c.promotion_j:.3f} | "
                    f"{c.active_j:.3f} | {c.tail_j:.3f} | {c.settled_j:.3f} |")
    return rows


async def realtime(name: str, frames: int, seed: int) -> dict[str, float]:
    """A request goes up (waking the radio), then frames produced every 5 ms come down
    and are released on the event loop at their scheduled arrival."""
    link = Link(PRESETS[name], seed)
    queue: asyncio.Queue = asyncio.Queue()
    t = time.perf_counter()
    await asyncio.sleep(link.send("up", t, 2000).at - t)

    async def produce():
        for _ in range(frames):
            t = time.perf_counter()
            await queue.put((t, link.send("down", t, 150).at))
            await asyncio.sleep(0.005)
        await queue.put(None)

    late, delay, scheduled = [], [], []
    producer = asyncio.create_task(produce())
    while (item := await queue.get()) is not None:
        sent, at = item
        wait = at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.perf_counter()
        late.append(now - at)
        delay.append(now - sent)
        scheduled.append(at - sent)
    await producer
    late.sort()
    return {"frames": frames, "late_mean_ms": statistics.fmean(late) * 1e3,
            "late_p99_ms": late[int(0.99 * (len(late) - 1))] * 1e3, "late_max_ms": late[-1] * 1e3,
            "scheduled_ms": statistics.fmean(scheduled) * 1e3, "achieved_ms": statistics.fmean(delay) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness bench link", description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20_000, help="chunks for the delay and loss measurements")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated built-in presets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--realtime", default="4g", help="preset for the real-time pass")
    ap.add_argument("--frames", type=int, default=300, help="frames in the real-time pass")
    ap.add_argument("--no-realtime", action="store_true")
    a = ap.parse_args(argv)
    names = [s for s in a.presets.split(",") if s]
    unknown = [s for s in names if s not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s): {', '.join(unknown)}")
    print("\n".join(virtual_table(names, a.chunks, a.seed)))
    print()
    print("\n".join(request_table(names, a.seed)))
    if not a.no_realtime:
        r = asyncio.run(realtime(a.realtime, a.frames, a.seed))
        print(f"\nReal time ({a.realtime}, request up then {r['frames']} frames down 5 ms apart, asyncio.sleep to "
              f"each arrival): "
              f"one-way delay scheduled {r['scheduled_ms']:.2f} ms, achieved {r['achieved_ms']:.2f} ms; "
              f"release lateness mean {r['late_mean_ms']:.3f} ms, p99 {r['late_p99_ms']:.3f} ms, "
              f"max {r['late_max_ms']:.3f} ms")
    return 0
