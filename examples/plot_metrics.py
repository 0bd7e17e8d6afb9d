"""Draw train loss and held-out metrics vs step from one or several runs' metrics.csv, overlaid.

    python examples/plot_metrics.py results/finetune/metrics.csv --out loss.png
    python examples/plot_metrics.py results/lora/metrics.csv results/ia3/metrics.csv --labels lora ia3 --out cmp.png

A run directory may be given instead of its metrics.csv. Needs matplotlib (pip install matplotlib).
"""
import argparse
import os
import sys

from nemo_peft.recipes.plots import MissingMatplotlib, plot_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="metrics.csv files (or run directories holding one)")
    parser.add_argument("--out", default="metrics.png", help="the PNG to write (default: metrics.png)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the run directory names)")
    parser.add_argument("--title", help="title of the loss panel")
    args = parser.parse_args(argv)
    paths = [os.path.join(r, "metrics.csv") if os.path.isdir(r) else r for r in args.runs]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        parser.error(f"no such metrics.csv: {', '.join(missing)}")
    if args.labels and len(args.labels) != len(paths):
        parser.error(f"--labels has {len(args.labels)} names for {len(paths)} runs")
    try:
        out = plot_runs(paths, args.out, labels=args.labels, title=args.title)
    except MissingMatplotlib as e:
        sys.exit(str(e))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
