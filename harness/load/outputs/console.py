"""The console report: per benchmark a headline and a table of latency statistics; with
several benchmarks, a summary table, one row each."""
from __future__ import annotations

METRICS = ("ttft", "tpot", "itl", "e2el")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table, readable as plain text too."""
    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def render(benchmarks: list[dict], percentiles) -> str:
    p = [f"p{q:g}" for q in percentiles]
    parts = []
    for b in benchmarks:
        head = (f"== {b['name']}: {b['completed']} completed, {b['failed']} failed in {b['duration']:.2f} s; "
                f"{cell(b['request_throughput'])} req/s, {cell(b['output_throughput'])} output tok/s, "
                f"{cell(b['total_token_throughput'])} total tok/s"
                + (f"; goodput {cell(b['request_goodput'])} req/s" if b.get("request_goodput") is not None else "")
                + (f" ({cell(b['slo_attainment_pct'])} % met every SLO)" if b.get("slo_attainment_pct") is not None
                   else ""))
        if b.get("radio_j_per_request") is not None:
            head += (f"\n   device energy: radio {cell(b['radio_j_per_request'])} J + compute "
                     f"{cell(b['compute_j_per_request'])} J per request; {cell(b['energy_j_per_output_token'])} J "
                     f"per output token")
        rows = [[m.upper(), *(b[f"{s}_{m}_ms"] for s in ("mean", "median", "std", *p))] for m in METRICS]
        parts += [head, table(["ms", "mean", "median", "std", *p], rows)]
        parts += [f"   error x{n}: {e}" for e, n in b["errors"].items()]
    if len(benchmarks) > 1:
        top = p[-1]
        parts += ["== summary", table(
            ["benchmark", "req/s", "out tok/s", "TTFT mean", f"TTFT {top}", "TPOT mean", f"TPOT {top}",
             "ITL mean", f"ITL {top}", "E2EL mean", f"E2EL {top}", "goodput", "failed"],
            [[b["name"], b["request_throughput"], b["output_throughput"], b["mean_ttft_ms"], b[f"{top}_ttft_ms"],
              b["mean_tpot_ms"], b[f"{top}_tpot_ms"], b["mean_itl_ms"], b[f"{top}_itl_ms"], b["mean_e2el_ms"],
              b[f"{top}_e2el_ms"], b["request_goodput"], b["failed"]] for b in benchmarks])]
    return "\n".join(parts)
