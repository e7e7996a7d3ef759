#!/usr/bin/env python3
"""Markdown tables and a recall/QPS plot from one dataset's result files.

    python report.py --results RESULTS_DIR/<dataset> --out-md FILE.md --out-png FILE.png \
        [--target-recall 0.95] [--command TEXT]

Reads every *.json in the directory: the peers' (ann_peers.py) and ours (from vortex-bench),
which share one schema. Ours are the engines named "vortex" or "vortex-<variant>" (today
"vortex", the f32 graph walk, and "vortex-i8", the walk on i8 codes with an f32 re-rank);
every other engine is a peer. Each of ours gets its own ratios against the peers, never
against another of ours. Any subset of engines works; ratios appear once both sides are there.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on the benchmark hosts
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)

DASH = "—"
# One colour per engine whatever subset is present, so plots of different datasets compare;
# an engine not named here takes the next spare colour.
COLOURS = {
    "vortex": "tab:red",
    "vortex-i8": "tab:purple",
    "hnswlib": "tab:blue",
    "faiss": "tab:orange",
    "usearch": "tab:green",
}
SPARE_COLOURS = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
# Optional keys, written by vortex-bench only, shown as summary columns when any file has
# them: (key, header, cell text from the value and n), text columns apart from numbers as
# tables left-align a leading run of text. index_bytes is the exact size of the index's
# arrays, so per vector it does not depend on the allocator as the resident bytes/vector do.
TEXT_EXTRAS = [("simd_level", "SIMD", lambda value, n: value)]
NUMBER_EXTRAS = [
    ("index_bytes", "index bytes/vector", lambda value, n: f"{value / n:.1f}"),
    ("rerank_factor", "re-rank factor", lambda value, n: str(value)),
]


def is_ours(engine: str) -> bool:
    return engine == "vortex" or engine.startswith("vortex-")


def load(results_dir: Path):
    """The results, ours first then peers, each by name, and the recall key they share."""
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    if not results:
        sys.exit(f"no *.json results in {results_dir}")
    # Figures are only comparable on one dataset; a stray file from another is an error.
    datasets = {(r["dataset"], r["metric"], r["n"], r["dim"], r["queries"]) for r in results}
    if len(datasets) > 1:
        sys.exit(f"results from more than one dataset in {results_dir}: {sorted(datasets)}")
    # The recall key names its k (recall_at_10); all engines must have measured the same k.
    keys = {key for r in results for run in r["runs"] for key in run if re.fullmatch(r"recall_at_\d+", key)}
    if len(keys) != 1:
        sys.exit(f"expected one recall_at_K key across results, found {sorted(keys) or 'none'}")
    results.sort(key=lambda r: (not is_ours(r["engine"]), r["engine"]))
    for r in results:
        r["runs"].sort(key=lambda run: run["ef"])
    return results, keys.pop()


def qps_at_recall(runs, recall_key: str, target: float):
    """QPS at the target recall on one engine's curve, as (qps, bound) or None.

    bound is "=" when the target lies between two runs (linear interpolation in recall
    between the first bracketing pair, walking up in ef) and "≥" when the lowest ef already
    exceeds it: a smaller ef would be faster still, so its QPS is only a lower bound.
    None when no run reaches the target.
    """
    if runs[0][recall_key] >= target:
        return runs[0]["qps"], "≥"
    for lo, hi in zip(runs, runs[1:], strict=False):
        if lo[recall_key] < target <= hi[recall_key]:
            share = (target - lo[recall_key]) / (hi[recall_key] - lo[recall_key])
            return lo["qps"] + share * (hi["qps"] - lo["qps"]), "="
    return None


def fmt_int(x):
    return DASH if x is None else f"{x:,.0f}"


def fmt_float(x, digits):
    return DASH if x is None else f"{x:.{digits}f}"


def fmt_at_target(at):
    if at is None:
        return "not reached"
    qps, bound = at
    return f"{'≥ ' if bound == '≥' else ''}{qps:,.0f}"


def table(header, rows, text_columns=1):
    """A markdown table whose first text_columns columns are left-aligned, numbers right."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def ratio_line(what, num, den, note=""):
    return f"- {what}: **{num / den:.2f}**" + (f" {note}" if note else "")


def code_span(text: str) -> str:
    """text as inline markdown code, fenced by more backticks than any run inside it."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def qps_ratio_line(engine, ours_at, peers_at, target):
    """One of ours over the best peer at the target, keeping track of lower bounds.

    A "≥" figure is a lower bound, so the ratio is one too when only ours is ("≥"), an upper
    bound when only the peer's is ("≤"), and no bound at all when both are.
    """
    what = f"QPS at recall {target} ({engine} / best peer)"
    reached = {peer: at for peer, at in peers_at.items() if at is not None}
    if ours_at is None or not reached:
        why = f"{engine} does not reach the target" if ours_at is None else "no peer reaches the target"
        return f"- {what}: n/a ({why})"
    best = max(reached, key=lambda peer: reached[peer][0])
    ratio = ours_at[0] / reached[best][0]
    bounded = (ours_at[1] == "≥", reached[best][1] == "≥")
    prefix = {(False, False): "", (True, False): "≥ ", (False, True): "≤ ", (True, True): ""}[bounded]
    note = " (both are lower bounds: lower the smallest ef)" if all(bounded) else ""
    return f"- {what}: **{prefix}{ratio:.2f}** against {best}{note}"


def extra_cells(r, extras):
    """One result's cells for the optional columns: "—" where its file lacks the key or holds null."""
    return [DASH if r.get(key) is None else cell(r[key], r["n"]) for key, _, cell in extras]


def ratio_lines(ours, peers, at_target, target, hnswlib):
    """The ratio lines of one of ours against the peers."""
    engine = ours["engine"]
    fastest = min(peers, key=lambda r: r["build_seconds"])
    return [
        qps_ratio_line(engine, at_target[engine], {r["engine"]: at_target[r["engine"]] for r in peers}, target),
        ratio_line(
            f"build time ({engine} / fastest peer)",
            ours["build_seconds"],
            fastest["build_seconds"],
            f"against {fastest['engine']}",
        ),
        ratio_line(f"bytes/vector ({engine} / hnswlib)", ours["bytes_per_vector"], hnswlib["bytes_per_vector"])
        if hnswlib
        else f"- bytes/vector ({engine} / hnswlib): n/a (no hnswlib results)",
    ]


def markdown(results, recall_key: str, target: float, command: str | None) -> str:
    first = results[0]
    k = recall_key.removeprefix("recall_at_")
    out = [f"Command: {code_span(command)}", ""] if command else []
    out += [
        f"### {first['dataset']}: recall@{k} and QPS against peers",
        "",
        f"{first['metric']}, n = {first['n']:,}, dim = {first['dim']}, {first['queries']:,} queries; "
        f"{first['host']['cpu']} ({first['host']['cores']} cores), {first['date']}.",
        "",
    ]
    # Timings from different machines do not compare: say so rather than print a ratio silently.
    if len({(r["host"]["cpu"], r["host"]["cores"]) for r in results}) > 1:
        out += ["**Results come from different hosts** (see each file's host): the ratios below do not hold.", ""]
    # Build settings are the peers' fairness contract: say so when an engine differs.
    settings = {(r["m"], r["ef_construction"], r["build_threads"], r["search_threads"]) for r in results}
    if len(settings) == 1:
        m, efc, build_threads, search_threads = settings.pop()
        threads = f"{search_threads} thread" + ("s" if search_threads != 1 else "")
        out += [f"M = {m}, ef_construction = {efc}, {build_threads} build threads, searches on {threads}.", ""]
    else:
        out += ["**Build settings differ between engines** (see each file's m, ef_construction, threads).", ""]

    for ef in sorted({run["ef"] for r in results for run in r["runs"]}):
        rows = [
            [
                r["engine"],
                fmt_float(run[recall_key], 4),
                fmt_int(run["qps"]),
                fmt_float(run.get("latency_us_mean"), 1),
                fmt_float(run.get("latency_us_p99"), 1),
            ]
            for r in results
            for run in r["runs"]
            if run["ef"] == ef
        ]
        out += [f"#### ef = {ef}", ""]
        out += table(["engine", f"recall@{k}", "QPS", "mean µs", "p99 µs"], rows)
        out.append("")

    at_target = {r["engine"]: qps_at_recall(r["runs"], recall_key, target) for r in results}
    out += [f"#### Summary (target recall@{k} = {target})", ""]
    text_extras = [column for column in TEXT_EXTRAS if any(column[0] in r for r in results)]
    number_extras = [column for column in NUMBER_EXTRAS if any(column[0] in r for r in results)]
    out += table(
        ["engine", "version"]
        + [header for _, header, _ in text_extras]
        + ["build s", "bytes/vector"]
        + [header for _, header, _ in number_extras]
        + [f"QPS at recall {target}"],
        [
            [r["engine"], r["engine_version"]]
            + extra_cells(r, text_extras)
            + [fmt_float(r["build_seconds"], 2), fmt_float(r["bytes_per_vector"], 1)]
            + extra_cells(r, number_extras)
            + [fmt_at_target(at_target[r["engine"]])]
            for r in results
        ],
        text_columns=2 + len(text_extras),
    )
    out.append("")
    if any(at is not None and at[1] == "≥" for at in at_target.values()):
        out += ["“≥”: the lowest ef measured already exceeds the target, so the QPS there is a lower bound.", ""]

    ours = [r for r in results if is_ours(r["engine"])]
    peers = [r for r in results if not is_ours(r["engine"])]
    if not ours:
        out.append("No results of ours (vortex, vortex-*) yet: ratios appear once vortex-bench's files are here.")
    elif not peers:
        out.append("No peer results: no ratios.")
    else:
        hnswlib = next((r for r in peers if r["engine"] == "hnswlib"), None)
        for r in ours:
            out += ratio_lines(r, peers, at_target, target, hnswlib)
    return "\n".join(out) + "\n"


def plot(results, recall_key: str, target: float, path: Path):
    fig, ax = plt.subplots(figsize=(8, 5.5))
    spare = iter(SPARE_COLOURS)
    for r in results:
        ax.plot(
            [run[recall_key] for run in r["runs"]],
            [run["qps"] for run in r["runs"]],
            marker="o",
            # Past the spare colours, matplotlib's cycle.
            color=COLOURS.get(r["engine"]) or next(spare, None),
            linewidth=2.5 if is_ours(r["engine"]) else 1.5,
            label=f"{r['engine']} {r['engine_version']}",
        )
    ax.axvline(target, linestyle="--", color="grey", linewidth=1, label=f"target {target}")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{recall_key.removeprefix('recall_at_')}")
    ax.set_ylabel("queries per second")
    ax.set_title(f"{results[0]['dataset']}: recall vs QPS")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True, help="one dataset's results directory")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--command", help="the command that produced the results, recorded atop the markdown")
    args = p.parse_args()

    results, recall_key = load(args.results)
    args.out_md.write_text(markdown(results, recall_key, args.target_recall, args.command))
    plot(results, recall_key, args.target_recall, args.out_png)
    print(f"wrote {args.out_md} and {args.out_png}")


if __name__ == "__main__":
    main()
