"""Run the benchmarks and write bench/results/<name>.json and bench/results/RESULTS.md (the README's table).

    .venv/bin/python -m bench.run                 # everything, full size (about 25 minutes on 2 CPU cores)
    .venv/bin/python -m bench.run --only padding,matmul_limit
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.benchmarks import BENCHMARKS, FULL
from bench.common import RESULTS, machine, save


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        path = save(name, BENCHMARKS[name](FULL))
        print(f"wrote {path}", file=sys.stderr)
    (RESULTS / "RESULTS.md").write_text(table())
    print(table())


def table() -> str:
    """The Markdown table of every result on disk, with the machine it came from."""
    r = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    m = next(iter(r.values()))["machine"] if r else machine()
    dates = sorted({x["machine"]["date"] for x in r.values()}) or [m["date"]]
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    cpus = sorted({x["machine"]["cpu"] for x in r.values()}) or [m["cpu"]]
    lines = [f"Measured on {' and '.join(cpus)} ({m['cores']} cores, torch {m['torch']}, {when}); medians, "
             "[min–max] over repeats.", "", "| benchmark | what | result |", "|---|---|---|"]

    def s(x: dict, fmt: str = ".2f") -> str:
        return f"{x['median']:{fmt}} [{x['min']:{fmt}}–{x['max']:{fmt}}]"

    if "loop_overhead" in r:
        x = r["loop_overhead"]
        lines += [f"| loop overhead | graft ÷ plain PyTorch, steps/s (target ≥ 0.97) | "
                  f"{s(x['ratios']['graft_vs_plain_pytorch'], '.3f')} |",
                  f"| loop overhead | graft ÷ HF Trainer, steps/s (target ≥ 1.0) | "
                  f"{s(x['ratios']['graft_vs_hf_trainer'], '.3f')} |",
                  f"| loop overhead | steps/s: graft / plain / Trainer | "
                  f"{x['steps_per_s']['graft']['median']:.2f} / {x['steps_per_s']['plain_pytorch']['median']:.2f} / "
                  f"{x['steps_per_s']['hf_trainer']['median']:.2f} |"]
    if "mixed_precision" in r:
        x = r["mixed_precision"]
        lines += [f"| CPU mixed precision | bf16 ÷ fp32 step time speed-up; test accuracy fp32 → bf16 | "
                  f"{x['speedup_bf16']:.2f}×; {x['fp32']['test_accuracy']:.3f} → {x['bf16']['test_accuracy']:.3f} |"]
    if "padding" in r:
        x = r["padding"]
        lines += [f"| padding | real-token share: pad-to-max / dynamic / grouped | "
                  f"{x['pad_to_max']['real_token_share']:.2f} / {x['dynamic']['real_token_share']:.2f} / "
                  f"{x['dynamic_grouped']['real_token_share']:.2f} |",
                  f"| padding | samples/s: pad-to-max / dynamic / grouped | "
                  f"{s(x['pad_to_max']['samples_per_s'], '.1f')} / {s(x['dynamic']['samples_per_s'], '.1f')} / "
                  f"{s(x['dynamic_grouped']['samples_per_s'], '.1f')} |"]
    if "feature_cache" in r:
        x = r["feature_cache"]
        lines += [f"| feature cache | head_only time per epoch, uncached ÷ cached (target ≥ 10×); accuracy | "
                  f"{x['speedup_per_epoch']:.0f}×; {x['uncached']['test_accuracy']:.3f} vs "
                  f"{x['cached']['test_accuracy']:.3f} |"]
    if "partial_cache" in r:
        x = r["partial_cache"]["freeze_groups"]
        cells = "; ".join(f"{k}: {v['speedup_per_epoch']:.2f}× ({v['uncached']['test_accuracy']:.3f} vs "
                          f"{v['cached']['test_accuracy']:.3f})" for k, v in x.items())
        lines += [f"| partial cache | freeze_groups k of MiniLM's: time per epoch uncached ÷ cached (accuracy "
                  f"uncached vs cached) | {cells} |"]
    if "linear_probe" in r:
        x = r["linear_probe"]
        lines += [f"| linear probe | head_only test accuracy, graft's exact probe vs scikit-learn LogisticRegression "
                  f"(same features, 7 strengths each, picked by validation loss; target ≥); fit time sklearn ÷ graft "
                  f"(target ≥ 1) | "
                  f"{x['graft']['test_accuracy']:.3f} vs {x['sklearn']['test_accuracy']:.3f}; "
                  f"{x['time_ratio_sklearn_over_graft']:.2f}× ({s(x['sklearn']['fit_s'], '.3f')} s vs "
                  f"{s(x['graft']['fit_s'], '.3f')} s) |"]
    if "defaults_vs_trainer" in r:
        x = r["defaults_vs_trainer"]
        lines += [f"| defaults | graft's defaults vs the HF Trainer's, {x['setup']['epochs']} epochs, "
                  f"{len(x['setup']['seeds'])} seeds: time speed-up (target ≥ 1.5×); test accuracy graft vs "
                  f"Trainer | {s(x['speedup'])}×; {s(x['test_accuracy']['graft'], '.3f')} vs "
                  f"{s(x['test_accuracy']['hf_trainer'], '.3f')} |"]
    if "resnet20_vs_plain" in r:
        x = r["resnet20_vs_plain"]
        lines += [f"| defaults, images | graft's defaults vs a careful plain-PyTorch loop, {x['setup']['model']} on "
                  f"{x['setup']['data']}, {x['setup']['epochs']} epochs, {len(x['setup']['seeds'])} seeds: time "
                  f"plain ÷ graft; test accuracy graft vs plain (target: within one point) | "
                  f"{s(x['speedup'])}×; {s(x['test_accuracy']['graft'], '.3f')} vs "
                  f"{s(x['test_accuracy']['plain_pytorch'], '.3f')} |"]
    if "lora_vs_full" in r:
        x = r["lora_vs_full"]
        lines += [f"| LoRA vs full | step time; peak RSS; optimiser state | {x['lora_step_time_ratio']:.2f}×; "
                  f"{x['lora']['peak_rss_mb']:,.0f} vs {x['full']['peak_rss_mb']:,.0f} MB; "
                  f"{x['lora']['optimizer_state_mb']:.1f} vs {x['full']['optimizer_state_mb']:.1f} MB |"]
    if "matmul_limit" in r:
        x = r["matmul_limit"]
        f32, b16 = x["matmul_flops_per_s"]["float32"], x["matmul_flops_per_s"]["bfloat16"]
        lines += [f"| physical limit | matmul GFLOP/s fp32 / bf16; MiniLM step's share of fp32 peak | "
                  f"{f32['max'] / 1e9:.0f} / {b16['max'] / 1e9:.0f} (best of repeats); "
                  f"{x['share_of_fp32_peak']:.0%} |"]
    if "profile" in r:
        x = r["profile"]
        shares = ", ".join(f"{k} {v:.0%}" for k, v in x["shares_of_fit"].items())
        lines += [f"| profile | share of graft's loop time | {shares} |"]
    if "mc_dropout" in r:
        x = r["mc_dropout"]
        cells = "; ".join(f"N={n}: {s(v['ratio_mc_over_n_single'], '.2f')}×" for n, v in x["passes"].items())
        lines += [f"| MC dropout | prediction time, N batched passes ÷ N × one deterministic pass, "
                  f"{x['setup']['model']}, {x['setup']['examples']} sentences (target ≤ 1.1×) | {cells} |"]
    if "serving" in r:
        x = r["serving"]
        cells = "; ".join(f"{k.replace('_', ' ')}: {x[k]['batch_1']['examples_per_s']['median']:.1f} / "
                          f"{x[k]['batch_32']['examples_per_s']['median']:.1f}, accuracy {x[k]['test_accuracy']:.3f}"
                          for k in ("pytorch_fp32", "onnxruntime_fp32", "onnxruntime_int8", "distilled_student_fp32")
                          if k in x)
        int8 = x["onnxruntime_int8"]
        student = x.get("distilled_student_fp32")
        def latency(n: int) -> float:  # the target's measure: the student's median batch time over the run's
            return (student[f"batch_{n}"]["latency_ms"]["median"]
                    / x["pytorch_fp32"][f"batch_{n}"]["latency_ms"]["median"])

        kept = (f"; the {x['setup']['student']['layers']}-layer student "
                f"{x['speedup_vs_pytorch']['distilled_student_fp32']['batch_1']:.1f}× at batch 1, median latency "
                f"{latency(1):.2f}× / {latency(32):.2f}× the run's, "
                f"{student['test_accuracy'] / x['pytorch_fp32']['test_accuracy']:.1%} of its accuracy"
                if student else "")
        lines += [f"| serving | CPU prediction, {x['setup']['model']}, examples/s at batch 1 / batch 32, test accuracy "
                  f"(target: int8 ≥ 2× PyTorch fp32 at batch 1, within one point; a student ≥ 97% of the accuracy at "
                  f"half the latency) | {cells}; int8 "
                  f"{x['speedup_vs_pytorch']['onnxruntime_int8']['batch_1']:.1f}× at batch 1, "
                  f"{1 - int8.get('same_labels_as_pytorch', 1):.1%} of labels changed{kept} |"]
    if "sweep_overhead" in r:
        x = r["sweep_overhead"]
        lines += [f"| sweep overhead | per trial, what the sweep adds around the run (sampling, the study's "
                  f"SQLite, the trial's recipe), {x['setup']['steps']} steps of {x['setup']['model']}; once per sweep "
                  f"(splits, study, the best's test, page) | {s(x['added_per_trial_s'])} s a trial "
                  f"({x['added_share_of_trial']:.1%} of it); {x['sweep_outside_trials_s']:.1f} s |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
