"""The study's report: a table per cell and per combination, the Pareto frontiers, the module-wise
table and the trade-off plots, written to ``studies/NAME/`` (study.py; ``--report_only`` rebuilds it).

Each finished cell leaves one row (``study_result.json`` in its experiment folder); ``build_report``
reads the rows, averages them over seeds and writes ``results.csv``, ``results.json``, ``report.md``
and the PNG plots. Accuracy is the paper's 7-set total where every cell has the ten benchmark sets,
else the sample-weighted total over the evaluation sets the study used.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from fileio import atomic_write
from model import STAGES

# Numbers a cell's row carries (besides its per-set accuracies), in the table's order.
COST_COLUMNS = ("params_m", "gflops", "gflops_reference", "latency_ms", "throughput_ips", "infer_mem_mb",
                "train_mem_mb")
ACCURACY_COLUMNS = ("paper_total_accuracy", "total_accuracy")
COLUMN_TITLES = {"params_m": "params (M)", "gflops": "GFLOPs", "gflops_reference": "GFLOPs (paper's count)", "latency_ms": "ms/image",
                 "throughput_ips": "images/s", "infer_mem_mb": "inference MB", "train_mem_mb": "training MB",
                 "paper_total_accuracy": "total (paper's 7)", "total_accuracy": "total"}
# The frontiers the paper draws: accuracy against time (T1..Tk) and against parameters (P1..Pk).
FRONTIERS = {"T": "latency_ms", "P": "params_m"}
PLOTS = {"latency_ms": ("accuracy_vs_time.png", "ms per image (batch 1, log scale)", True),
         "params_m": ("accuracy_vs_params.png", "parameters (millions)", False),
         "gflops": ("accuracy_vs_gflops.png", "GFLOPs per image", False)}


@dataclass
class Combination:
    """One combination's rows (one per seed) and their mean and standard deviation per number."""

    name: str
    rows: list[dict]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.name.split("-"))


def numbers_of(row: dict) -> dict[str, float]:
    """The row's numbers, flat: costs, totals and ``acc:<set>`` per evaluation set."""
    values = {k: row.get(k) for k in (*COST_COLUMNS, *ACCURACY_COLUMNS)}
    values.update({f"acc:{name}": acc for name, acc in (row.get("accuracy") or {}).items()})
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def combine(rows: list[dict]) -> list[Combination]:
    """Rows grouped by combination (in the order first seen), with mean and sample std over seeds."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["combination"], []).append(row)
    combos = []
    for name, members in groups.items():
        combo = Combination(name, members)
        numbers = [numbers_of(r) for r in members]
        for key in sorted(set().union(*numbers)):
            values = [n[key] for n in numbers if key in n]
            combo.mean[key] = statistics.fmean(values)
            combo.std[key] = statistics.stdev(values) if len(values) > 1 else 0.0
        combos.append(combo)
    return combos


def accuracy_key(combos: list[Combination]) -> str | None:
    """The accuracy the frontiers use: the paper's 7-set total when every combination has it."""
    for key in ACCURACY_COLUMNS:
        if combos and all(key in c.mean for c in combos):
            return key
    return None


def pareto_frontier(combos: list[Combination], cost: str, accuracy: str) -> list[Combination]:
    """The combinations no other beats on both axes, cheapest first: each is more accurate than every
    cheaper one (the paper's T1..Tk, P1..Pk)."""
    ranked = sorted((c for c in combos if cost in c.mean and accuracy in c.mean),
                    key=lambda c: (c.mean[cost], -c.mean[accuracy]))
    frontier, best = [], -math.inf
    for combo in ranked:
        if combo.mean[accuracy] > best:
            frontier.append(combo)
            best = combo.mean[accuracy]
    return frontier


def module_wise(combos: list[Combination], accuracy: str | None) -> list[dict]:
    """For each stage and each switch of it (``None → TPS``), the mean change in accuracy, time and
    parameters over every pair of combinations that differ in that stage only."""
    by_stages = {c.stages: c for c in combos}
    table = []
    for index, stage in enumerate(STAGES):
        options = list(dict.fromkeys(s[index] for s in by_stages))
        order = list(STAGES[stage])  # the registry's order; a stage of a plugin not loaded here goes last
        for a, b in itertools.combinations(sorted(options, key=lambda n: (n not in order, order.index(n) if n in
                                                                           order else 0, n)), 2):
            pairs = [(by_stages[s], by_stages[s[:index] + (b,) + s[index + 1:]]) for s in by_stages
                     if s[index] == a and s[:index] + (b,) + s[index + 1:] in by_stages]
            if not pairs:
                continue
            row = {"stage": stage, "from": a, "to": b, "pairs": len(pairs)}
            for key in filter(None, (accuracy, "latency_ms", "params_m", "gflops")):
                deltas = [y.mean[key] - x.mean[key] for x, y in pairs if key in x.mean and key in y.mean]
                row[key] = statistics.fmean(deltas) if deltas else None
            table.append(row)
    return table


# ---------------------------------------------------------------- files

def write_csv(path: Path, rows: list[dict], combos: list[Combination]) -> None:
    """One line per cell, then one mean and one std line per combination."""
    sets = list(dict.fromkeys(k for r in rows for k in (r.get("accuracy") or {})))
    fields = ["cell", "combination", "seed", "kind", *[f"acc:{s}" for s in sets], *ACCURACY_COLUMNS, *COST_COLUMNS,
              "device", "precision", "batch_size", "iterations", "latency_runs", "throughput_runs"]
    lines = []
    for r in rows:
        lines.append({"kind": "cell", **{k: r.get(k) for k in fields if k in r}, **numbers_of(r)})
    for c in combos:
        for kind, values in (("mean", c.mean), ("std", c.std)):
            lines.append({"cell": "", "combination": c.name, "seed": "", "kind": kind, **values,
                          "device": c.rows[0].get("device"), "precision": c.rows[0].get("precision")})
    with atomic_write(path, "w", what="the study's results.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(lines)


def fmt(combo: Combination, key: str, digits: int) -> str:
    if key not in combo.mean:
        return "-"
    text = f"{combo.mean[key]:.{digits}f}"
    if len(combo.rows) > 1:
        text += f" ± {combo.std[key]:.{digits}f}"
    return text


DIGITS = {"params_m": 2, "gflops": 2, "gflops_reference": 2, "latency_ms": 2, "throughput_ips": 0, "infer_mem_mb": 0, "train_mem_mb": 0}


def results_table(combos: list[Combination], sets: list[str], accuracy: str | None, marks: dict[str, str]) -> list[str]:
    acc_columns = [*[f"acc:{s}" for s in sets], *([k for k in ACCURACY_COLUMNS if any(k in c.mean for c in combos)])]
    head = ["combination", "frontier", "seeds", *[COLUMN_TITLES.get(c, c.removeprefix("acc:")) for c in acc_columns],
            *[COLUMN_TITLES[k] for k in COST_COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(combos, key=lambda c: -c.mean.get(accuracy, 0)) if accuracy else combos
    for c in order:
        cells = [c.name, marks.get(c.name, ""), str(len(c.rows)), *[fmt(c, k, 1) for k in acc_columns],
                 *[fmt(c, k, DIGITS[k]) for k in COST_COLUMNS]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def module_table(table: list[dict], accuracy: str | None) -> list[str]:
    keys = [k for k in (accuracy, "latency_ms", "params_m", "gflops") if k]
    titles = {accuracy: "Δ accuracy (points)", "latency_ms": "Δ ms/image", "params_m": "Δ params (M)",
              "gflops": "Δ GFLOPs"}
    lines = ["| stage | switch | pairs | " + " | ".join(titles[k] for k in keys) + " |",
             "|" + "---|" * (3 + len(keys))]
    for row in table:
        values = ["-" if row[k] is None else f"{row[k]:+.2f}" for k in keys]
        lines.append(f"| {row['stage']} | {row['from']} → {row['to']} | {row['pairs']} | " + " | ".join(values) + " |")
    return lines


def write_markdown(path: Path, title: str, protocol: dict, rows: list[dict], combos: list[Combination],
                   failed: list[dict], plots: list[str]) -> None:
    accuracy = accuracy_key(combos)
    sets = list(dict.fromkeys(k for r in rows for k in (r.get("accuracy") or {})))
    frontiers = {letter: pareto_frontier(combos, cost, accuracy) if accuracy else []
                 for letter, cost in FRONTIERS.items()}
    marks: dict[str, str] = {}
    for letter, frontier in frontiers.items():
        for i, combo in enumerate(frontier, 1):
            marks[combo.name] = ", ".join(filter(None, (marks.get(combo.name), f"{letter}{i}")))
    first = rows[0] if rows else {}
    lines = [f"# Study {title}", "",
             f"{len(rows)} cells finished, {len(combos)} combinations; costs measured on {first.get('machine', '?')} "
             f"({first.get('device', '?')}) in {first.get('precision', '?')}: latency per image at batch 1, "
             f"throughput and memory at batch {first.get('batch_size', '?')}. GFLOPs count 2 x multiply-accumulates "
             "per image; the paper's count differs for the attention decoder (its per-step input projection).",
             ""]
    if accuracy:
        lines += [f"Accuracy: {COLUMN_TITLES[accuracy]} in %, mean ± standard deviation over seeds.", ""]
    lines += results_table(combos, sets, accuracy, marks) + [""]
    for letter, cost in FRONTIERS.items():
        if frontiers[letter]:
            lines.append(f"{'Time' if letter == 'T' else 'Parameter'} frontier: "
                         + ", ".join(f"{letter}{i} {c.name}" for i, c in enumerate(frontiers[letter], 1)))
    table = module_wise(combos, accuracy)
    if table:
        lines += ["", "## Module-wise: switching one stage", "",
                  "Mean change over every pair of combinations that differ in that stage only.", ""]
        lines += module_table(table, accuracy)
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- {f['cell']}: {f.get('reason', 'failed')} (log: {f['log']})"
                                                for f in failed]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Protocol", "", "```text", json.dumps(protocol, indent=1, sort_keys=True), "```", ""]
    with atomic_write(path, "w", what="the study's report.md", encoding="utf-8") as f:
        f.write("\n".join(lines))


# ---------------------------------------------------------------- plots

def label_points(ax, points: list[tuple[str, float, float]], size: float = 6) -> None:
    """Label each point with its name, moving a label up until it overlaps none placed before (the 24
    combinations come in tight clusters)."""
    ax.figure.canvas.draw()  # fixes the scales and limits, so that data map to pixels
    placed: list[tuple[float, float, float, float]] = []
    for name, px, py in sorted(points, key=lambda p: p[2]):
        x0, y0 = ax.transData.transform((px, py))
        points_to_pixels = ax.figure.dpi / 72
        width, height = 0.62 * size * points_to_pixels * len(name), 1.25 * size * points_to_pixels
        dy = 3.0
        while any(x0 + 3 < bx + bw and bx < x0 + 3 + width and y0 + dy < by + bh and by < y0 + dy + height
                  for bx, by, bw, bh in placed):
            dy += height / 2
        placed.append((x0 + 3, y0 + dy, width, height))
        ax.annotate(name, (px, py), fontsize=size, xytext=(3, dy), textcoords="offset pixels",
                    arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "grey"} if dy > 3 else None)


def plot_tradeoffs(folder: Path, combos: list[Combination]) -> list[str]:
    """accuracy_vs_{time,params,gflops}.png with error bars over seeds and the frontier; without accuracy
    (a profile-only study), costs.png: ms/image against GFLOPs. → the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    accuracy = accuracy_key(combos)
    written = []
    if accuracy is None:
        specs = [("costs.png", "gflops", "latency_ms", "GFLOPs per image", "ms per image (batch 1)")]
    else:
        specs = [(name, cost, accuracy, xlabel, f"{COLUMN_TITLES[accuracy]} accuracy (%)")
                 for cost, (name, xlabel, _) in PLOTS.items()]
    for name, x, y, xlabel, ylabel in specs:
        points = [c for c in combos if x in c.mean and y in c.mean]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(8, 5.5))
        ax.errorbar([c.mean[x] for c in points], [c.mean[y] for c in points],
                    xerr=[c.std[x] for c in points], yerr=[c.std[y] for c in points], fmt="o", ms=4, capsize=2)
        if accuracy is not None:
            frontier = pareto_frontier(combos, x, y)
            ax.plot([c.mean[x] for c in frontier], [c.mean[y] for c in frontier], "r--o", lw=1, ms=9, mfc="none", label="Pareto frontier")
            ax.legend(loc="lower right")
        if accuracy is None or PLOTS[x][2]:
            ax.set_xscale("log")
        if accuracy is None:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.08)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        label_points(ax, [(c.name, c.mean[x], c.mean[y]) for c in points])
        fig.tight_layout()
        try:
            with atomic_write(folder / name, what=f"the study's {name}") as f:
                fig.savefig(f, format="png", dpi=90)
        finally:
            plt.close(fig)
        written.append(name)
    return written


def build_report(folder: Path, title: str, protocol: dict, rows: list[dict], failed: list[dict]) -> list[Combination]:
    """Write results.csv, results.json, the plots and report.md to ``folder``; → the combinations."""
    folder.mkdir(parents=True, exist_ok=True)
    combos = combine(rows)
    write_csv(folder / "results.csv", rows, combos)
    summary = {"cells": rows, "combinations": [{"combination": c.name, "seeds": len(c.rows), "mean": c.mean,
                                                 "std": c.std} for c in combos], "failed": failed}
    with atomic_write(folder / "results.json", "w", what="the study's results.json", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    plots = plot_tradeoffs(folder, combos) if combos else []
    write_markdown(folder / "report.md", title, protocol, rows, combos, failed, plots)
    return combos
