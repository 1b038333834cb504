"""Benchmark: layer-wise attention transfer before KD -- top-1 against images processed.

For every student (each linear kind at k = 6 with sensitivity selection, and rala at k = 0), converted from
a teacher on a synthetic task:
  (a) KD only: ``mixa distill`` with a budget of B training images (one run per budget, each with its own
      full cosine schedule: 1 epoch over a B-image subset of the training set, or B / S epochs over all S);
  (b) transfer then KD: ``mixa transfer`` for --stage-steps steps (batch --transfer-batch), then (a) from
      the transferred model; x = transfer images + KD images;
  (c) transfer only: ``mixa transfer`` for each of --transfer-steps steps (one run each), no KD.
A control row is the teacher itself fine-tuned with the same KD budgets (itself as KD teacher): what the
recipe alone does to a model that lost nothing (the reference of the "within 1 point" target). At k = 6,
``--select transfer`` students get KD at the --select-budgets too, to compare with sensitivity selection.
Every top-1 is on the same --val-images held-out images (last checkpoint, no best-of selection).

    PYTHONPATH=. python benchmarks/transfer/bench_transfer.py --output benchmarks/transfer --work /tmp/transfer_work

Defaults: the offline task (mixa.data.synthetic "shapes", the packaged teacher in mixa/assets/teacher) and
the quick start's KD recipe (mixa.quickstart.RECIPE). ``--teacher DIR`` takes another saved teacher.
OUTPUT/results.json gets every measurement as it finishes (a killed run resumes and skips what is done);
OUTPUT/RESULTS.md and OUTPUT/transfer.png are rewritten at the end; ``--report-only`` rewrites them.
The targets (issue 11) are evaluated in RESULTS.md and printed; the script exits 1 when one is not met.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

STUDENTS = [("rala", 6), ("relu", 6), ("stella", 6), ("rala", 0)]


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="benchmarks/transfer")
    p.add_argument("--work", default="/tmp/mixa_transfer_work", help="data, students, runs (kept: resumable)")
    p.add_argument("--teacher", default=None, help="saved teacher dir (default: the packaged offline teacher)")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--seed", type=int, default=1, help="data and run seed (the teacher was trained on seed 0)")
    p.add_argument("--kd-budgets", type=_ints, default=_ints("250,500,1000,2000,4000"))
    p.add_argument("--transfer-steps", type=_ints, default=_ints("5,10,25,50,100,200"))
    p.add_argument("--transfer-batch", type=int, default=64)
    p.add_argument("--transfer-lr", type=float, default=None, help="default: mixa.transfer's")
    p.add_argument("--stage-steps", type=int, default=25, help="transfer steps before KD in (b)")
    p.add_argument("--select-budgets", type=_ints, default=_ints("1000,4000"))
    p.add_argument("--lr-sweep", default="5e-4,2e-3,5e-3", help="transfer lrs tried on rala k=0 and k=6 (part lr)")
    p.add_argument("--lr-sweep-steps", type=_ints, default=_ints("25,100"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None,
                   help="comma-separated parts: control,kd,transfer,transfer_kd,select,lr,cost")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args):
        import torch

        from mixa import io, saved

        torch.set_num_threads(args.threads)
        self.args, self.io, self.saved = args, io, saved
        self.out, self.work = Path(args.output), Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}

    # ------------------------------------------------------------------ bookkeeping
    def done(self, *key):
        node = self.results
        for part in key:
            if not isinstance(node, dict) or str(part) not in node:
                return None
            node = node[str(part)]
        return node

    def record(self, value, *key):
        node = self.results
        for part in key[:-1]:
            node = node.setdefault(str(part), {})
        node[str(key[-1])] = value
        self.io.write_json(self.path, self.results)
        print(f"{'/'.join(map(str, key))}: {json.dumps(value)}", flush=True)

    # ------------------------------------------------------------------ setup
    def setup(self):
        from mixa.data import synthetic

        a = self.args
        teacher_dir = Path(a.teacher) if a.teacher else Path(__file__).resolve().parents[2] / "mixa/assets/teacher"
        self.teacher = self.saved.load(teacher_dir)  # a saved plain model is its own original
        self.data = self.work / "data"
        if not (self.data / "val").is_dir():
            synthetic.write_image_folder(self.data, seed=a.seed, sizes={"train": a.train_images, "val": a.val_images},
                                         progress=False)
        calib_x, _ = synthetic.SyntheticShapes("calib", a.calib_images, seed=a.seed).tensors()
        self.calib = list(calib_x.split(64))
        if self.done("teacher") is None:
            self.record({"top1": self.top1(self.teacher), "dir": str(teacher_dir)}, "teacher")
        self.results["settings"] = {k: v for k, v in vars(a).items() if k not in ("report_only", "only")}
        self.results["settings"]["command"] = "PYTHONPATH=. python benchmarks/transfer/bench_transfer.py " + \
            " ".join(sys.argv[1:])

    def subset(self, budget: int) -> Path:
        """An ImageFolder whose train/ holds the first budget/classes images of each class (symlinks)
        and whose val/ is the shared one; the full data when budget >= the training set."""
        if budget >= self.args.train_images:
            return self.data
        root = self.work / f"data_{budget}"
        if not (root / "train").is_dir():
            classes = sorted(p.name for p in (self.data / "train").iterdir())
            tmp = self.work / f".data_{budget}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            per_class = budget // len(classes)
            for c in classes:
                (tmp / "train" / c).mkdir(parents=True)
                for f in sorted((self.data / "train" / c).iterdir())[:per_class]:
                    os.symlink(f.resolve(), tmp / "train" / c / f.name)
            os.symlink((self.data / "val").resolve(), tmp / "val")
            os.replace(tmp, root)
        return root

    # ------------------------------------------------------------------ measurements
    def top1(self, model) -> float:
        from mixa.distill import evaluate

        return evaluate(model, self.data, batch_size=250, workers=0, device="cpu", progress=False)["top1"]

    def student(self, kind: str, keep: int, select: str = "sensitivity") -> Path:
        import mixa

        path = self.work / "students" / f"{kind}_k{keep}_{select}"
        if not self.saved.is_model_dir(path):
            model = mixa.convert(self.teacher, keep=keep, attn=kind, select=select if 0 < keep else "first",
                                 calib=self.calib, calib_images=None, progress=False)
            self.saved.save(model, path)
        return path

    def kd(self, start, budget: int, name: str) -> float:
        """Top-1 after KD with a budget of ``budget`` training images from the model at ``start``."""
        from mixa.distill import distill
        from mixa.quickstart import RECIPE

        a = self.args
        data = self.subset(budget)
        epochs = max(1, budget // a.train_images) if budget >= a.train_images else 1
        run = self.work / "runs" / name
        if not self.saved.is_model_dir(run / "last") or json.loads(
                (run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] < epochs:
            resume = (run / "last").is_dir()
            if run.exists() and not resume:
                shutil.rmtree(run)
            distill(start, data, run, teacher=self.teacher, recipe={**RECIPE, "epochs": epochs, "seed": a.seed},
                    resume=resume, device="cpu", progress=False)
        return self.top1(self.saved.load(run / "last"))

    def transfer(self, student: Path, steps: int, name: str, lr=None) -> Path:
        from mixa.transfer import transfer

        a = self.args
        run = self.work / "runs" / name
        if not self.saved.is_model_dir(run):
            resume = (run / "last").is_dir()
            if run.exists() and not resume:
                shutil.rmtree(run)
            transfer(student, self.data, run, teacher=self.teacher, resume=resume, device="cpu", progress=False,
                     steps=steps, batch_size=a.transfer_batch, lr=lr or a.transfer_lr, seed=a.seed, workers=0,
                     amp="none", eval_images=256, save_every_steps=0)
        return run

    def transfer_point(self, student: Path, steps: int, name: str, lr=None) -> dict:
        t0 = time.perf_counter()
        run = self.transfer(student, steps, name, lr)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {"top1": self.top1(self.saved.load(run)), "images": steps * self.args.transfer_batch,
                "holdout_error_before": rows[0]["holdout_error"], "holdout_error": rows[-1]["holdout_error"],
                "seconds": round(time.perf_counter() - t0, 1)}

    def step_cost(self, student: Path, rounds: int = 15) -> dict:
        """Seconds per image of one transfer step and of one KD step (same student, teacher and batch of 64),
        timed round-robin so that both see the same load of a shared machine; medians over rounds."""
        from statistics import median

        import torch

        from mixa.distill.recipes import load_recipe
        from mixa.distill.step import DistillStep
        from mixa.quickstart import RECIPE
        from mixa.transfer import TransferStep, replaced_layers, transfer_settings

        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 8, (64,))
        kd_model, tr_model = self.saved.load(student), self.saved.load(student)
        kd = DistillStep(kd_model.train(), self.teacher, load_recipe(RECIPE), torch.device("cpu"), 5e-4, 1000, 0)
        tr = TransferStep(self.teacher, replaced_layers(tr_model), transfer_settings(amp="none"), torch.device("cpu"),
                          2e-3, 1000, 0)
        times = {"kd": [], "transfer": []}
        for _ in range(rounds):
            for name, fn in (("kd", lambda: kd.forward_backward(x, y)), ("transfer", lambda: tr.forward_backward(x))):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / 64)
        kd_s, tr_s = median(times["kd"]), median(times["transfer"])
        return {"kd_s_per_image": kd_s, "transfer_s_per_image": tr_s, "ratio": tr_s / kd_s, "rounds": rounds}

    def run(self, parts):
        a = self.args
        if "cost" in parts:
            import platform

            from mixa.profile.records import cpu_model

            for kind, keep in (("rala", 6), ("rala", 0)):
                if self.done("cost", f"{kind}_k{keep}") is None:
                    self.record({**self.step_cost(self.student(kind, keep)), "cpu": cpu_model(),
                                 "machine": platform.machine()}, "cost", f"{kind}_k{keep}")
        if "control" in parts:
            control = self.work / "students" / "control"
            if not self.saved.is_model_dir(control):
                self.saved.save(self.teacher, control)
            for b in a.kd_budgets:
                if self.done("control", b) is None:
                    t0 = time.perf_counter()
                    self.record({"top1": self.kd(control, b, f"control_kd{b}"), "images": b,
                                 "seconds": round(time.perf_counter() - t0, 1)}, "control", b)
        for kind, keep in STUDENTS:
            name = f"{kind}_k{keep}"
            student = self.student(kind, keep)
            if self.done(name, "before") is None:
                model = self.saved.load(student)
                self.record({"top1": self.top1(model), "kept": model.mixa_config["selection"]["kept"]},
                            name, "before")
            if "kd" in parts:
                for b in a.kd_budgets:
                    if self.done(name, "kd", b) is None:
                        t0 = time.perf_counter()
                        self.record({"top1": self.kd(student, b, f"{name}_kd{b}"), "images": b,
                                     "seconds": round(time.perf_counter() - t0, 1)}, name, "kd", b)
            if "transfer" in parts:
                for steps in a.transfer_steps:
                    if self.done(name, "transfer", steps) is None:
                        self.record(self.transfer_point(student, steps, f"{name}_t{steps}"), name, "transfer", steps)
            if "lr" in parts and kind == "rala":
                for lr in a.lr_sweep.split(","):
                    for steps in a.lr_sweep_steps:
                        if self.done("lr_sweep", name, lr, steps) is None:
                            self.record(self.transfer_point(student, steps, f"{name}_t{steps}_lr{lr}", float(lr)),
                                        "lr_sweep", name, lr, steps)
            if "transfer_kd" in parts:
                t = a.stage_steps
                stage_images = t * a.transfer_batch
                for b in a.kd_budgets:
                    if self.done(name, "transfer_kd", b) is None:
                        t0 = time.perf_counter()
                        run = self.transfer(student, t, f"{name}_t{t}")
                        self.record({"top1": self.kd(run, b, f"{name}_t{t}_kd{b}"), "images": stage_images + b,
                                     "kd_images": b, "transfer_images": stage_images,
                                     "seconds": round(time.perf_counter() - t0, 1)}, name, "transfer_kd", b)
            if "select" in parts and keep == 6:
                chosen = self.student(kind, keep, "transfer")
                sname = f"{kind}_k{keep}_select_transfer"
                if self.done(sname, "before") is None:
                    model = self.saved.load(chosen)
                    self.record({"top1": self.top1(model), "kept": model.mixa_config["selection"]["kept"],
                                 "scores": model.mixa_config["selection"]["scores"]}, sname, "before")
                for b in a.select_budgets:
                    if self.done(sname, "kd", b) is None:
                        same = self.done(sname, "before", "kept") == self.done(name, "before", "kept")
                        value = (dict(self.done(name, "kd", b), same_as="sensitivity") if same and
                                 self.done(name, "kd", b) else {"top1": self.kd(chosen, b, f"{sname}_kd{b}"),
                                                               "images": b})
                        self.record(value, sname, "kd", b)


# ---------------------------------------------------------------------------------------------- report

def images_to_reach(points, level):
    """The fewest images at which a curve (list of (images, top1)) is at or above ``level``; None if never."""
    reached = [x for x, y in sorted(points) if y >= level]
    return reached[0] if reached else None


def targets(results):
    """Issue 11's targets, line by line: (text, met or None when not measured)."""
    lines = []
    control = results.get("control", {})
    control_top1 = max((v["top1"] for v in control.values()), default=None)
    teacher = results["teacher"]["top1"]
    for kind, keep in STUDENTS:
        r = results.get(f"{kind}_k{keep}", {})
        before = r.get("before", {}).get("top1")
        if before is None:
            continue
        lost = teacher - before
        longest = max(r.get("transfer", {}), key=int, default=None)  # a fixed length, not the best on val
        if longest is not None:
            after = r["transfer"][longest]["top1"]
            recovered = (after - before) / lost if lost > 0 else None
            met = recovered is not None and recovered >= 0.5
            lines.append((f"{kind} k={keep}: transfer alone ({longest} steps) recovers {after - before:+.2f} of the "
                          f"{lost:.2f} points lost at conversion "
                          f"({'n/a' if recovered is None else f'{100 * recovered:.0f}%'}; target >= 50%)",
                          met if lost > 0 else None))
        if control_top1 is not None and r.get("kd") and r.get("transfer_kd"):
            level = control_top1 - 1.0
            kd_n = images_to_reach([(v["images"], v["top1"]) for v in r["kd"].values()], level)
            tkd_n = images_to_reach([(v["images"], v["top1"]) for v in r["transfer_kd"].values()], level)
            if kd_n is None:
                text, met = f"KD alone never reaches {level:.2f} (control {control_top1:.2f} - 1) here", None
            elif tkd_n is None:
                text, met = f"transfer + KD never reaches {level:.2f}; KD alone at {kd_n} images", False
            else:
                text = (f"control - 1 = {level:.2f}: KD alone at {kd_n} images, transfer + KD at {tkd_n} "
                        f"(ratio {tkd_n / kd_n:.2f}; target <= 0.25)")
                met = tkd_n <= kd_n / 4
            lines.append((f"{kind} k={keep}: {text}", met))
    for kind, keep in STUDENTS:
        s, t = results.get(f"{kind}_k{keep}", {}), results.get(f"{kind}_k{keep}_select_transfer", {})
        for b, v in sorted(t.get("kd", {}).items(), key=lambda kv: int(kv[0])):
            ref = s.get("kd", {}).get(b)
            if ref is not None:
                lines.append((f"{kind} k={keep}, KD {b} images: --select transfer {v['top1']:.2f} vs sensitivity "
                              f"{ref['top1']:.2f} (kept {t['before']['kept']} vs {s['before']['kept']}; "
                              f"target >=)", v["top1"] >= ref["top1"]))
    return lines


def write_report(out: Path, results) -> bool:
    s = results.get("settings", {})
    t = results["teacher"]
    lines = ["# Layer-wise attention transfer before KD: top-1 against images processed", "",
             f"Task: the offline task (mixa.data.synthetic shapes, 32x32, 16 patch tokens) and its packaged "
             f"teacher (top-1 **{t['top1']:.2f}%** on {s.get('val_images')} val images). The proxy benchmark "
             f"(issue 10) had not landed when this was measured.", "",
             f"Command: `{s.get('command', '')}`", "",
             f"KD: mixa.quickstart.RECIPE (AdamW lr 5e-4, cosine, batch 64, KD soft 0.5, no augmentation), one "
             f"run per budget. Transfer: mixa.transfer defaults, batch {s.get('transfer_batch')}; (b) uses "
             f"{s.get('stage_steps')} transfer steps = {s.get('stage_steps', 0) * s.get('transfer_batch', 0)} images "
             f"before KD. Seed {s.get('seed')}, {s.get('threads')} thread(s).", ""]
    budgets = sorted({int(b) for r in results.values() if isinstance(r, dict) for part in ("kd", "transfer_kd")
                      for b in (r.get(part) or {})} | {int(b) for b in results.get("control", {})})
    lines += ["## Curves (top-1 %, x = images processed)", "",
              "| student | before | curve | " + " | ".join(f"{b}" for b in budgets) + " |",
              "|---|---:|---|" + "---:|" * len(budgets)]
    if results.get("control"):
        lines.append("| control (teacher) | {:.2f} | KD only | ".format(t["top1"]) +
                     " | ".join(f"{results['control'][str(b)]['top1']:.2f}" if str(b) in results["control"] else ""
                                for b in budgets) + " |")
    for kind, keep in STUDENTS:
        r = results.get(f"{kind}_k{keep}")
        if not r:
            continue
        b0 = r["before"]["top1"]
        for part, label in (("kd", "KD only (x = KD images)"), ("transfer_kd", "transfer + KD (x = KD images)")):
            if r.get(part):
                lines.append(f"| {kind} k={keep} | {b0:.2f} | {label} | " +
                             " | ".join(f"{r[part][str(b)]['top1']:.2f}" if str(b) in r[part] else "" for b in budgets)
                             + " |")
    lines += ["", "Transfer only:", "", "| student | before | " +
              " | ".join(f"{st} steps ({st * s.get('transfer_batch', 0)} img)" for st in s.get("transfer_steps", []))
              + " |", "|---|---:|" + "---:|" * len(s.get("transfer_steps", []))]
    for kind, keep in STUDENTS:
        r = results.get(f"{kind}_k{keep}")
        if r and r.get("transfer"):
            err0 = next(iter(r["transfer"].values())).get("holdout_error_before")
            lines.append(f"| {kind} k={keep} | {r['before']['top1']:.2f}"
                         + (f" (err {err0:.3f})" if err0 is not None else "") + " | " + " | ".join(
                f"{r['transfer'][str(st)]['top1']:.2f} (err {r['transfer'][str(st)]['holdout_error']:.3f})"
                if str(st) in r["transfer"] else "" for st in s.get("transfer_steps", [])) + " |")
    if results.get("lr_sweep"):
        lines += ["", "Transfer lr (top-1 after transfer only, held-out relative error):", "",
                  "| student | lr | steps | top-1 | held-out error |", "|---|---:|---:|---:|---:|"]
        for name, by_lr in results["lr_sweep"].items():
            for lr, by_steps in by_lr.items():
                for steps, v in sorted(by_steps.items(), key=lambda kv: int(kv[0])):
                    lines.append(f"| {name} | {lr} | {steps} | {v['top1']:.2f} | {v['holdout_error']:.4f} |")
    old_select = results.get("select_by_layer_error")
    if old_select:
        lines += ["", f"Superseded --select transfer (ranked by each trained layer's own relative error; "
                      f"{old_select.get('note', '')}):", "",
                  "| student | kept | top-1 before KD | " + " | ".join(f"KD {b}" for b in
                                                                     sorted({int(b) for k, v in old_select.items()
                                                                             if isinstance(v, dict)
                                                                             for b in v.get("kd", {})})) + " |",
                  "|---|---|---:|---:|---:|"]
        for kind, v in old_select.items():
            if isinstance(v, dict):
                lines.append(f"| {kind} k=6 | {v['before']['kept']} | {v['before']['top1']:.2f} | " +
                             " | ".join(f"{x['top1']:.2f}" for _, x in sorted(v["kd"].items(),
                                                                                key=lambda kv: int(kv[0]))) + " |")
    if any(f"{kind}_k6_select_transfer" in results for kind in ("rala", "relu", "stella")):
        lines += ["", "--select transfer (sensitivity after transfer) vs sensitivity, after KD:", "",
                  "| student | kept (transfer) | kept (sensitivity) | top-1 before KD (transfer / sens.) | " +
                  " | ".join(f"KD {b} (transfer / sens.)" for b in s.get("select_budgets", [])) + " |",
                  "|---|---|---|---:|" + "---:|" * len(s.get("select_budgets", []))]
        for kind in ("rala", "relu", "stella"):
            t, ref = results.get(f"{kind}_k6_select_transfer"), results.get(f"{kind}_k6")
            if t and ref:
                lines.append(f"| {kind} k=6 | {t['before']['kept']} | {ref['before']['kept']} | "
                             f"{t['before']['top1']:.2f} / {ref['before']['top1']:.2f} | " + " | ".join(
                                 f"{t['kd'][str(b)]['top1']:.2f} / {ref['kd'][str(b)]['top1']:.2f}"
                                 if str(b) in t.get("kd", {}) else "" for b in s.get("select_budgets", [])) + " |")
    if results.get("cost"):
        lines += ["", "Cost of one step per image (batch 64, 1 thread, interleaved rounds, medians):", "",
                  "| student | KD step (ms/img) | transfer step (ms/img) | transfer / KD | CPU |",
                  "|---|---:|---:|---:|---|"]
        for name, v in results["cost"].items():
            lines.append(f"| {name} | {1e3 * v['kd_s_per_image']:.3f} | {1e3 * v['transfer_s_per_image']:.3f} | "
                         f"{v['ratio']:.2f} | {v['cpu']} |")
    verdicts = targets(results)
    lines += ["", "## Targets (issue 11)", ""]
    for text, met in verdicts:
        lines.append(f"- {'MET' if met else 'not met' if met is False else 'not measurable'}: {text}")
    lines.append("")
    (out / "RESULTS.md").write_text("\n".join(lines))
    try:
        plot(out / "transfer.png", results)
    except ImportError:
        print("matplotlib is not installed (pip install 'mixa[plot]'): no plot", file=sys.stderr)
    for text, met in verdicts:
        print(f"{'MET' if met else 'not met' if met is False else 'n/a'}: {text}")
    return all(met is not False for _, met in verdicts)


def plot(path: Path, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    fig, axes = plt.subplots(1, len(STUDENTS), figsize=(4.2 * len(STUDENTS), 3.8), sharey=True)
    for ax, (kind, keep) in zip(axes, STUDENTS):
        r = results.get(f"{kind}_k{keep}", {})
        if not r:
            continue
        before = r["before"]["top1"]
        stage = s["stage_steps"] * s["transfer_batch"]

        def curve(part, offset=0):
            pts = sorted((v["images"], v["top1"]) for v in r.get(part, {}).values())
            return [offset] + [x for x, _ in pts], [before] + [y for _, y in pts]

        if r.get("kd"):
            ax.plot(*curve("kd"), "o-", label="KD only")
        if r.get("transfer_kd"):
            xs, ys = curve("transfer_kd")
            t_point = r.get("transfer", {}).get(str(s["stage_steps"]))
            if t_point:
                xs, ys = [0, stage] + xs[1:], [before, t_point["top1"]] + ys[1:]
            ax.plot(xs, ys, "s-", label=f"transfer ({stage} img) + KD")
        if r.get("transfer"):
            ax.plot(*curve("transfer"), "^--", label="transfer only")
        if results.get("control"):
            ctl = max(v["top1"] for v in results["control"].values())
            ax.axhline(ctl - 1.0, color="grey", lw=0.8, ls=":", label="control - 1")
        ax.axhline(results["teacher"]["top1"], color="black", lw=0.8, label="teacher")
        ax.set_xscale("symlog", linthresh=250)
        ax.set_xlim(left=0)
        ax.set_title(f"{kind}, k = {keep}")
        ax.set_xlabel("images processed (one run per point)")
    axes[0].set_ylabel("val top-1 (%)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    if not args.report_only:
        bench.setup()
        parts = set((args.only or "control,kd,transfer,transfer_kd,select,lr,cost").split(","))
        bench.run(parts)
        bench.io.write_json(bench.path, bench.results)
    return 0 if write_report(bench.out, bench.results) else 1


if __name__ == "__main__":
    sys.exit(main())
