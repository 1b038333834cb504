"""Benchmark: top-1 against images processed on the extremes proxy, for KD only, transfer only and transfer
followed by the stage after it, for every linear kind at k in {0, 2, 6}.

Task, data and recipe are the proxy benchmark's (benchmarks/proxy/bench_proxy.py): the packaged extremes
teacher, --train-images / --val-images scenes of --seed from mixa.data.synthetic, mixa.quickstart.RECIPE for
KD. k > 0 students keep the layers the proxy benchmark's sensitivity scores pick (its results.json), so a
row here and a row there are the same student; with ``--kept-from PLAN_JSON`` they keep the layers a `mixa plan`
picked instead (the students its printed commands build, which benchmarks/plan/rank_correlation.py ranks). One
run per curve, evaluated along the way on every val scene:

- ``kd``: ``mixa distill`` (no transfer) for --images / --train-images epochs; a point after every epoch.
- ``transfer``: ``mixa transfer`` planned for --images / batch steps; a point every --transfer-every steps.
- ``tkd-VARIANT``: ``mixa transfer`` for --stage-transfer-steps steps, then the stage after it (``mixa
  distill`` with the VARIANT's settings, see STAGES) for the epochs that fill --images; a point after the
  transfer and after every epoch. ``tkd-default`` is exactly what ``mixa distill`` does by default after its
  transfer stage; the other variants are the study behind that default.

x = images processed (transfer images + KD images) and CPU seconds (process time of this run, one val pass
per point included). A point is the model at that moment of a run planned for the whole curve (its lr has
not annealed there): a run stopped at that budget would do at least as well.

    PYTHONPATH=. python benchmarks/transfer/bench_transfer.py --work /work/transfer_runs --only relu_k0_kd,...

Rows are named KIND_kK_MODE_sSEED. results.json gets each row as it finishes (under bench_proxy's file lock,
so ``--only`` shards in several processes add to one file) and each point as it is measured (a killed run
resumes from its last checkpoint); RESULTS.md and transfer.png are rewritten after every row and by
``--report-only``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _bench_proxy():
    """benchmarks/proxy/bench_proxy.py (not a package): its results lock, teacher loader and task lookup."""
    spec = importlib.util.spec_from_file_location("bench_proxy", REPO / "benchmarks" / "proxy" / "bench_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


proxy = _bench_proxy()
KINDS = ("relu", "stella", "rala", "hedgehog")
KEEPS = (0, 2, 6)
CONTROL = 98.9   # the proxy benchmark's control (teacher + the same 3-epoch KD), seed 1
# The stage after transfer, on top of mixa.quickstart.RECIPE: the study behind distill's default, each for
# --study-epochs epochs (3: the proxy's KD budget). "recipe": the proxy's KD as is (lr 5e-4 at once); "low": lr
# x 0.2; "tenth": lr x 0.1; "hidden": lr x 0.2 and block outputs matched; "hidden-hi": the recipe's lr and block outputs matched.
# "default": mixa distill's own transfer stage and defaults, run to the end of the grid (--images).
STAGES = {
    "recipe": {},
    "low": {"lr": 1.0e-4},
    "tenth": {"lr": 5.0e-5},
    "hidden": {"lr": 1.0e-4, "hidden_weight": 1.0},
    "hidden-hi": {"hidden_weight": 1.0},
    # session 4: does the first-epoch dip come from a fresh AdamW at full step size (no warm-up in the proxy's
    # recipe) or from the hard-label half of the loss? "-warm": linear warm-up over the first epoch (a third
    # of a 3-epoch run); "-kd": the teacher's soft targets only (kd_weight 1).
    "low-warm": {"lr": 1.0e-4, "warmup_epochs": 1, "warmup_max_fraction": 0.34, "warmup_lr": 1.0e-6},
    "low-kd": {"lr": 1.0e-4, "kd_weight": 1.0},
    "low-warm-kd": {"lr": 1.0e-4, "kd_weight": 1.0, "warmup_epochs": 1, "warmup_max_fraction": 0.34,
                    "warmup_lr": 1.0e-6},
    "recipe-warm": {"warmup_epochs": 1, "warmup_max_fraction": 0.34, "warmup_lr": 1.0e-6},
    # eighteenth session, the stage after a transfer that left the student 5-15% from the teacher (then the
    # recipe's lr): "mid" lr x 0.5; "recipe-b32" twice the optimiser steps per image (batch 32)
    "mid": {"lr": 2.5e-4},
    "recipe-b32": {"batch_size": 32},
    # (session 11's "drop" rows, KD at the recipe's lr dropping to lr x 0.2 once the student was near the
    # teacher, ran at commit 12b6530 with mixa distill's lr_drop_when_near, since removed: fine_k2b/ANALYSIS.md)
    "default": None,
    # "auto": mixa distill as a user runs it since the tenth session: transfer_steps "auto" keyed on the converted
    # student's agreement (none near the teacher, a short one closer, the long one far: recipes.TRANSFER_AUTO),
    # then the stage; KD planned for --images / --train-images epochs after the transfer; needs --kd-every.
    # (Since the thirteenth session a probe may stop the long transfer: the KD curve then starts from the
    # converted student at x = the probe's images.)
    "auto": None,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "transfer"))
    p.add_argument("--teacher", default=str(proxy.TEACHER_DIR))
    p.add_argument("--work", default="transfer-work", help="data, students, runs (kept: resumable)")
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=0,
                   help="tkd-default rows also score RUN/transfer, RUN/best and RUN/last on this many test scenes "
                        "of the seed (the val scenes choose RUN/best, so its val top-1 is biased upwards)")
    p.add_argument("--images", type=int, default=9600, help="images processed at the end of every curve")
    p.add_argument("--transfer-batch", type=int, default=64)
    p.add_argument("--transfer-every", type=int, default=25, help="transfer-only: steps between points")
    p.add_argument("--kd-every", type=int, default=0,
                   help="KD: optimiser steps between points (x = steps x batch images); 0: a point per epoch "
                        "(x = epochs x --train-images, the first grids' convention)")
    p.add_argument("--stage-transfer-steps", type=int, default=50,
                   help="transfer steps before the stage in the study variants (tkd-default: distill's auto; "
                        "0: the stage starts from the converted student)")
    p.add_argument("--study-epochs", type=int, default=3, help="KD epochs of the study variants (tkd-*, not default)")
    p.add_argument("--seed", type=int, default=1, help="data and run seed (the teacher was trained on seed 0)")
    p.add_argument("--kept-from", default=None, metavar="PLAN_JSON",
                   help="a `mixa plan --json` file (or rank_correlation's results.json): every (kind, k) it has keeps "
                        "the plan's layers, the student its printed `mixa convert --select` builds, instead of the "
                        "top-k of the proxy's sensitivity scores")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated row names (KIND_kK_MODE, seed added)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--partial", action="store_true",
                   help="with --report-only: also report rows whose runs were stopped, marked partial")
    return p.parse_args(argv)


def transfer_variant(mode: str):
    """A transfer-only mode's settings over mixa.transfer's defaults, or None when ``mode`` is not one:
    ``transfer``, or ``transfer-`` and ``+``-joined parts, each ``lrX`` (X a number > 0) or ``block`` (the
    block target): transfer-lr6e-3, transfer-block, transfer-block+lr6e-3."""
    if mode == "transfer":
        return {}
    if not mode.startswith("transfer-"):
        return None
    settings = {}
    for part in mode[len("transfer-"):].split("+"):
        if part == "block":
            settings["target"] = "block"
            continue
        try:
            lr = float(part[2:]) if part.startswith("lr") else 0.0
        except ValueError:
            return None
        if lr <= 0:
            return None
        settings["lr"] = lr
    return settings


# A kind may carry options of the layers it converts to, KIND+OPTION+...: rala+nolepe (``mixa convert --no-lepe``),
# rala+gatenone (``--gate none``).
KIND_OPTIONS = {"nolepe": {"lepe": False}, "gatenone": {"gate": "none"}}


def split_kind(kind: str):
    """``KIND+OPTION+...`` -> (the attention kind, its ``attn_options``); None for an unknown option."""
    base, *names = kind.split("+")
    if any(n not in KIND_OPTIONS for n in names):
        return None
    return base, {k: v for n in names for k, v in KIND_OPTIONS[n].items()}


def known_row(name: str, seed: int) -> bool:
    """A grid row, or a transfer-only variant (KIND_kK_transfer-..._sSEED, see transfer_variant; KIND may carry
    options, see KIND_OPTIONS)."""
    if name in row_names(seed):
        return True
    parts = name.split("_")
    kind = split_kind(parts[0]) if len(parts) == 4 else None
    return (kind is not None and transfer_variant(parts[2]) is not None
            and f"{kind[0]}_{parts[1]}_transfer_{parts[3]}" in row_names(seed))


def plan_kept(path: Path) -> dict:
    """{(kind, k): kept layers} of a `mixa plan --json` file or of rank_correlation's results.json (its plan)."""
    try:
        plan = json.loads(path.read_text())
        rows = (plan.get("plan") or plan)["rows"]
        return {(r["kind"], int(r["keep"])): [int(i) for i in r["kept"]] for r in rows}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        sys.exit(f"--kept-from {path}: not a plan JSON with rows of kind, keep, kept ({e})")


def handed_over(record: dict, val_images: int):
    """(epoch, test scores) of the checkpoint today's ``mixa distill`` hands over as RUN/best for a tkd-default
    row, its rule (mixa.distill.train.replaces_best) replayed on the row's val points (training does not depend
    on the choice); test scores None when that epoch's checkpoint was not kept (RUN/transfer, RUN/last and the
    run's own RUN/best are)."""
    from mixa.distill.train import replaces_best

    best = next(p["top1"] for p in record["curve"] if p.get("stage") == "transfer")
    best_epoch, epochs = 0, 0
    for point in (p for p in record["curve"] if p.get("stage") == "kd"):
        epochs += 1
        if replaces_best(point["top1"], best, best_epoch, val_images):
            best, best_epoch = point["top1"], epochs
    t = record.get("test", {})
    kept = {0: t.get("transfer"), epochs: t.get("last"), record.get("best_epoch"): t.get("best")}
    return best_epoch, kept.get(best_epoch)


def row_names(seed: int):
    modes = ["kd", "transfer"] + [f"tkd-{v}" for v in STAGES]
    return [f"{kind}_k{keep}_{mode}_s{seed}" for keep in KEEPS for kind in KINDS for mode in modes]


class Bench:
    def __init__(self, args):
        import torch

        from mixa.quickstart import RECIPE

        torch.set_num_threads(args.threads)
        self.args = args
        self.out, self.work = Path(args.output), Path(args.work) / f"s{args.seed}"
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.recipe = {**RECIPE, "seed": args.seed, "save_every_steps": 0, "transfer_steps": 0}
        teacher = Path(args.teacher).resolve()
        self.settings = {"task": proxy.teacher_task(teacher),
                         "teacher": str(teacher.relative_to(REPO)) if teacher.is_relative_to(REPO) else str(teacher),
                         "train_images": args.train_images, "val_images": args.val_images, "images": args.images,
                         "transfer_batch": args.transfer_batch, "stage_transfer_steps": args.stage_transfer_steps,
                         "kd_recipe": {k: v for k, v in RECIPE.items()}}
        if args.test_images:
            self.settings["test_images"] = args.test_images
        if args.kd_every:
            self.settings["kd_every"] = args.kd_every
        self.plan_kept = {}
        if args.kept_from:
            self.plan_kept = plan_kept(Path(args.kept_from))
            self.settings["kept_from"] = args.kept_from

    def claim(self, results):
        made = results.get("settings")
        def same(settings):
            return {k: v for k, v in settings.items() if k not in ("commands", "cpu", "stage_transfer_steps")}

        if made and same(made) != same(self.settings):
            sys.exit(f"{self.path} holds rows made with other settings; choose another --output")
        from mixa.profile.records import cpu_model

        command = "PYTHONPATH=. python benchmarks/transfer/bench_transfer.py " + " ".join(sys.argv[1:])
        commands = list((made or {}).get("commands", []))
        if not self.args.report_only and command not in commands:
            commands.append(command)
        results["settings"] = {**self.settings, "commands": commands, "cpu": cpu_model()}

    def setup(self):
        from mixa.data import synthetic

        a = self.args
        self.data = self.work / "data"
        sizes = {"train": a.train_images, "val": a.val_images, **({"test": a.test_images} if a.test_images else {})}
        synthetic.write_image_folder(self.data, seed=a.seed, sizes=sizes,
                                     task=self.settings["task"], progress=False)
        self.teacher = proxy.load_teacher(Path(a.teacher)).eval()
        scores = json.loads((REPO / "benchmarks" / "proxy" / "extremes" / "results.json").read_text())
        self.scores = scores["sensitivity_scores"]

    def kind_scores(self, kind: str):
        """The proxy benchmark's sensitivity scores of ``kind``; for a kind it has none of (hedgehog), scores
        computed the same way (bench_proxy.sensitivity_scores on 128 calibration scenes of the seed) and kept
        in this benchmark's results.json."""
        if kind in self.scores:
            return self.scores[kind]
        from mixa.data import synthetic

        calib_x, _ = synthetic.SyntheticShapes("calib", 128, seed=self.args.seed, task=self.settings["task"]).tensors()
        return proxy.sensitivity_scores(self.path, self.teacher, kind, list(calib_x.split(64)))

    # ---------------------------------------------------------------------------------------- pieces
    def student(self, kind: str, keep: int) -> Path:
        import mixa
        from mixa.conversion.select import top_k
        from mixa.saved import is_model_dir, load, save

        path = self.work / "students" / f"{kind}_k{keep}"
        attn, options = split_kind(kind)
        planned = self.plan_kept.get((attn, keep))
        if not is_model_dir(path):
            select = planned if planned is not None else top_k(self.kind_scores(attn), keep) if keep else "first"
            save(mixa.convert(self.teacher, keep=keep, attn=attn, select=select, progress=False, attn_options=options),
                 path)
        if planned is not None:
            kept = load(path).mixa_config["selection"]["kept"]
            if sorted(kept) != sorted(planned):
                sys.exit(f"{path} keeps layers {kept}, the plan {planned}: use another --work for --kept-from")
        return path

    def evaluate(self, model, split: str = "val") -> dict:
        from mixa.distill import evaluate

        # (--kd-every rows score top-1 only: a teacher pass at each of their many points would double its cost)
        m = evaluate(model, self.data / split, teacher=None if self.args.kd_every else self.teacher, batch_size=250,
                     workers=0, device="cpu", progress=False)
        return {"top1": m["top1"], "agreement": m.get("agreement_top1")}

    def score_checkpoints(self, run: Path, names, split: str) -> dict:
        """``evaluate`` of each checkpoint RUN/NAME on ``split``; RUN/best is a copy of the transfer or of an
        epoch, so a checkpoint with the same weights as one already scored takes its scores."""
        import torch
        from safetensors.torch import load_file

        from mixa.saved import load

        scored = []  # (weights, scores)
        out = {}
        for name in names:
            weights = load_file(str(run / name / "model.safetensors"))
            same = next((s for w, s in scored if w.keys() == weights.keys()
                         and all(torch.equal(w[k], weights[k]) for k in w)), None)
            out[name] = same if same is not None else self.evaluate(load(run / name), split)
            scored.append((weights, out[name]))
        return out

    def transfer(self, student: Path, run: Path, steps: int, every=None, point=None, **settings) -> None:
        """``steps`` of mixa.transfer's defaults (``settings`` over them) into ``run`` (resumed if killed), in
        chunks of ``every`` steps with ``point(step)`` after each."""
        from mixa.saved import is_model_dir
        from mixa.transfer import transfer

        a = self.args
        while not is_model_dir(run):
            transfer(student, self.data, run, teacher=self.teacher, resume=(run / "last").is_dir(), device="cpu",
                     progress=False, steps=steps, stop_after=every, batch_size=a.transfer_batch, seed=a.seed,
                     workers=0, amp="none", eval_images=0, save_every_steps=0, **settings)
            if point is not None:
                point(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"])

    # ---------------------------------------------------------------------------------------- a row
    def run_row(self, name: str) -> None:
        from mixa.distill import distill
        from mixa.distill.checkpoint import load_train_state
        from mixa.saved import load

        a = self.args
        kind, keep, mode = name.split("_")[0], int(name.split("_")[1][1:]), name.split("_")[2]
        student = self.student(kind, keep)
        state_path = self.work / "rows" / f"{name}.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        from mixa.io import write_json

        if state is None:
            before = self.evaluate(load(student))
            state = {"curve": [{"images": 0, "cpu_s": 0.0, **before}]}
            write_json(state_path, state)
        clock = {"t": time.process_time(), "base": state["curve"][-1]["cpu_s"]}

        def add(images, model, extra=None):
            value = {"images": images, **self.evaluate(model), **(extra or {})}
            value["cpu_s"] = round(clock["base"] + time.process_time() - clock["t"], 1)  # with this val pass
            clock["base"], clock["t"] = value["cpu_s"], time.process_time()
            state["curve"].append(value)
            write_json(state_path, state)
            print(f"{name}: {json.dumps(value)}", flush=True)

        def kd_curve(start: Path, run: Path, epochs: int, offset, settings: dict):
            """``mixa distill`` from ``start`` into ``run``, planned for ``epochs``, a point after every epoch
            (or every --kd-every steps) at x = ``offset`` (images before KD; a callable: read once the run
            has started) + KD images; resumed point by point."""
            recipe = {**self.recipe, **settings, "epochs": epochs}
            offset_of = offset if callable(offset) else lambda: offset

            def resume():
                return (run / "last").is_dir() or (run / "transfer").is_dir()

            if a.kd_every:
                def position():
                    return load_train_state(run / "last")["step"] if (run / "last").is_dir() else 0

                def last_point():
                    return max([p["step"] for p in state["curve"] if p.get("stage") == "kd"] + [0])

                while True:
                    step = position()
                    if step > last_point():  # (a kill between a checkpoint and its point: that point only)
                        add(offset_of() + step * recipe["batch_size"], load(run / "last"), {"stage": "kd", "step": step})
                        continue
                    total = json.loads((run / "run.json").read_text())["steps_per_epoch"] * epochs if step else None
                    if total is not None and step >= total:
                        return
                    distill(start, self.data, run, teacher=self.teacher, recipe=recipe, resume=resume(),
                            stop_after_steps=a.kd_every, device="cpu", progress=False)

            def in_run():
                metrics = run / "metrics.jsonl"
                return len(metrics.read_text().splitlines()) if (run / "last").is_dir() and metrics.exists() else 0

            while True:
                done, points = in_run(), len([p for p in state["curve"] if p.get("stage") == "kd"])
                if done > points:  # (a kill between an epoch's checkpoint and its point: that point only)
                    add(offset_of() + done * a.train_images, load(run / "last"), {"stage": "kd"})
                    continue
                if done >= epochs:
                    return
                distill(start, self.data, run, teacher=self.teacher, recipe=recipe, resume=resume(), stop_after=1,
                        device="cpu", progress=False)

        if mode == "kd":
            kd_curve(student, self.work / "runs" / name, a.images // a.train_images, 0, {})
            record = {"transfer_steps": 0}
        elif transfer_variant(mode) is not None:
            steps = math.ceil(a.images / a.transfer_batch)
            run = self.work / "runs" / name

            def point(step):
                if all(p["images"] != step * a.transfer_batch for p in state["curve"]):
                    add(step * a.transfer_batch, load(run / "last"), {"stage": "transfer"})

            if (run / "last").is_dir():  # resumed: the point of the last checkpoint, if it was not taken
                point(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"])
            self.transfer(student, run, steps, a.transfer_every, point, **transfer_variant(mode))
            record = {"transfer_steps": steps, "transfer_settings": json.loads((run / "run.json").read_text())["settings"]}
        elif mode == "tkd-default":
            # mixa distill as a user runs it: its own transfer stage (RUN/transfer, transfer_steps "auto"),
            # then its stage defaults
            from mixa.distill.recipes import auto_transfer_steps

            steps = auto_transfer_steps(a.train_images, self.recipe["batch_size"])
            run = self.work / "runs" / name
            epochs = max(1, (a.images - steps * a.transfer_batch) // a.train_images)
            if not any(p.get("stage") == "transfer" for p in state["curve"]):
                distill(student, self.data, run, teacher=self.teacher, resume=(run / "run.json").is_file(),
                        recipe={**self.recipe, "transfer_steps": steps, "epochs": epochs}, stop_after=0,
                        device="cpu", progress=False)
                add(steps * a.transfer_batch, load(run / "transfer"), {"stage": "transfer"})
            kd_curve(student, run, epochs, steps * a.transfer_batch, {"transfer_steps": steps})
            record = {"transfer_steps": steps, "stage": "mixa distill defaults",
                      "settings": json.loads((run / "run.json").read_text())["settings"],
                      "best_epoch": load_train_state(run / "last").get("best_epoch")}
            if a.test_images:
                record["test"] = self.score_checkpoints(run, ("transfer", "best", "last"), "test")
        elif mode == "tkd-auto":
            if not a.kd_every:
                sys.exit("tkd-auto rows need --kd-every (points inside the stage's first epoch)")
            run = self.work / "runs" / name

            def transfer_images():  # (a probe that stopped the transfer: its steps, then plain KD)
                info = json.loads((run / "run.json").read_text())
                probe = (info.get("transfer_steps_auto") or {}).get("probe") or {}
                steps = info["settings"]["transfer_steps"] or (0 if probe.get("kept", True) else probe["steps"])
                return steps * (info["settings"].get("transfer_batch_size") or info["settings"]["batch_size"])

            def first_point():  # the transferred student, once (no transfer: the converted student's point 0)
                if (run / "run.json").is_file() and not any(p.get("stage") == "transfer" for p in state["curve"]):
                    steps = json.loads((run / "run.json").read_text())["settings"]["transfer_steps"]
                    if steps:
                        add(transfer_images(), load(run / "transfer"), {"stage": "transfer", "transfer_steps": steps})
                    else:
                        state["curve"][0].update(stage="transfer", transfer_steps=0)
                        write_json(state_path, state)

            first_point()
            kd_curve(student, run, a.images // a.train_images, transfer_images, {"transfer_steps": "auto"})
            first_point()
            info = json.loads((run / "run.json").read_text())
            record = {"transfer_steps": info["settings"]["transfer_steps"], "stage": "mixa distill defaults",
                      "settings": info["settings"], "transfer_steps_auto": info.get("transfer_steps_auto"),
                      "best_epoch": load_train_state(run / "last").get("best_epoch")}
        else:
            variant = mode.split("-", 1)[1]
            steps = a.stage_transfer_steps
            # one transfer run per student and step count, shared by every variant (deterministic)
            # (0 steps: the stage from the converted student)
            t_run = self.work / "runs" / f"{kind}_k{keep}_transfer{steps}" if steps else student
            if steps and not any(p.get("stage") == "transfer" for p in state["curve"]):
                self.transfer(student, t_run, steps)
                add(steps * a.transfer_batch, load(t_run), {"stage": "transfer"})
            settings = {**STAGES[variant], "transfer_steps": 0}
            kd_curve(t_run, self.work / "runs" / name, a.study_epochs, steps * a.transfer_batch, settings)
            record = {"transfer_steps": steps, "stage": settings, "study_epochs": a.study_epochs,
                      "transfer_settings": json.loads((t_run / "run.json").read_text())["settings"] if steps else None}
        record = {"name": name, "kind": kind, "keep": keep, "mode": mode, "seed": a.seed,
                  "kept": load(student).mixa_config["selection"]["kept"], "curve": state["curve"], **record}
        def add_record(results):  # replaces the row's partial record (--report-only --partial), if any
            results["records"] = [r for r in results["records"] if r["name"] != name] + [record]

        results = proxy.update_results(self.path, add_record)
        write_report(self.out, results)

    def run(self, names):
        results = proxy.update_results(self.path, self.claim)
        for name in names:
            results = proxy.update_results(self.path, lambda r: None)
            if any(r["name"] == name and not r.get("partial") for r in results["records"]):
                continue
            t0 = time.perf_counter()
            self.run_row(name)
            print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)


# -------------------------------------------------------------------------------------------- report

def add_partial_rows(results, work: Path) -> None:
    """Rows of WORK/rows whose runs were stopped before the end of their curve, as far as they got
    (``partial``: their points are those of a run planned for the whole curve)."""
    results["records"] = [r for r in results["records"] if not r.get("partial")]
    done = {r["name"] for r in results["records"]}
    for path in sorted((work / "rows").glob("*.json")):
        name = path.stem
        curve = json.loads(path.read_text())["curve"]
        if name in done or len(curve) < 2:
            continue
        kind, keep, mode = name.split("_")[0], int(name.split("_")[1][1:]), name.split("_")[2]
        results["records"].append({"name": name, "kind": kind, "keep": keep, "mode": mode,
                                   "seed": int(name.rsplit("_s", 1)[1]), "curve": curve, "partial": True})


def images_to_reach(curve, level):
    """The fewest images at which a curve reaches ``level`` (None: never within the grid)."""
    # (rounded: a mean of scores in 0.1 steps that equals the level must not miss it by a float's last bit)
    reached = [p["images"] for p in curve if round(p["top1"], 6) >= round(level, 6)]
    return min(reached) if reached else None


def summary_rows(results):
    """Per (kind, keep, mode): mean over seeds of every point, the seeds, images to control - 1."""
    groups = {}
    for r in results["records"]:
        groups.setdefault((r["kind"], r["keep"], r["mode"]), []).append(r)
    rows = []
    for (kind, keep, mode), recs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        recs = sorted(recs, key=lambda r: r["seed"])
        xs = sorted({p["images"] for r in recs for p in r["curve"]})
        mean = []
        for x in xs:
            vals = [p for r in recs for p in r["curve"] if p["images"] == x]
            if len(vals) == len(recs):
                mean.append({"images": x, "top1": sum(p["top1"] for p in vals) / len(vals),
                             "top1_seeds": [p["top1"] for p in vals],
                             "cpu_s": sum(p["cpu_s"] for p in vals) / len(vals)})
        reach = [images_to_reach(r["curve"], CONTROL - 1.0) for r in recs]
        rows.append({"kind": kind, "keep": keep, "mode": mode + (" (stopped)" if any(r.get("partial") for r in recs) else ""),
                     "seeds": sorted(r["seed"] for r in recs),
                     "curve": mean, "reach_each": reach, "reach_mean_curve": images_to_reach(mean, CONTROL - 1.0)})
    return rows


def at_most_half(kd_alone, auto) -> str:
    """Target 4 on one pair of images-to-reach (None: not within the curve): n/a where KD alone never gets
    there."""
    if kd_alone is None:
        return "n/a"
    return "yes" if auto is not None and auto <= kd_alone / 2 else "no"


def reach_table(rows) -> list:
    """Issue 17's target 4 per (kind, k) with both a KD-only and a tkd-auto row: images to control - 1 of
    mixa distill's default (transfer as auto sizes it, then the stage) against KD alone, seed by seed."""
    by = {(r["kind"], r["keep"], r["mode"]): r for r in rows}
    pairs = [(kind, keep) for (kind, keep, mode) in by if mode == "tkd-auto" and (kind, keep, "kd") in by]
    if not pairs:
        return []
    lines = ["", "Images to control - 1 (target 4: mixa distill's default at most half of KD alone, where KD alone "
             "gets there). Per seed, in the order listed; `—`: not within the curve.", "",
             "| kind | k | seeds | KD alone | transfer (auto) + stage | at most half | mean curves (KD alone; auto) | "
             "at most half (mean) |", "|---|---:|---|---|---|---|---|---|"]
    for kind, keep in sorted(pairs, key=lambda p: (p[1], p[0])):
        kd, auto = by[(kind, keep, "kd")], by[(kind, keep, "tkd-auto")]
        seeds = sorted(set(kd["seeds"]) & set(auto["seeds"]))
        a = [kd["reach_each"][kd["seeds"].index(s)] for s in seeds]
        b = [auto["reach_each"][auto["seeds"].index(s)] for s in seeds]
        verdict = [at_most_half(x, y) for x, y in zip(a, b)]
        show = lambda v: ", ".join("—" if x is None else str(x) for x in v)  # noqa: E731
        x, y = kd["reach_mean_curve"], auto["reach_mean_curve"]
        same = kd["seeds"] == auto["seeds"]
        mean = (f"{show([x])}; {show([y])}" if same else "seeds differ")
        mean_verdict = at_most_half(x, y) if same else ""
        lines.append(f"| {kind} | {keep} | {','.join(map(str, seeds))} | {show(a)} | {show(b)} | {', '.join(verdict)} | "
                     f"{mean} | {mean_verdict} |")
    return lines


def write_report(out: Path, results) -> None:
    from mixa.io import atomic_path

    s = results["settings"]
    rows = summary_rows(results)
    grid = sorted({p["images"] for r in rows for p in r["curve"]})
    every = s.get("kd_every", 0) * s["kd_recipe"]["batch_size"]  # the points of --kd-every rows
    cols = [x for x in grid if x > 0 and x % (every or 800) == 0]
    lines = [f"# Curves on the {s['task']} proxy: KD only, transfer only, transfer + the stage after it", "",
             f"Teacher {s['teacher']} (99.70%), control {CONTROL} (the teacher + 3 KD epochs, benchmarks/proxy/extremes); "
             f"target level control - 1 = {CONTROL - 1:.1f}. {s['train_images']} training / {s['val_images']} val "
             f"scenes per seed; KD recipe mixa.quickstart.RECIPE; transfer: mixa.transfer's defaults at batch "
             f"{s['transfer_batch']}; transfer + stage: the row's transfer steps (`transfer_steps` in results.json), "
             f"then the stage. Kept layers: "
             f"{'the plan ' + s['kept_from'] + ' (its printed mixa convert --select)' if s.get('kept_from') else 'the top k of the proxy benchmark sensitivity scores'}. "
             f"CPU: {s.get('cpu')}, 1 thread per run.", "",
             "Top-1 (%) at images processed (mean over the seeds listed; a point is the model at that moment of "
             "one run planned for the whole curve). `reach`: images to control - 1 (each seed).", "",
             "| kind | k | curve | seeds | 0 | " + " | ".join(str(x) for x in cols) + " | reach | CPU s at end |",
             "|---|---:|---|---|---:|" + "---:|" * len(cols) + "---|---:|"]
    for r in rows:
        at = {p["images"]: p for p in r["curve"]}
        cells = [f"{at[x]['top1']:.2f}" if x in at else "" for x in [0] + cols]
        reach = ", ".join("—" if v is None else str(v) for v in r["reach_each"])
        end = r["curve"][-1]["cpu_s"] if r["curve"] else 0
        lines.append(f"| {r['kind']} | {r['keep']} | {r['mode']} | {','.join(map(str, r['seeds']))} | "
                     + " | ".join(cells) + f" | {reach} | {end:.0f} |")
    lines += reach_table(rows)
    tested = [r for r in results["records"] if r.get("test")]
    if tested:
        lines += ["", f"`mixa distill`'s RUN/best: the transferred student, replaced by a KD epoch that beats it on the "
                  f"val scenes (`best from`: the epoch of the run's RUN/best, 0 = the transfer stage). `one-SE rule`: "
                  f"the checkpoint mixa distill hands over since the sixth session, where a KD epoch has to beat the "
                  f"transferred student by more than one standard error of the difference "
                  f"(mixa.distill.train.replaces_best), replayed on the run's val points (training "
                  f"does not depend on the choice; `n/s`: that epoch's checkpoint was not saved). Scored on "
                  f"{s['test_images']} other scenes of the seed (test), which chose nothing:", "",
                  "| kind | k | seed | transfer (val) | last (val) | best from | transfer (test) | best (test) | "
                  "last (test) | best - transfer (test) | one-SE rule from | one-SE rule (test) | one-SE - transfer (test) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(tested, key=lambda r: (r["keep"], r["kind"], r["seed"])):
            val = {p.get("stage"): p["top1"] for p in r["curve"]}
            t = r["test"]
            rule, chosen = handed_over(r, s["val_images"])
            rule_cells = (f"{chosen['top1']:.2f} | {chosen['top1'] - t['transfer']['top1']:+.2f}" if chosen
                          else "n/s | n/s")
            lines.append(f"| {r['kind']} | {r['keep']} | {r['seed']} | {val['transfer']:.2f} | {r['curve'][-1]['top1']:.2f} | "
                         f"{r.get('best_epoch')} | {t['transfer']['top1']:.2f} | {t['best']['top1']:.2f} | "
                         f"{t['last']['top1']:.2f} | {t['best']['top1'] - t['transfer']['top1']:+.2f} | {rule} | "
                         f"{rule_cells} |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in s["commands"]), ""]
    analysis = out / "ANALYSIS.md"
    if analysis.is_file():
        lines += [analysis.read_text()]
    with atomic_path(out / "RESULTS.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    try:
        plot(out / "transfer.png", rows)
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)


def plot(path: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(KEEPS), len(KINDS), figsize=(13, 10), sharex=True, squeeze=False)
    styles = {"kd": ("tab:blue", "-"), "transfer": ("tab:orange", "-")}
    others = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"])
    for r in rows:
        if r["kind"] not in KINDS or r["keep"] not in KEEPS:
            continue
        ax = axes[KEEPS.index(r["keep"])][KINDS.index(r["kind"])]
        mode = r["mode"].split(" ")[0]
        if mode not in styles:
            styles[mode] = (next(others, "grey"), "--")
        colour, ls = styles[mode]
        ax.plot([p["images"] for p in r["curve"]], [p["top1"] for p in r["curve"]], ls, color=colour, marker="o",
                ms=2.5, label=f"{r['mode']} ({len(r['seeds'])} seed{'s' if len(r['seeds']) > 1 else ''})")
    for i, keep in enumerate(KEEPS):
        for j, kind in enumerate(KINDS):
            ax = axes[i][j]
            ax.axhline(CONTROL - 1, color="black", lw=0.8, ls=":")
            ax.set_title(f"{kind}, k = {keep}", fontsize=9)
            ax.set_ylim(bottom=max(0, min([l.get_ydata().min() for l in ax.lines if len(l.get_ydata()) > 2] + [90])))
            if i == len(KEEPS) - 1:
                ax.set_xlabel("images processed")
            if j == 0:
                ax.set_ylabel("val top-1 (%)")
            if any(not line.get_label().startswith("_") for line in ax.lines):
                ax.legend(fontsize=6)
    fig.tight_layout()
    from mixa.io import save_figure

    save_figure(fig, path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    bench = Bench(args)
    if args.report_only:
        results = proxy.update_results(bench.path, bench.claim)
        if args.partial:
            results = proxy.update_results(bench.path, lambda r: add_partial_rows(r, bench.work))
        write_report(bench.out, results)
        return
    bench.setup()
    wanted = row_names(args.seed)
    if args.only:
        asked = [f"{n}_s{args.seed}" if not n.endswith(f"_s{args.seed}") else n for n in args.only.split(",")]
        unknown = [n for n in asked if not known_row(n, args.seed)]
        if unknown:
            sys.exit(f"unknown row(s): {', '.join(unknown)} (known: KIND_kK_MODE with KIND in {KINDS} (transfer-only "
                     f"rows: KIND+{'/+'.join(KIND_OPTIONS)} too), K in {KEEPS}, "
                     f"MODE in kd, transfer, transfer-lrX / -block / -block+lrX, {', '.join('tkd-' + v for v in STAGES)})")
        wanted = asked
    bench.run(wanted)


if __name__ == "__main__":
    main()
