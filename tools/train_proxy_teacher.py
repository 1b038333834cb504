"""Train the proxy-benchmark teachers packaged in mixa/assets/: ``extremes_teacher`` (the proxy task) and
``relations_teacher`` (the earlier task, also the extremes teacher's starting point).

Reproduces the packaged weights (same seeds, same torch build, same thread count):

    PYTHONPATH=. python tools/train_proxy_teacher.py --task relations --output mixa/assets/relations_teacher --steps 1000
    PYTHONPATH=. python tools/train_proxy_teacher.py --task extremes --output mixa/assets/extremes_teacher \
        --init mixa/assets/relations_teacher --steps 1600 --lr 5e-4 --threads 2

A 12-block timm ViT (deit_tiny layout: width 64, 2 heads of 32, MLP 4x) on 64x64 images at patch 4:
256 patch tokens + the class token, the token count of DeiT-T at 224 px / patch 14. Unlike the quick
start's first teacher (tools/train_teacher.py, stopped early at 95%), this one trains to the end of a
cosine schedule, and training.json records whether its val curve is flat: the last quarter of the steps
must add < 0.3 points (``converged``).

Every step draws a batch of fresh scenes (sample indices never repeat), so val accuracy is accuracy on
the task. Val is ``--val-size`` scenes of the val split of --data-seed; benchmarks and tests evaluate on
other seeds or offsets. A killed run resumes from OUTPUT/train_state.pt (written at every evaluation,
loaded with weights_only=True); it is removed once the model is packaged.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixa.data import synthetic  # noqa: E402
from train_teacher import TIMM_NAME, evaluate, init_sincos_pos_embed, package  # noqa: E402


def teacher_kwargs(args) -> dict:
    """timm kwargs; the pretrained_cfg overlay records the input size and normalisation so mixa's eval
    loader feeds the model 64x64 images normalised as trained."""
    task = synthetic.get_task(args.task)
    n = len(task.classes)
    return {
        "num_classes": n,
        "img_size": task.image_size,
        "patch_size": args.patch_size,
        "embed_dim": args.embed_dim,
        "num_heads": args.num_heads,
        "depth": 12,
        "pretrained_cfg_overlay": {
            "input_size": [3, task.image_size, task.image_size],
            "mean": list(synthetic.MEAN),
            "std": list(synthetic.STD),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "num_classes": n,
        },
    }


def flatness(history, steps: int):
    """Val top-1 gained over the last quarter of training: the last evaluation minus the val curve at
    75% of the steps (linear interpolation between the two evaluations around it)."""
    if len(history) < 2:
        return None
    at = 0.75 * steps
    before = max((h for h in history if h["step"] <= at), key=lambda h: h["step"], default=history[0])
    after = min((h for h in history if h["step"] >= at), key=lambda h: h["step"], default=history[-1])
    span = after["step"] - before["step"]
    top1_75 = before["val_top1"] + (after["val_top1"] - before["val_top1"]) * ((at - before["step"]) / span if span else 0.0)
    end = history[-1]["val_top1"]
    return {"step_75": at, "top1_75": round(top1_75, 3), "top1_end": end,
            "gain_last_quarter": round(end - top1_75, 3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="mixa/assets/extremes_teacher")
    p.add_argument("--task", default="extremes", choices=synthetic.list_tasks())
    p.add_argument("--seed", type=int, default=0, help="model init and training-order seed")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from the weights of a saved model of the same architecture (e.g. the "
                        "relations teacher: it already tells key objects from distractors and knows where "
                        "they are; from random init the extremes task sat at chance for 200+ steps)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: the machine is shared; no spinning thread barriers)")
    args = p.parse_args(argv)

    import timm

    from mixa.io import atomic_path

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = teacher_kwargs(args)
    model = timm.create_model(TIMM_NAME, pretrained=False, **kwargs)
    init_sincos_pos_embed(model)
    if args.init:
        from mixa.saved import load

        model.load_state_dict(load(args.init).state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    val_images, val_labels = synthetic.SyntheticShapes("val", args.val_size, seed=args.data_seed,
                                                       task=args.task).tensors()
    state_path = out / "train_state.pt"
    step, history, seconds = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = int(state["step"]), json.loads(state["history"])
        seconds = float(state["seconds"])
        torch.set_rng_state(state["rng"])
        print(f"resumed at step {step}", flush=True)

    model.train()
    t0 = time.time() - seconds
    while step < args.steps:
        x, y = synthetic.SyntheticShapes("train", args.batch_size, seed=args.data_seed,
                                         offset=step * args.batch_size, task=args.task).tensors()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {lr_at(step):.2e} {time.time() - t0:.0f}s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(model, val_images, val_labels)
            history.append({"step": step, "images": step * args.batch_size, "val_top1": acc,
                            "loss": loss.item(), "seconds": round(time.time() - t0)})
            print(f"step {step} val top-1 {acc:.2f}%", flush=True)
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": torch.tensor(step),
                     "history": json.dumps(history), "seconds": torch.tensor(time.time() - t0),
                     "rng": torch.get_rng_state()}
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)

    acc = evaluate(model, val_images, val_labels)
    flat = flatness(history, args.steps)
    package(model, kwargs, out, {
        "task": args.task, "seed": args.seed, "data_seed": args.data_seed,
        "val_split": f"val samples 0..{args.val_size - 1} of data seed {args.data_seed}",
        "val_top1": acc, "val_size": args.val_size, "steps": step, "images_seen": step * args.batch_size,
        "converged": bool(flat and flat["gain_last_quarter"] < 0.3), "flatness": flat,
        "seconds": round(time.time() - t0), "threads": args.threads, "args": vars(args),
        "command": "PYTHONPATH=. python tools/train_proxy_teacher.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__, "history": history,
    })
    state_path.unlink()
    gain = f"last-quarter gain {flat['gain_last_quarter']:+.2f}" if flat else "too few evaluations to judge flatness"
    print(f"final val top-1 {acc:.2f}% after {step} steps, {time.time() - t0:.0f}s; {gain} -> {out}", flush=True)


if __name__ == "__main__":
    main()
