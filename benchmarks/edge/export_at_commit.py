"""Lower DeiT-T/14 @224 and its keep-6 students (relu, stella, rala; uniform selection) to .pte files with the
mixa of another commit, to time today's programs against the ones that commit wrote (issue 20: "at least 1.5x
faster than today's export of the same model").

    git worktree add --detach /tmp/mixa-168113c 168113c      # the export issue 20 was filed against
    PYTHONPATH=/tmp/mixa-168113c python benchmarks/edge/export_at_commit.py /tmp/pte_168113c
    mixa profile ORIGINAL.pte /tmp/pte_168113c/c0_original.pte ... --clock cpu --repeat 150 --json out.json

Writes OUT/c0_original.pte, OUT/c0_keep6_relu.pte, OUT/c0_keep6_stella.pte and OUT/c0_keep6_rala.pte (random
weights: fp32 latency does not depend on them); files already there are kept.
"""
import sys
from pathlib import Path

import torch
from timm import create_model

import mixa
from mixa.export.executorch import export_pte


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(f"mixa from {Path(mixa.__file__).parent}", flush=True)
    torch.manual_seed(0)
    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    models = {"original": original}
    for kind in ("relu", "stella", "rala"):
        models[f"keep6_{kind}"] = mixa.convert(original, keep=6, attn=kind, select="uniform", progress=False)
    for name, model in models.items():
        path = out / f"c0_{name}.pte"
        if not path.exists():
            export_pte(model.eval(), path, (3, 224, 224))
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
