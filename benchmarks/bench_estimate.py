#!/usr/bin/env python
"""The pre-flight estimate (``nemo-peft estimate``) against a real run of the same config.

    python benchmarks/bench_estimate.py --label "LoRA r16" -- trainer.max_steps=4
    python benchmarks/bench_estimate.py --label qlora -- trainer.max_steps=4 model.peft.peft_scheme=qlora
    python benchmarks/bench_estimate.py -- model=tiny trainer.max_steps=20      # seconds, no files needed

Anything after ``--`` is a finetune override, given to both sides. Each side runs in a fresh process:
the estimate (``estimate_finetune``), then the real run (``run_finetune``, its output in a temporary
directory unless exp_manager.output_dir is given) with a step clock. Measured: the median optimizer step
after the first (the probe's warmup; the estimate's step is also a median), the process's peak RSS (VmHWM at the end, loading included), the
RSS right after the model was built, the peak up to the end of the last evaluation (before the recipe's
plots), and the wall time from building the model to the end.
Prints a ``RESULT {...}`` JSON line per side and a markdown row (predicted / measured, difference).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # use the checkout even if nemo_peft is not installed


def child_estimate(overrides: list[str]) -> dict:
    from nemo_peft.cli.hydra_command import compose
    from nemo_peft.recipes.estimate import estimate_finetune
    from nemo_peft.recipes.hydra_args import peft_scheme_args

    est = estimate_finetune(compose("finetune", peft_scheme_args(overrides)), reset_peak=True)
    return {"lines": est.lines(), "eval_s": est.eval_s, "test_batch_s": est.probe.test_batch_seconds,
            "probe_step_s": est.probe.step_seconds,
            "step_s": est.step_s, "peak_mib": est.peak_mib, "loaded_mib": est.loaded_mib,
            "increase_mib": est.increase_mib, "total_s": est.total_s, "steps": est.steps,
            "probe_steps": len(est.probe.step_seconds)}


def child_run(overrides: list[str]) -> dict:
    import lightning as L

    import nemo_peft.recipes.finetune as ft
    from nemo_peft.cli.hydra_command import compose
    from nemo_peft.recipes.hydra_args import peft_scheme_args
    from nemo_peft.recipes.probe import StepClock, proc_mib

    clock, loaded, start, after_eval = StepClock(), [], [], []
    build_trainer, build_model = ft.build_trainer, ft.build_model

    class AfterEval(L.Callback):  # the peak before what the recipe does after its last evaluation (plots, ...)
        def on_test_end(self, trainer, pl_module):
            after_eval.append(proc_mib("VmHWM"))

    def with_clock(*args, callbacks=None, **kw):
        return build_trainer(*args, callbacks=[*(callbacks or []), clock, AfterEval()], **kw)

    def timed_model(*args, **kw):
        start.append(time.perf_counter())
        module = build_model(*args, **kw)
        loaded.append(proc_mib("VmRSS"))
        return module

    ft.build_trainer, ft.build_model = with_clock, timed_model
    ft.run_finetune(compose("finetune", peft_scheme_args(overrides)))
    wall = time.perf_counter() - start[0]
    steps = [t for _, t in sorted(clock.steps.items())][1:]
    peak = proc_mib("VmHWM")
    return {"step_s": statistics.median(steps), "peak_mib": peak, "loaded_mib": loaded[0],
            "increase_mib": peak - loaded[0], "total_s": wall, "steps": len(clock.steps),
            "step_list_s": steps, "test_batch_s": clock.test_batches,
            "peak_after_eval_mib": after_eval[-1] if after_eval else None}


def side(kind: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} failed (rc {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")


def _cell(pred, meas, unit="", fmt="{:,.0f}") -> str:
    diff = 100 * (pred - meas) / meas if meas else float("nan")
    return f"{fmt.format(pred)} / {fmt.format(meas)}{unit} ({diff:+.0f}%)"


def main():
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["estimate", "run"])
    parser.add_argument("--label", default=" ".join(overrides) or "default")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs, alternating; the table shows medians")
    args = parser.parse_args(argv)
    if args.child:
        result = (child_estimate if args.child == "estimate" else child_run)(overrides)
        print("RESULT " + json.dumps(result), flush=True)
        return
    tmp = None
    if not any(o.startswith("exp_manager.output_dir=") for o in overrides):
        tmp = tempfile.mkdtemp(prefix="bench_estimate_")
    elif args.repeat > 1:
        parser.error("--repeat needs a fresh output directory per run: leave exp_manager.output_dir out")
    try:
        report(args, overrides, tmp)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def report(args, overrides: list[str], tmp: str | None) -> None:
    pairs = []
    for i in range(args.repeat):
        out = [f"exp_manager.output_dir={os.path.join(tmp, f'run{i}')}"] if tmp else []
        load = os.getloadavg()[0]
        est, run = side("estimate", [*overrides, *out]), side("run", [*overrides, *out])
        print("\n".join(est.pop("lines")))
        print(f"load average (1 min) before / after: {load:.1f} / {os.getloadavg()[0]:.1f}")
        print("RESULT " + json.dumps({"label": args.label, "estimate": est, "run": run}), flush=True)
        pairs.append((est, run))
    keys = ("peak_mib", "increase_mib", "step_s", "total_s")
    est, run = ({k: statistics.median(p[i][k] for p in pairs) for k in keys} for i in (0, 1))
    print("| config | peak RSS MiB | RSS increase over the loaded model MiB | step s | whole run s |")
    print("|---|---|---|---|---|")
    cells = [_cell(est["peak_mib"], run["peak_mib"]), _cell(est["increase_mib"], run["increase_mib"]),
             _cell(est["step_s"], run["step_s"], fmt="{:.3f}"), _cell(est["total_s"], run["total_s"], fmt="{:.1f}")]
    print(f"| {args.label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
