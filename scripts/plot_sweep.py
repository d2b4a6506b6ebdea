#!/usr/bin/python3
"""Plots the results of `cumnist sweep` (the trials*.jsonl files in its --out folders): one panel per
hyperparameter, each trial's best validation accuracy against its value (a log axis for
hyperparameters whose values span more than a factor of 20, categories side by side otherwise),
coloured by the successive-halving rung it reached; failed trials are marked on the axis.

    scripts/plot_sweep.py runs/sweep                      # writes runs/sweep/sweep.png
    scripts/plot_sweep.py runs/s1 runs/s2 -o sweep.png    # the shards of one sweep together

Needs Debian's python3-matplotlib (scripts/setup.sh installs it), hence /usr/bin/python3.
"""
import argparse
import glob
import json
import math
import os
import sys


def fail(message):
    print(f"plot_sweep: error: {message}", file=sys.stderr)
    sys.exit(1)


def read_trials(folders):
    """Each trial's record at its highest rung."""
    best = {}
    files = 0
    for folder in folders:
        if not os.path.isdir(folder):
            fail(f"'{folder}' is not a sweep folder")
        for path in sorted(glob.glob(os.path.join(folder, "trials*.jsonl"))):
            files += 1
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as e:
                        fail(f"'{path}' line {number}: not JSON ({e.msg})")
                    if not isinstance(r, dict) or "trial" not in r or "flags" not in r or "status" not in r:
                        fail(f"'{path}' line {number}: not a trial record of cumnist sweep")
                    key = (r.get("dir", folder), r["trial"])
                    if key not in best or best[key].get("rung", 0) <= r.get("rung", 0):
                        best[key] = r
    if files == 0:
        fail(f"no trials*.jsonl in {', '.join(folders)}")
    return list(best.values())


def numeric(values):
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def main():
    parser = argparse.ArgumentParser(description="Plot cumnist sweep results: accuracy against each hyperparameter.")
    parser.add_argument("folders", nargs="+", help="sweep folders (cumnist sweep --out)")
    parser.add_argument("-o", "--out", help="PNG to write (default: sweep.png in the first folder)")
    parser.add_argument("--dpi", type=int, default=110, help="resolution (default: 110)")
    args = parser.parse_args()
    trials = read_trials(args.folders)
    flags = sorted({f for r in trials for f in r["flags"]})
    if not flags:
        fail("the trials have no hyperparameters")
    out = args.out or os.path.join(args.folders[0], "sweep.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("matplotlib is missing: install Debian's python3-matplotlib (scripts/setup.sh) and run with /usr/bin/python3")

    done = [r for r in trials if r["status"] == "done"]
    failed = [r for r in trials if r["status"] != "done"]
    rungs = sorted({r.get("rung", 0) for r in trials})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    columns = min(3, len(flags))
    rows = math.ceil(len(flags) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    low = min((r["best_validation_accuracy"] for r in done), default=0.0)
    for ax, flag in zip(axes.flat, flags):
        values = [r["flags"].get(flag, "") for r in trials]
        as_numbers = numeric(values)
        if as_numbers is not None:
            positive = [v for v in as_numbers if v > 0]
            if positive and len(positive) == len(as_numbers) and max(positive) / min(positive) > 20:
                ax.set_xscale("log")
            position = {v: float(v) for v in values}
        else:
            categories = sorted(set(values))
            position = {v: i for i, v in enumerate(categories)}
            ax.set_xticks(range(len(categories)))
            ax.set_xticklabels(categories, rotation=20, ha="right")
        for rung in rungs:
            xs = [position[r["flags"].get(flag, "")] for r in done if r.get("rung", 0) == rung]
            ys = [r["best_validation_accuracy"] for r in done if r.get("rung", 0) == rung]
            label = f"rung {rung + 1}" if len(rungs) > 1 else "trials"
            ax.plot(xs, ys, "o", color=colours[rung % len(colours)], alpha=0.8, label=label)
        if failed:
            ax.plot([position[r["flags"].get(flag, "")] for r in failed], [low] * len(failed), "x", color="black",
                    label="failed")
        if done:
            top = max(done, key=lambda r: (r.get("rung", 0), r["best_validation_accuracy"]))
            ax.plot([position[top["flags"].get(flag, "")]], [top["best_validation_accuracy"]], "o", markersize=12,
                    markerfacecolor="none", markeredgecolor="black")
        ax.set_title(flag)
        ax.set_ylabel("best validation accuracy")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(flags):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"cumnist sweep: {len(trials)} trials ({len(failed)} failed), the best ringed")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=args.dpi)
    except OSError as e:
        fail(f"cannot write '{out}': {e.strerror}")
    best = max(done, key=lambda r: (r.get("rung", 0), r["best_validation_accuracy"])) if done else None
    print(f"Wrote {out}: {len(trials)} trials, {len(flags)} hyperparameters"
          + (f"; best validation accuracy {best['best_validation_accuracy']:.4f}" if best else ""))


if __name__ == "__main__":
    main()
