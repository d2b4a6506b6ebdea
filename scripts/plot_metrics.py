#!/usr/bin/python3
"""Plots the per-epoch metrics that `cumnist train --metrics-out FILE` writes (one JSON object per
line: epoch, train_loss, train_accuracy, test_loss, test_accuracy, ...; validation_loss and
validation_accuracy instead for a run with --validation-split) as a PNG with two panels, loss and
accuracy, each with the training and the test (or validation) curve.

    scripts/plot_metrics.py metrics.jsonl                 # writes metrics.png
    scripts/plot_metrics.py cpu.jsonl gpu.jsonl -o runs.png --title "CPU and GPU"

Several files are drawn together, one colour per run (test solid, train dashed). A resumed run
that wrote an epoch twice is drawn with the last line for that epoch.

Needs Debian's python3-matplotlib (scripts/setup.sh installs it), hence /usr/bin/python3.
"""
import argparse
import json
import math
import os
import sys

FIELDS = ("epoch", "train_loss", "train_accuracy")


def fail(message):
    print(f"plot_metrics: error: {message}", file=sys.stderr)
    sys.exit(1)


def read_metrics(path):
    """The file's epochs in order: {epoch: record}, the last record winning."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        fail(f"cannot read '{path}': {e.strerror}")
    epochs = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"'{path}' line {number}: not JSON ({e.msg}); expected the file cumnist train --metrics-out writes")
        if not isinstance(record, dict):
            fail(f"'{path}' line {number}: a JSON {type(record).__name__}, expected an object")
        # The evaluation set of the epoch: the validation split when the run had one, else the test set.
        which = "validation" if "validation_accuracy" in record else "test"
        fields = FIELDS + (f"{which}_loss", f"{which}_accuracy")
        missing = [k for k in fields if k not in record]
        if missing:
            fail(f"'{path}' line {number}: missing {', '.join(missing)}")
        for k in fields:
            v = record[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                fail(f"'{path}' line {number}: {k} is {v!r}, expected a finite number")
        record["set"], record["eval_loss"], record["eval_accuracy"] = which, record[fields[3]], record[fields[4]]
        epochs[int(record["epoch"])] = record
    if not epochs:
        fail(f"'{path}' holds no epochs")
    return [epochs[e] for e in sorted(epochs)]


def main():
    parser = argparse.ArgumentParser(description="Plot cumnist's per-epoch metrics (loss and accuracy, train and test).")
    parser.add_argument("metrics", nargs="+", help="JSON-lines file(s) written by cumnist train --metrics-out")
    parser.add_argument("-o", "--out", help="PNG to write (default: the first file's name with .png)")
    parser.add_argument("--title", help="title over both panels (default: the file names)")
    parser.add_argument("--dpi", type=int, default=120, help="resolution (default: 120)")
    args = parser.parse_args()

    runs = [(path, read_metrics(path)) for path in args.metrics]
    out = args.out or os.path.splitext(args.metrics[0])[0] + ".png"

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        fail("matplotlib is missing: install Debian's python3-matplotlib (scripts/setup.sh) and run with /usr/bin/python3")

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    several = len(runs) > 1
    for i, (path, rows) in enumerate(runs):
        name = os.path.splitext(os.path.basename(path))[0]
        prefix = f"{name} " if several else ""
        epochs = [r["epoch"] for r in rows]
        train_colour, test_colour = (colours[i % len(colours)],) * 2 if several else (colours[0], colours[1])
        best = max(rows, key=lambda r: r["eval_accuracy"])
        which = rows[-1]["set"]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [r[f"train_{key}"] for r in rows], "--" if several else "-", marker="o", markersize=3,
                    color=train_colour, label=f"{prefix}train")
            test_label = f"{prefix}{which}"
            if key == "accuracy":
                test_label += f" (best {100 * best['eval_accuracy']:.2f}%, epoch {best['epoch']})"
            ax.plot(epochs, [r[f"eval_{key}"] for r in rows], "-", marker="o", markersize=3, color=test_colour,
                    label=test_label)
        # The best test (or validation) accuracy: a ring around its point.
        ax_acc.plot([best["epoch"]], [best["eval_accuracy"]], "o", markersize=9, markerfacecolor="none",
                    markeredgecolor=test_colour)

    for ax, title, ylabel in ((ax_loss, "Loss", "cross-entropy"), (ax_acc, "Accuracy", "fraction correct")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.04, y=0.1)
        ax.legend()
    fig.suptitle(args.title or ", ".join(os.path.basename(p) for p in args.metrics))
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=args.dpi)
    except OSError as e:
        fail(f"cannot write '{out}': {e.strerror}")
    last = runs[0][1][-1]
    print(f"Wrote {out}: {sum(len(r) for _, r in runs)} epochs from {len(runs)} file(s); "
          f"last {last['set']} accuracy {last['eval_accuracy']:.4f}")


if __name__ == "__main__":
    main()
