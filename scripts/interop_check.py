"""Measure how exactly the PEFT and timm paths reproduce pace's merged model (the figures in the README).

    python scripts/interop_check.py runs/lora/adapter.safetensors --recipe recipes/quickstart.toml \
        --set adapter.kind=lora_add

For a lora_add adapter: exports it to PEFT, loads that with PeftModel.from_pretrained on a plain timm
model holding the base weights (and with merge_and_unload), imports the PEFT folder back with
import-peft and merges it, and loads the merged file through timm's pretrained_cfg_overlay. Prints
the max abs logit difference of each against the model `pace eval --weights MERGED` runs, in
float32 on the recipe's test split. Needs peft (pip install -e '.[interop]').
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import timm
import torch

from pace_cli import artifacts
from pace_cli import files
from pace_cli.builders import build_dataset, timm_kwargs
from pace_cli.data import make_loader
from pace_cli.artifacts import export_peft, import_peft
from pace_cli.models import resolve_checkpoint
from pace_cli.recipe import load_recipe
from pace_cli.evaluation import build_eval_model


@torch.no_grad()
def run(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.eval()(images).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--images", type=int, default=512, help="test images to compare on")
    args = parser.parse_args()
    from peft import PeftModel

    torch.set_num_threads(2)
    recipe = load_recipe(args.recipe, args.sets)
    base = resolve_checkpoint(recipe.model.checkpoint)
    adapter = artifacts.read_adapter(args.adapter)
    num_classes, head = adapter.metadata.num_classes, adapter.head_name
    test_set = build_dataset(recipe, recipe.data.test_split)
    images = next(iter(make_loader(test_set, args.images, shuffle=False)))[0]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        merged = tmp / "merged.safetensors"
        artifacts.merge_files(base, args.adapter, merged)
        reference = run(build_eval_model(recipe, weights=merged)[0], images)  # `pace eval --weights`
        export = export_peft(args.adapter, tmp / "peft")

        def user_model() -> torch.nn.Module:  # a PEFT user's model: timm with the base weights, no pace
            model = timm.create_model(recipe.model.name, num_classes=num_classes, **timm_kwargs(recipe))
            state = files.load_tensors(base)
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head + ".")}, strict=False)
            return model

        import_peft(tmp / "peft", tmp / "back.safetensors", recipe)
        artifacts.merge_files(base, tmp / "back.safetensors", tmp / "back-merged.safetensors")
        # num_classes: else timm drops a head whose size differs from its default config's; input_size: the channels
        size = recipe.model.img_size or 224
        overlay = dict(file=str(merged), num_classes=num_classes, input_size=(recipe.model.in_chans or 3, size, size))
        candidates = {
            "peft_from_pretrained": lambda: PeftModel.from_pretrained(user_model(), str(tmp / "peft")),
            "peft_merge_and_unload": lambda: PeftModel.from_pretrained(user_model(), str(tmp / "peft")).merge_and_unload(),
            "pace_peft_pace_merged": lambda: build_eval_model(recipe, weights=tmp / "back-merged.safetensors")[0],
            "timm_pretrained_cfg_overlay": lambda: timm.create_model(
                recipe.model.name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                **timm_kwargs(recipe)),
            "pace_adapter_unmerged": lambda: build_eval_model(recipe, adapter=args.adapter, unmerged=True)[0],
        }
        diffs = {name: (run(make(), images) - reference).abs().max().item() for name, make in candidates.items()}
    print(json.dumps({"adapter": str(args.adapter), "images": len(images), "peft_bias": export.bias,
                      "logit_scale": reference.abs().max().item(), "max_abs_logit_diff": diffs}, indent=2))


if __name__ == "__main__":
    main()
