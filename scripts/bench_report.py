#!/usr/bin/env python3
"""Turns criterion's results into a Markdown table and an SVG chart (no dependencies).

    cargo bench -p tower-webhook-benches -- --warm-up-time 1 --measurement-time 3
    python3 scripts/bench_report.py [TARGET_DIR] > table.md    # writes docs/overhead.svg

Each group is drawn on its own scale: the bars compare the functions of one group, measured in
the same run.
"""
import json
import os
import sys
from html import escape

GROUPS = [
    ("error_layer", ["bare", "layer", "tower_map_response", "forwarding"]),
    ("signature_1KiB", ["raw_hmac", "layer", "svix"]),
    ("signature_64KiB", ["raw_hmac", "layer", "svix"]),
    ("signature_1MiB", ["raw_hmac", "layer", "svix"]),
    ("circuit_breaker_closed", ["bare", "layer", "failsafe", "tower_resilience"]),
    ("circuit_breaker_contended", ["bare", "layer", "failsafe", "tower_resilience"]),
    ("bore_requests_keepalive", ["bore_cli_reference", "ours_address", "ours_service"]),
    ("bore_requests_fresh_connection", ["bore_cli_reference", "ours_address", "ours_service"]),
    ("start_to_url", ["bore_cli_reference_unverified", "ours_bore_unverified", "ours_bore_verified", "ours_localtunnel_verified"]),
]
OURS = {"layer", "ours_address", "ours_service", "ours_bore_unverified", "ours_bore_verified", "ours_localtunnel_verified"}


def estimate(root, group, function):
    path = os.path.join(root, "criterion", group, function, "new", "estimates.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    # Criterion's own "typical" figure, the one it prints: the slope of a linear fit when it
    # sampled linearly, else the mean. Nanoseconds per iteration.
    return (data.get("slope") or data["mean"])["point_estimate"]


def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CARGO_TARGET_DIR", "target")
    rows = []
    for group, functions in GROUPS:
        values = [(fn, estimate(root, group, fn)) for fn in functions]
        values = [(fn, v) for fn, v in values if v is not None]
        if values:
            rows.append((group, values))
    if not rows:
        sys.exit(f"no criterion results under {root}/criterion: run the benches first")

    print("| group | function | time per iteration | relative to the first |")
    print("|---|---|---|---|")
    for group, values in rows:
        base = values[0][1]
        for fn, v in values:
            print(f"| `{group}` | `{fn}` | {human(v)} | {v / base:.2f}x |")

    bar_h, gap, label_w, bar_w = 18, 6, 170, 420
    height = sum(30 + len(v) * (bar_h + gap) for _, v in rows) + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 120}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    y = 20
    for group, values in rows:
        out.append(f'<text x="4" y="{y}" font-weight="bold">{escape(group)} (time per iteration, shorter is better)</text>')
        y += 10
        top = max(v for _, v in values)
        for fn, v in values:
            w = max(1, bar_w * v / top)
            color = "#2b7bb9" if fn in OURS else "#9aa5b1"
            out.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end">{escape(fn)}</text>')
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}">{escape(human(v))}</text>')
            y += bar_h + gap
        y += 20
    out.append("</svg>")
    os.makedirs("docs", exist_ok=True)
    with open(os.path.join("docs", "overhead.svg"), "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
