"""Train the small teacher packaged in mixa/assets/teacher/ on the synthetic task (mixa.data.synthetic).

Reproduces the packaged weights (same seed, same torch build, one thread):

    PYTHONPATH=. python tools/train_teacher.py --output mixa/assets/teacher

It writes the mixa saved-model format (model.safetensors + config.json, see mixa.io) and
training.json (command, settings, val accuracy curve). The train_state.pt checkpoint it keeps while
running is removed at the end.

Every training step draws a batch of *fresh* scenes (sample indices never repeat), so the teacher cannot
memorise and its val accuracy is its accuracy on the task. Training stops at --steps or as soon as val
top-1 reaches --target (the quick start wants a teacher that is good but not perfect: 85-97% top-1).
A killed run resumes from OUTPUT/train_state.pt (our own file; loaded with weights_only=True).
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

TIMM_NAME = "deit_tiny_patch16_224"


def teacher_kwargs(args) -> dict:
    """timm kwargs of the teacher. The pretrained_cfg overlay records the input size and normalisation
    so that mixa's eval loader (timm's resolve_data_config) feeds it 32x32 images normalised as trained."""
    return {
        "num_classes": len(synthetic.CLASSES),
        "img_size": synthetic.IMAGE_SIZE,
        "patch_size": args.patch_size,
        "embed_dim": args.embed_dim,
        "num_heads": args.num_heads,
        "depth": 12,
        "pretrained_cfg_overlay": {
            "input_size": [3, synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE],
            "mean": list(synthetic.MEAN),
            "std": list(synthetic.STD),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "num_classes": len(synthetic.CLASSES),
        },
    }


@torch.no_grad()
def init_sincos_pos_embed(model) -> None:
    """Start the learned position embedding from a 2-D sine-cosine code (as MAE does), scaled to unit
    variance: tokens know their row and column from the first step. With timm's small random init the
    from-scratch ViT needed far more steps to use positions at all (our measurement: stuck at the
    colour-only solution after 600 steps), which the CPU budget of this script does not allow."""
    grid = model.patch_embed.grid_size
    dim = model.pos_embed.shape[-1]
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid[0], dtype=torch.float32),
                            torch.arange(grid[1], dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (xs.flatten(), ys.flatten()):
        angle = coord[:, None] * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    code = torch.cat(parts, dim=1)  # (tokens, 4 * quarter)
    code = torch.nn.functional.pad(code, (0, dim - code.shape[1]))
    code = (code - code.mean()) / code.std()
    prefix = model.pos_embed.shape[1] - code.shape[0]  # the class token's entry (if any) starts at zero
    model.pos_embed.zero_()
    model.pos_embed[0, prefix:] = code


@torch.no_grad()
def evaluate(model, images, labels, batch_size=500):
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += (model(images[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum().item()
    model.train()
    return 100.0 * correct / len(labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="mixa/assets/teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target", type=float, default=95.0, help="stop once val top-1 reaches this (percent)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a shared machine: no spinning thread barriers)")
    args = p.parse_args(argv)

    import timm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = teacher_kwargs(args)
    model = timm.create_model(TIMM_NAME, pretrained=False, **kwargs)
    init_sincos_pos_embed(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    val_images, val_labels = synthetic.SyntheticShapes("val", args.val_size, seed=args.data_seed).tensors()
    state_path = out / "train_state.pt"
    step, history = 0, []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = int(state["step"]), json.loads(state["history"])
        print(f"resumed at step {step}", flush=True)

    model.train()
    t0 = time.time()
    best = None
    while step < args.steps:
        batch = synthetic.SyntheticShapes("train", args.batch_size, seed=args.data_seed,
                                          offset=step * args.batch_size)
        x, y = batch.tensors()
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
            history.append({"step": step, "val_top1": acc, "loss": loss.item()})
            print(f"step {step} val top-1 {acc:.2f}%", flush=True)
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": torch.tensor(step),
                     "history": json.dumps(history)}
            from mixa.io import atomic_path

            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
            if acc >= args.target:
                print(f"reached target {args.target}% at step {step}", flush=True)
                break

    acc = evaluate(model, val_images, val_labels)
    package(model, kwargs, out, {
        "val_top1": acc, "val_size": args.val_size, "data_seed": args.data_seed, "steps": step,
        "seconds": round(time.time() - t0), "args": vars(args),
        "command": "PYTHONPATH=. python tools/train_teacher.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__, "history": history,
    })
    state_path.unlink()
    print(f"final val top-1 {acc:.2f}% after {step} steps, {time.time() - t0:.0f}s -> {out}", flush=True)


def package(trained, kwargs: dict, out: Path, training: dict) -> None:
    """Save as a mixa model directory: rebuilt through mixa.models.create_model so that its config
    records how to rebuild it offline (timm name + kwargs, no pretrained download)."""
    import mixa
    from mixa.io import write_json
    from mixa.models import create_model

    model = create_model(TIMM_NAME, pretrained=False, **kwargs)
    model.load_state_dict(trained.state_dict())
    mixa.save(model.eval(), out)
    write_json(out / "training.json", training)


if __name__ == "__main__":
    main()
