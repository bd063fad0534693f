#!/usr/bin/env python3
"""Markdown table of the opc-loadgen bench JSON reports in a folder."""
import json, pathlib, statistics, sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
cols = [
    ("mode", "{}"), ("change_rate", "{}"),
    ("devices", "{:.0f}"), ("tags", "{:.0f}"), ("batch_interval_s", "{}"),
    ("points_per_s", "{:.0f}"), ("samples_read_per_s", "{:.0f}"), ("reads_per_s", "{:.1f}"),
    ("collector_cpu_percent_of_one_core", "{:.1f}"),
    ("collector_cpu_s_per_million_points", "{:.2f}"),
    ("collector_cpu_us_per_session_per_s", "{:.3f}"), ("collector_to_simulator_cpu", "{:.2f}"),
    ("collector_peak_rss_mib", "{:.0f}"), ("collector_rss_per_session_kib", "{:.0f}"),
    ("lateness_p50_ms", "{}"), ("lateness_p99_ms", "{}"), ("read_p99_ms", "{}"),
    ("sample_to_ack_p99_ms", "{}"), ("records_lost", "{}"),
    ("simulator_cpu_percent", "{:.0f}"), ("connect_s", "{:.0f}"),
    ("samples_delivered_per_s", "{:.0f}"), ("samples_per_record", "{:.1f}"),
    ("bytes_from_clients_per_s", "{:.0f}"), ("bytes_to_clients_per_s", "{:.0f}"),
    ("wire_bytes_per_point", "{:.1f}"),
]
print("| run | " + " | ".join(c for c, _ in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
def fix(r):
    # CPU per point over the points read in the window (steady; deliveries
    # come in batch-interval steps), as opc-loadgen bench reports it now
    # (reports with samples_delivered count them on the topic already).
    # Reports from before these two fields: computed the same way.
    if "collector_cpu_us_per_session_per_s" not in r and r.get("window_s") and r.get("devices"):
        r["collector_cpu_us_per_session_per_s"] = r["collector_cpu_s"] * 1e6 / r["window_s"] / r["devices"]
    if "collector_to_simulator_cpu" not in r and r.get("simulator_cpu_s"):
        r["collector_to_simulator_cpu"] = r["collector_cpu_s"] / r["simulator_cpu_s"]
    if "samples_delivered" in r:
        return
    pts = r.get("samples_read_per_s", 0) * r.get("window_s", 0)
    if pts:
        r["collector_cpu_s_per_million_points"] = r["collector_cpu_s"] * 1e6 / pts


for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    fix(r)
    cells = []
    for c, fmt in cols:
        v = r.get(c)
        cells.append("-" if v is None else fmt.format(v))
    print(f"| {f.stem} | " + " | ".join(cells) + " |")
for prefix in ("ref-", "ref1s-", "subs-poll-", "subs-10pct-", "subs-100pct-"):
    runs = [json.loads(f.read_text()) for f in sorted(out.glob(prefix + "*.json"))]
    for r in runs:
        fix(r)
    if len(runs) < 2:
        continue
    print(f"\nmedian of {len(runs)} {prefix.rstrip('-')} runs:")
    for c, fmt in cols:
        vals = [r[c] for r in runs if r.get(c) is not None]
        if vals and all(isinstance(v, (int, float)) for v in vals):
            print(f"  {c}: {fmt.format(statistics.median(vals))}  (runs: {', '.join(fmt.format(v) for v in vals)})")
