"""What does one bench run say: the headline figures, the project's targets as PASS/FAIL, and the table.

The targets compare paths measured in the same run (ratios), so a machine that is slower or busier moves
every path alike; `background_cpu_pct` in the result says how busy it was.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

Check = tuple[float | None, Callable[[float, float], bool], float]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _stream_ratios(stream: dict[str, Any]) -> dict[str, float | None]:
    """gateway / nginx MiB/s for each stream scenario."""
    return {
        scenario: ratio(paths.get("gateway", {}).get("mib_per_s"), paths.get("nginx", {}).get("mib_per_s"))
        for scenario, paths in stream.items()
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and the project's targets, next to the raw results."""
    tp = result.get("throughput", {})
    rps = {name: t["rps_median"] for name, t in tp.items()}
    lat = result.get("latency", {})
    added: dict[str, Any] = {}
    for name in ("nginx", "gateway"):
        if name in lat and "direct" in lat:
            added[name] = {q: lat[name][f"{q}_ms"] - lat["direct"][f"{q}_ms"] for q in ("p50", "p99")}
    stream = result.get("stream", {})
    growth = {s: p["gateway"]["rss_mb"]["growth"] for s, p in stream.items() if "gateway" in p}
    rewrite = result.get("rewrite", {}).get("rps_median", {})
    run = result.get("gateway_run", {})
    conns = {name: c for name, c in result.get("conns", {}).items() if c.get("rounds")}
    summary: dict[str, Any] = {
        "rps": rps,
        "gateway_vs_nginx": ratio(rps.get("gateway"), rps.get("nginx")),
        "gateway_vs_direct": ratio(rps.get("gateway"), rps.get("direct")),
        "nginx_vs_direct": ratio(rps.get("nginx"), rps.get("direct")),
        "added_latency_ms": added,
        "stream_gateway_vs_nginx": _stream_ratios(stream),
        "stream_rss_growth_mb": growth,
        "steady_rss_mb": result.get("steady_rss_mb", {}).get("max"),
        "tokens_minted": result.get("burst", {}).get("tokens_minted"),
        "rewriting_vs_plain": ratio(rewrite.get("rewriting"), rewrite.get("plain")),
        "conns_1000_vs_50": {name: c["ratio_median"] for name, c in conns.items()},
        "conns_cpu_per_request_50_vs_1000": {name: c["cpu_ratio_median"] for name, c in conns.items()},
        "conns_opened_per_request_max": {name: c["opened_per_request_max"] for name, c in conns.items()},
        "conns_idle_kb_per_connection": {name: c["idle"]["kb_per_connection"] for name, c in conns.items()},
        "access_lines": run.get("stdout_lines", {}).get("access"),
        "metrics_scrapes": run.get("metrics_scrapes"),
    }
    checks = _checks(summary)
    summary["targets"] = {k: None if v is None else bool(op(v, limit)) for k, (v, op, limit) in checks.items()}
    return summary


def _checks(summary: dict[str, Any]) -> dict[str, Check]:
    gw_added = summary["added_latency_ms"].get("gateway", {})
    streams = summary["stream_gateway_vs_nginx"]
    checks: dict[str, Check] = {
        "added p50 <= 0.5 ms at 500 req/s": (gw_added.get("p50"), operator.le, 0.5),
        "added p99 <= 1.5 ms at 500 req/s": (gw_added.get("p99"), operator.le, 1.5),
    }
    for scenario, value in streams.items():
        if scenario.startswith("upload"):
            checks[f"{scenario} >= 0.9 x nginx"] = (value, operator.ge, 0.9)
        else:
            checks[f"{scenario} >= nginx"] = (value, operator.ge, 1.0)
    for scenario, growth in summary["stream_rss_growth_mb"].items():
        checks[f"{scenario} RSS growth <= 50 MB"] = (growth, operator.le, 50)
    checks.update(
        {
            "steady RSS <= 120 MB": (summary["steady_rss_mb"], operator.le, 120),
            "cold burst mints 1 token": (summary["tokens_minted"], operator.eq, 1),
            "URL rewriting >= 0.8 x without": (summary["rewriting_vs_plain"], operator.ge, 0.8),
            "1,000 callers >= 0.9 x 50 callers": (summary["conns_1000_vs_50"].get("gateway"), operator.ge, 0.9),
            "upstream reuse >= 99 % in every run": (
                summary["conns_opened_per_request_max"].get("gateway"),
                operator.le,
                0.01,
            ),
            "JSON access log on": (summary["access_lines"], operator.gt, 0),
            "metrics scraped while serving": (summary["metrics_scrapes"], operator.gt, 0),
        }
    )
    return checks


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(result: dict[str, Any], summary: dict[str, Any]) -> None:
    print("\npath      req/s (median)   p50@rate ms   p99@rate ms")
    for name in ("direct", "nginx", "gateway"):
        t = result.get("throughput", {}).get(name, {})
        lat = result.get("latency", {}).get(name, {})
        if t or lat:
            rps, p50, p99 = t.get("rps_median"), lat.get("p50_ms"), lat.get("p99_ms")
            print(f"{name:8} {fmt(rps, '15.0f')} {fmt(p50, '13.2f')} {fmt(p99, '13.2f')}")
    print(f"\ngateway/nginx throughput   {fmt(summary['gateway_vs_nginx'])}")
    print(f"gateway/direct throughput  {fmt(summary['gateway_vs_direct'])}")
    gw = summary["added_latency_ms"].get("gateway", {})
    print(f"added latency p50/p99 ms   {fmt(gw.get('p50'))} / {fmt(gw.get('p99'))}")
    for scenario, paths in result.get("stream", {}).items():
        line = "  ".join(f"{name} {r['mib_per_s']:6.0f}" for name, r in paths.items())
        growth = summary["stream_rss_growth_mb"].get(scenario)
        print(f"{scenario:13} MiB/s  {line}  gateway/nginx {fmt(summary['stream_gateway_vs_nginx'][scenario])}"
              f"  RSS growth {fmt(growth, '.1f')} MB")  # fmt: skip
    print(f"steady RSS under load MB   {fmt(summary['steady_rss_mb'], '.1f')}")
    print(f"tokens minted (cold burst) {fmt(summary['tokens_minted'], '.0f')}")
    print(f"URL rewriting on / off     {fmt(summary['rewriting_vs_plain'])}")
    print_conns(result.get("conns", {}))
    lines, scrapes = fmt(summary["access_lines"], ".0f"), fmt(summary["metrics_scrapes"], ".0f")
    print(f"access lines / scrapes     {lines} / {scrapes}")
    for target, ok in summary["targets"].items():
        print(f"  {'PASS' if ok else 'FAIL' if ok is False else 'n/a '}  {target}")


def print_conns(conns: dict[str, Any]) -> None:
    if not conns:
        return
    print("\n1,000 callers  req/s at 50 / 1,000   x    p99 ms   non-2xx  sock.err  opened/req (max)  KB/idle conn"
          "  CPU us/req at 50 / 1,000   x  load CPU idle %")  # fmt: skip
    for name, c in conns.items():
        rps, p99 = c["rps_median"], c["p99_ms_median"]
        cpu, idle = c["cpu_us_per_request_median"], c["load_cpu_idle_pct_median"]
        print(f"{name:8} {rps['50']:13.0f} / {rps['1000']:7.0f} {c['ratio_median']:5.2f} {p99['1000']:9.1f}"
              f" {c['non_2xx']:9d} {c['socket_errors']:9d} {c['opened_per_request_max']:17.4f}"
              f" {c['idle']['kb_per_connection']:13.1f} {cpu['50']:17.1f} / {cpu['1000']:5.1f}"
              f" {c['cpu_ratio_median']:5.2f}"
              f" {idle['50']:6.0f} / {idle['1000']:3.0f}")  # fmt: skip
