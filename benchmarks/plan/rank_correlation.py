"""Does `mixa plan`'s agreement rank configurations as the final top-1 does?

Runs ``mixa.plan.plan`` on a benchmark's teacher (the kinds and ks of its rows; with --transfer-steps N the
plan scores each row after N steps of layer-wise transfer on the calibration images), joins every plan row
with the benchmark's final top-1 of the same (kind, k), and reports:

- Spearman rank correlation of plan agreement (and of -KL) with post-KD top-1 over the (kind, k) rows,
  with a one-sided permutation p-value (is it above what random rankings give?);
- for every latency budget (each row's plan latency in turn): is the row the plan recommends
  (``best_under(max_latency_ms=...)``) the post-KD best under the same budget, how many points it gives
  away if not, and the hit rate of a random pick among the rows within the budget, for comparison.

Final top-1: a proxy benchmark's ``top1_after`` (KD only; benchmarks/proxy/*/results.json), or, for a
transfer benchmark (benchmarks/transfer/results.json: records with ``mode`` and ``curve``), the last point of
the --mode curve (default tkd-default: what ``mixa distill`` does by default, transfer then its stage),
averaged over the seeds present (or --seeds). ``--final best-test`` takes instead what ``mixa distill`` hands
over, RUN/best, scored on test scenes that chose nothing (records made with bench_transfer --test-images).

Targets (the benchmark fails when one is not met): without transfer, Spearman rho >= 0.5 with permutation
p < 0.05; with --transfer-steps N > 0 (issue 18), rho >= 0.8 over >= 12 (kind, k) rows and the plan's pick
under every row's latency within 0.5 points of the best row under that latency.

    PYTHONPATH=. python benchmarks/plan/rank_correlation.py --results benchmarks/transfer/results.json \
        --transfer-steps 100 --output benchmarks/plan/proxy_extremes_transfer   # plan after transfer
    PYTHONPATH=. python benchmarks/plan/rank_correlation.py --results benchmarks/transfer/stage_best/results.json \
        --transfer-steps 100 --final best-test --seeds 1 --output benchmarks/plan/proxy_extremes_best

    PYTHONPATH=. python benchmarks/plan/rank_correlation.py                       # the offline benchmark
    PYTHONPATH=. python benchmarks/plan/rank_correlation.py --results benchmarks/proxy/relations/results.json \
        --output benchmarks/plan/proxy                                           # the proxy benchmark

Writes OUTPUT/results.json, OUTPUT/RESULTS.md and OUTPUT/plan.png. Plan rows are cached in --work-dir, so a
killed run resumes.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mixa.profile.timing import CLOCKS  # noqa: E402  (light: no torch or runtime at import)

TARGET_RHO, TARGET_P = 0.5, 0.05
TRANSFER_TARGET_RHO, TRANSFER_TARGET_ROWS, TRANSFER_TARGET_REGRET = 0.8, 12, 0.5
NOISE_DRAWS = 2000  # re-measurements of the final column behind rho's noise band


FINALS = ("last", "best-test")


def final_top1(record: Dict, final: str, val_images: int = 1000) -> float:
    """A transfer benchmark record's final top-1: ``last``, the last point of its curve (val scenes);
    ``best-test``, what today's ``mixa distill`` hands over (RUN/best: the transferred student unless a KD epoch
    beat it clearly on the ``val_images`` val scenes, mixa.distill.train.replaces_best replayed on the row's val
    points) scored on test scenes that chose nothing (bench_transfer --test-images)."""
    if final == "last":
        return record["curve"][-1]["top1"]
    if "test" not in record:
        raise SystemExit(f"{record['name']}: no test scores (run bench_transfer with --test-images) for --final best-test")
    epoch, scores = bench_transfer().handed_over(record, val_images)
    if scores is None:
        raise SystemExit(f"{record['name']}: today's mixa distill hands over epoch {epoch}, whose checkpoint the run did "
                         f"not keep")
    return scores["top1"]


@functools.lru_cache(maxsize=None)
def bench_transfer():
    """benchmarks/transfer/bench_transfer.py, the owner of its records' format (and of the replay of mixa
    distill's RUN/best choice on them); loaded once, not once per record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_transfer", ROOT / "benchmarks" / "transfer" / "bench_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def final_records(bench: Dict, mode: str, final: str = "last", seeds=None) -> List[Dict]:
    """(kind, k) records with ``top1_after``: a proxy benchmark's sensitivity rows as they are, or a transfer
    benchmark's --mode rows with their final top-1 (``final_top1``) averaged over seeds (all, or ``seeds``)."""
    records = bench["records"]
    if not any("curve" in r and "mode" in r for r in records):
        return [r for r in records if r.get("select", "sensitivity") == "sensitivity"
                and r["kind"] != "softmax" and not r.get("same_as")]
    groups: Dict[tuple, List[Dict]] = {}
    for r in records:
        if r.get("mode") == mode and r.get("curve") and (not seeds or r["seed"] in seeds):
            groups.setdefault((r["kind"], r["keep"]), []).append(r)
    out = []
    for (kind, keep), recs in groups.items():
        finals = [final_top1(r, final, bench.get("settings", {}).get("val_images", 1000)) for r in recs]
        out.append({"kind": kind, "keep": keep, "kept": recs[0]["kept"], "seeds": sorted(r["seed"] for r in recs),
                    "images": [r["curve"][-1]["images"] for r in recs],
                    "top1_after": sum(finals) / len(finals),
                    **({"top1_as_run": sum(r["test"]["best"]["top1"] for r in recs) / len(recs)}
                       if final == "best-test" else {}),
                    "agreement_before": recs[0]["curve"][0].get("agreement")})
    return out


def ranks(values: Sequence[float]) -> List[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(ranks(x), ranks(y))


def plan_order(rows: List[Dict]) -> List[float]:
    """The plan's own ordering as a score: agreement, ties broken by lower KL (mixa.plan.best_under's key).
    After transfer the agreement on the calibration images often saturates at 100%, and then only the KL
    tells rows apart."""
    keyed = sorted(range(len(rows)), key=lambda i: (rows[i]["plan"]["agreement"], -rows[i]["plan"]["kl"]))
    score = [0.0] * len(rows)
    for position, i in enumerate(keyed):
        score[i] = float(position)
    return score


def permutation_p(x: Sequence[float], y: Sequence[float], trials: int = 20000, seed: int = 0) -> float:
    """One-sided: the share of random orderings of y whose Spearman rho with x is at least the observed."""
    observed, rng, y = spearman(x, y), random.Random(seed), list(y)
    hits = 0
    for _ in range(trials):
        rng.shuffle(y)
        hits += spearman(x, y) >= observed - 1e-12
    return (hits + 1) / (trials + 1)


def rho_noise_band(scores: Sequence[float], after: Sequence[float], images: int, draws: int = NOISE_DRAWS,
                   seed: int = 0) -> List[float]:
    """The 5th and 95th percentiles of Spearman rho(scores, final top-1) when every final top-1 is measured
    again on another ``images`` images (drawn as binomial counts around the observed rate): how far the
    sampling error of the final column alone moves rho. Rows within noise of each other near the ceiling
    swap ranks from draw to draw."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rates = np.clip(np.asarray(after, dtype=float) / 100.0, 0.0, 1.0)
    rhos = sorted(spearman(scores, list(rng.binomial(images, rates) / images)) for _ in range(draws))
    return [rhos[int(0.05 * (draws - 1))], rhos[int(0.95 * (draws - 1))]]


def budget_study(rows: List[Dict]) -> Dict:
    """Every row's plan latency as a budget: the plan's pick vs the post-KD best within it."""
    from mixa.plan import PlanRow, best_under

    by_key = {(r["kind"], r["keep"]): r for r in rows}
    plan_rows = [PlanRow(**r["plan"]) for r in rows]
    budgets, hits, regrets, chance = [], 0, [], []
    for budget in sorted({r.latency_ms for r in plan_rows}):
        within = [by_key[(r.kind, r.keep)] for r in plan_rows if r.latency_ms <= budget]
        pick = best_under(plan_rows, max_latency_ms=budget)
        best = max(r["top1_after"] for r in within)
        got = by_key[(pick.kind, pick.keep)]["top1_after"]
        hit = got == best
        hits += hit
        regrets.append(best - got)
        chance.append(sum(r["top1_after"] == best for r in within) / len(within))
        budgets.append({"max_latency_ms": budget, "rows_within": len(within), "plan_pick": f"{pick.kind} k={pick.keep}",
                        "pick_top1_after": got, "best_top1_after": best, "hit": hit})
    n = len(budgets)
    return {"budgets": budgets, "hits": hits, "count": n, "hit_rate": hits / n, "mean_regret": sum(regrets) / n,
            "max_regret": max(regrets), "random_pick_hit_rate": sum(chance) / n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/offline/results.json",
                   help="a benchmark's results.json: records with kind, keep, kept, top1_after")
    p.add_argument("--model", default=None,
                   help="the benchmark's teacher (default: its settings' teacher, else mixa/assets/teacher)")
    p.add_argument("--calib-data", default=None, metavar="DIR",
                   help="calibration ImageFolder (default: the benchmark's own calibration images, "
                        "SyntheticShapes('calib', N, seed=its data seed[, task=its task]))")
    p.add_argument("--calib-images", type=int, default=None, help="default: the benchmark's, else 256")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="the plan's latency clock (cpu: the timing thread's CPU time, for a shared machine)")
    p.add_argument("--work-dir", default="/tmp/mixa-plan-benchmark")
    p.add_argument("--transfer-steps", type=int, default=0,
                   help="score plan rows after N transfer steps (mixa plan --transfer-steps; default 0)")
    p.add_argument("--mode", default="tkd-default", help="a transfer benchmark's curve taken as the final top-1")
    p.add_argument("--final", choices=FINALS, default="last",
                   help="a transfer benchmark's final top-1: the last point of the curve on val (last), or RUN/best "
                        "on the test scenes (best-test: needs records made with bench_transfer --test-images)")
    p.add_argument("--seeds", default=None, metavar="S,S",
                   help="a transfer benchmark's seeds to average (default: every seed present)")
    p.add_argument("--plan-only", action="store_true",
                   help="compute (and cache) the plan rows only: the kinds of --attn x the ks of --keep")
    p.add_argument("--attn", default="relu,stella,rala", help="with --plan-only")
    p.add_argument("--keep", default="0,2,6", help="with --plan-only")
    p.add_argument("--output", default="benchmarks/plan")
    args = p.parse_args(argv)
    os.chdir(ROOT)  # relative paths (defaults and arguments) are the repository's

    from mixa.io import write_json
    from mixa.plan import format_table, plan, plan_to_dict, plot

    bench = json.loads(Path(args.results).read_text())
    # the (kind, k) rows: linear kinds (no control / teacher rows), each once
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    records = final_records(bench, args.mode, args.final, seeds)
    bench_settings = bench.get("settings", {})
    seed, task = bench_settings.get("seed", 1), bench_settings.get("task", "extremes" if "curve" in str(
        bench["records"][:1]) else None)
    args.model = args.model or bench_settings.get("teacher") or "mixa/assets/teacher"
    args.calib_images = args.calib_images or bench_settings.get("calib_images") or (128 if task else 256)
    if args.calib_data:
        calib, calib_text = args.calib_data, args.calib_data
    else:
        from mixa.data.synthetic import SyntheticShapes

        by_task = {"task": task} if task else {}
        calib = SyntheticShapes("calib", args.calib_images, seed=seed, **by_task).tensors()[0]
        calib_text = (f"SyntheticShapes('calib', {args.calib_images}, seed={seed}"
                      + (f", task={task!r})" if task else ")"))
    if args.plan_only:
        result = plan(args.model, calib, attn=args.attn.split(","), keep=[int(k) for k in args.keep.split(",")],
                      threads=args.threads, calib_images=args.calib_images, work_dir=args.work_dir,
                      rounds=args.rounds, repeat=args.repeat, transfer_steps=args.transfer_steps,
                      clock=args.clock)
        print(format_table(result))
        return 0
    if len(records) < 2:
        print(f"{args.results}: {len(records)} (kind, k) row(s) with a final top-1 (mode {args.mode}): nothing to rank")
        return 1
    kinds = sorted({r["kind"] for r in records})
    ks = sorted({r["keep"] for r in records})
    result = plan(args.model, calib, attn=kinds, keep=ks, threads=args.threads, calib_images=args.calib_images,
                  work_dir=args.work_dir, rounds=args.rounds, repeat=args.repeat, transfer_steps=args.transfer_steps,
                  clock=args.clock)
    print(format_table(result))

    plan_by_key = {(r.kind, r.keep): r for r in result.rows}
    rows = []
    for r in sorted(records, key=lambda r: (r["kind"], r["keep"])):
        pr = plan_by_key[(r["kind"], r["keep"])]
        rows.append({"kind": r["kind"], "keep": r["keep"], "kept_benchmark": r["kept"], "kept_plan": pr.kept,
                     "top1_after": r["top1_after"], "agreement_before_benchmark": r.get("agreement_before"),
                     "plan": plan_to_dict(result)["rows"][result.rows.index(pr)]})
    mismatched = [f"{r['kind']} k={r['keep']}" for r in rows if sorted(r["kept_benchmark"]) != sorted(r["kept_plan"])]
    after = [r["top1_after"] for r in rows]
    agreement = [r["plan"]["agreement"] for r in rows]
    rho = spearman(agreement, after)
    metrics = {
        "rows": len(rows),
        "spearman_agreement_vs_top1_after": rho,
        "permutation_p": permutation_p(agreement, after),
        "spearman_minus_kl_vs_top1_after": spearman([-r["plan"]["kl"] for r in rows], after),
        "spearman_plan_order_vs_top1_after": spearman(plan_order(rows), after),
        "agreement_ties_at_100": sum(r["plan"]["agreement"] >= 100.0 for r in rows),
        "kept_layers_differ": mismatched,
        "kept_from": bench_settings.get("kept_from"),  # the benchmark's students keep a plan's layers
        "top1_after_range": [min(after), max(after)],
    }
    if all("top1_as_run" in r for r in records):  # RUN/best as each run chose it, under the rule of its time
        as_run = {(r["kind"], r["keep"]): r["top1_as_run"] for r in records}
        metrics["spearman_agreement_vs_top1_as_run"] = spearman(agreement, [as_run[(r["kind"], r["keep"])] for r in rows])
    if all(r["agreement_before_benchmark"] is not None for r in rows):
        metrics["spearman_benchmark_agreement_before_vs_top1_after"] = spearman(
            [r["agreement_before_benchmark"] for r in rows], after)
    val = bench.get("settings", {}).get("test_images" if args.final == "best-test" else "val_images")
    if val:
        from mixa.metrics import top1_standard_error

        metrics["top1_after_standard_error_points"] = top1_standard_error(sum(after) / len(after), val)
        metrics["spearman_agreement_noise_band_90"] = rho_noise_band(agreement, after, val)
    study = budget_study(rows)
    if args.transfer_steps:
        metrics["target"] = (f"rho >= {TRANSFER_TARGET_RHO} over >= {TRANSFER_TARGET_ROWS} rows; the pick under every "
                             f"row's latency within {TRANSFER_TARGET_REGRET} points of the best")
        metrics["target_parts"] = {"rho": rho >= TRANSFER_TARGET_RHO,
                                   "rho_plan_order": metrics["spearman_plan_order_vs_top1_after"] >= TRANSFER_TARGET_RHO,
                                   "rows": len(rows) >= TRANSFER_TARGET_ROWS,
                                   "regret": study["max_regret"] <= TRANSFER_TARGET_REGRET}
        metrics["target_met"] = all(metrics["target_parts"].values())
    else:
        metrics["target"] = f"rho >= {TARGET_RHO} with permutation p < {TARGET_P}"
        metrics["target_met"] = rho >= TARGET_RHO and metrics["permutation_p"] < TARGET_P

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    command = "PYTHONPATH=. python benchmarks/plan/rank_correlation.py " + " ".join(argv if argv is not None
                                                                                     else sys.argv[1:])
    write_json(out / "results.json", {"benchmark": args.results,
                                      "model": args.model, "calib": calib_text, "command": command.strip(),
                                      "metrics": metrics, "budget_study": study, "rows": rows,
                                      "plan": plan_to_dict(result)})
    plot(out / "plan.png", result)
    write_report(out, args, calib_text, command.strip(), result, rows, metrics, study)
    print(json.dumps({**metrics, **{k: v for k, v in study.items() if k != "budgets"}}, indent=2))
    return 0 if metrics["target_met"] else 1


def write_report(out: Path, args, calib_text: str, command: str, result, rows, metrics, study) -> None:
    m, s = metrics, study
    n = args.transfer_steps
    final = (f"top-1 after the pipeline ({args.mode}{', RUN/best on test scenes' if args.final == 'best-test' else ''})"
             if n else "post-KD top-1")
    agree = f"plan agreement after {n} transfer steps" if n else "pre-KD agreement"
    lines = [
        f"# mixa plan: does its {agree} rank configurations as the {final} does?", "",
        f"Benchmark: `{args.results}` ({final} of every (kind, k); kept layers: "
        f"{'the plan ' + m['kept_from'] if m.get('kept_from') else 'sensitivity selection'}). Plan: "
        f"`{args.model}`, calibration images {calib_text}, ONNX Runtime, {args.threads} thread(s), "
        f"{result.environment.get('cpu')}.", "",
        f"Command: `{command}`", "",
        "| kind | k | kept (plan) | plan agreement converted % | plan agreement % | plan KL | plan latency ms | "
        f"speed-up | {final} |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pr = r["plan"]
        before = "-" if pr.get("agreement_before") is None else f"{pr['agreement_before']:.1f}"
        lines.append(f"| {r['kind']} | {r['keep']} | {r['kept_plan']} | {before} | {pr['agreement']:.1f} | "
                     f"{pr['kl']:.4f} | {pr['latency_ms']:.3f} | {pr['speedup']:.2f}x | {r['top1_after']:.1f} |")
    lines += [
        "", "## Results", "",
        f"- Spearman rho ({agree} vs {final}) over {m['rows']} rows: **{m['spearman_agreement_vs_top1_after']:.3f}**"
        f" (one-sided permutation p = {m['permutation_p']:.3f}); with -KL instead of agreement: "
        f"{m['spearman_minus_kl_vs_top1_after']:.3f}; the plan's own order (agreement, ties by KL; "
        f"{m['agreement_ties_at_100']} rows at 100% agreement): {m['spearman_plan_order_vs_top1_after']:.3f}."]
    if "spearman_agreement_vs_top1_as_run" in m:
        lines.append(f"- The same against the RUN/best each run kept (the rule of its time, which a run older than "
                     f"mixa.distill.train.replaces_best may not share): {m['spearman_agreement_vs_top1_as_run']:.3f}.")
    if "spearman_benchmark_agreement_before_vs_top1_after" in m:
        lines.append(f"- Cross-check, the benchmark's own agreement of the converted models (its val images) vs {final}: "
                     f"{m['spearman_benchmark_agreement_before_vs_top1_after']:.3f}.")
    lines += [
        f"- {final[0].upper() + final[1:]} spans {m['top1_after_range'][0]:.1f}-{m['top1_after_range'][1]:.1f}%"
        + (f"; one standard error of a top-1 on the benchmark's {'test' if args.final == 'best-test' else 'val'} images is "
           f"{m['top1_after_standard_error_points']:.2f} points." if "top1_after_standard_error_points" in m else "."),
    ]
    if "spearman_agreement_noise_band_90" in m:
        lo, hi = m["spearman_agreement_noise_band_90"]
        lines.append(f"- Noise: with every final top-1 measured again on as many other images (binomial draws around "
                     f"the observed rates, {NOISE_DRAWS} draws), rho's 90% band is {lo:.3f}-{hi:.3f}.")
    lines += [
        f"- Kept layers that differ between plan and benchmark: {', '.join(m['kept_layers_differ']) or 'none'}.",
        f"- Latency budgets (each row's plan latency): the plan's pick is the best by {final} in {s['hits']} of "
        f"{s['count']} ({100 * s['hit_rate']:.0f}%; a random pick within the budget: "
        f"{100 * s['random_pick_hit_rate']:.0f}%); it gives away {s['mean_regret']:.2f} points on average, "
        f"{s['max_regret']:.2f} at most.",
        f"- Target ({m['target']}): **{'met' if m['target_met'] else 'not met'}**.", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
