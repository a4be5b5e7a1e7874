"""The file commands: `pace merge`, `pace export` (PEFT, ONNX), `pace import-peft` and `pace export-base`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pace_cli.cli.common import SetOption, console, print_json
from pace_cli.errors import PaceError

_FINGERPRINT_IGNORED = " [yellow](fingerprint mismatch ignored: --force)[/]"


def merge(
    base: Annotated[str, typer.Argument(help="Base weights (.safetensors, or builtin:<name>).")],
    adapter: Annotated[Path, typer.Argument(help="adapter.safetensors written by `pace train`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged checkpoint to write.")] = Path("merged.safetensors"),
    force: Annotated[bool, typer.Option("--force", help="Merge even if the base fingerprint differs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Fold an adapter into its base weights: a plain checkpoint of the base architecture with the new head.

    Example: [bold]pace merge builtin:fmnist_vit runs/qs/adapter.safetensors -o runs/qs/merged.safetensors[/]
    """
    import time

    from pace_cli.artifacts import merge_files
    from pace_cli.models import resolve_checkpoint

    base_path = resolve_checkpoint(base) if base.startswith("builtin:") else Path(base)
    if not base_path.is_file():
        raise PaceError(f"base file '{base}' not found")
    start = time.perf_counter()
    report = merge_files(base_path, adapter, output, force=force, overwrite=overwrite)
    seconds = time.perf_counter() - start
    if json_output:
        print_json({"output": str(report.output), "tensors": report.tensors, "merged_layers": report.merged_layers,
                    "fingerprint_ok": report.fingerprint_ok, "bytes": report.output_bytes,
                    "seconds": round(seconds, 3)})
        return
    note = "" if report.fingerprint_ok else _FINGERPRINT_IGNORED
    console.print(f"[green]merged[/] {report.merged_layers} layers into {report.output} "
                  f"({report.tensors} tensors) in {seconds:.2f}s{note}", soft_wrap=True)


def export_base(
    recipe: Annotated[Path, typer.Argument(help="Recipe whose \\[model] names the base (checkpoint or pretrained).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")] = Path("base.safetensors"),
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
):
    """Write the recipe's base weights as a timm-format safetensors file, the input `pace merge` expects.

    Useful when the base came from a .pth/.npz file or timm's hub.

    Example: [bold]pace export-base recipes/vtab1k/cifar100.toml --set model.checkpoint=ViT-B_16.npz
    -o bases/vit_b16_in21k.safetensors[/]
    """
    from pace_cli.artifacts.base import export_base_weights
    from pace_cli.recipe import load_recipe

    path = export_base_weights(load_recipe(recipe, set_ or ()), output, overwrite=overwrite)
    console.print(f"[green]wrote[/] {path}")


def export(
    adapter: Annotated[Path, typer.Argument(help="A lora_add adapter.safetensors written by `pace train` (peft), "
                                            "or a merged file written by `pace merge` (onnx).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (peft: adapter_config.json, "
                                         "adapter_model.safetensors), or the .onnx file (onnx).")],
    format_: Annotated[str, typer.Option("--format", help="Target format: 'peft' (Hugging Face PEFT LoRA) or "
                                         "'onnx' (the merged model, fp32, checked with onnxruntime).")] = "peft",
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="onnx: recipe giving the architecture and "
                                                   "preprocessing of a merged file that does not record them.")] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="onnx: the ONNX opset (default 17).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="onnx: leave the batch axis free "
                                                "(default: batch 1).")] = False,
    base: Annotated[Optional[str], typer.Option("--base", help="Base weights (.safetensors or builtin:<name>), read "
                                                "only when the adapter shifts biases; default: the base recorded "
                                                "in the adapter.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Export even if the base fingerprint differs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing PEFT adapter folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Write a lora_add adapter as a Hugging Face PEFT LoRA, or a merged model as ONNX; neither needs pace to load.

    Example: [bold]pace export runs/qs/adapter.safetensors --format peft -o runs/qs/peft[/], then in Python
    [bold]PeftModel.from_pretrained(timm_model_with_base_weights, "runs/qs/peft")[/].

    lora_mul and vpt_add adapters have no exact PEFT form: use [bold]pace merge[/] for those.

    ONNX: [bold]pace export runs/qs/merged.safetensors --format onnx -o runs/qs/model.onnx --dynamic-batch[/]
    writes one self-contained fp32 file with the preprocessing and class names in its metadata, after
    checking onnxruntime's logits against PyTorch's.
    """
    from pace_cli.artifacts import EXPORT_FORMATS, export_peft

    if format_ not in (*EXPORT_FORMATS, "onnx"):
        raise PaceError(f"--format {format_!r} is not supported; choose one of {', '.join((*EXPORT_FORMATS, 'onnx'))}")
    if format_ == "onnx":
        return _export_onnx(adapter, output, recipe=recipe, opset=opset, dynamic_batch=dynamic_batch, base=base,
                            force=force, overwrite=overwrite, json_output=json_output)
    onnx_only = [flag for flag, used in (("--recipe", recipe), ("--opset", opset), ("--dynamic-batch", dynamic_batch))
                 if used]
    if onnx_only:
        raise PaceError(f"{', '.join(onnx_only)} only applies to --format onnx", remedy="drop it for a PEFT export")
    report = export_peft(adapter, output, base=base, force=force, overwrite=overwrite)
    if json_output:
        print_json({"output": str(report.output), "format": format_, "method": report.method, "layers": report.layers,
                    "rank": report.rank, "bias": report.bias, "head": report.head, "tensors": report.tensors,
                    "base": report.base, "fingerprint_ok": report.fingerprint_ok})
        return
    note = "" if report.fingerprint_ok is not False else _FINGERPRINT_IGNORED
    shape = (f"{report.feedforward} feed-forward" if report.method == "IA3"
             else f"rank {report.rank}, bias {report.bias!r}")
    console.print(f"[green]exported[/] {report.layers} {report.method} layers ({shape}, "
                  f"head {report.head}) to {report.output} in PEFT format{note}", soft_wrap=True)


def _export_onnx(merged: Path, output: Path, *, recipe: Path | None, opset: int | None, dynamic_batch: bool,
                 base: str | None, force: bool, overwrite: bool, json_output: bool) -> None:
    from pace_cli.artifacts import export_onnx
    from pace_cli.artifacts.onnx_export import DEFAULT_OPSET
    from pace_cli.recipe import load_recipe

    for flag, used in (("--base", base), ("--force", force)):
        if used:
            raise PaceError(f"{flag} does not apply to --format onnx: the merged file already holds its base",
                            remedy=f"drop {flag}")
    report = export_onnx(merged, output, recipe=load_recipe(recipe) if recipe else None,
                         opset=DEFAULT_OPSET if opset is None else opset, dynamic_batch=dynamic_batch,
                         overwrite=overwrite)
    check = report.check
    if json_output:
        print_json({"output": str(report.output), "format": "onnx", "opset": report.opset,
                    "dynamic_batch": report.dynamic_batch, "export_batch": report.export_batch,
                    "check_batch": check.batch, "max_logit_diff": check.max_logit_diff,
                    "max_prob_diff": check.max_prob_diff, "logit_scale": check.logit_scale,
                    "bytes": report.output_bytes, "timm_model": report.timm_model,
                    "num_classes": report.num_classes})
        return
    batch = "dynamic batch" if report.dynamic_batch else "batch 1"
    console.print(f"[green]exported[/] {report.timm_model} ({report.num_classes} classes, fp32, opset {report.opset}, "
                  f"{batch}) to {report.output}; onnxruntime vs PyTorch at batch {check.batch}: max logit diff "
                  f"{check.max_logit_diff:.2e}, max prob diff {check.max_prob_diff:.2e}", soft_wrap=True)


def import_peft(
    folder: Annotated[Path, typer.Argument(help="PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).")],
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="Recipe whose \\[model] names the timm model and "
                                         "the base weights the LoRA was trained on.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="pace adapter file to write.")] = Path(
        "adapter.safetensors"),
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Turn a PEFT LoRA for a timm model into a pace lora_add adapter that merge, eval and inspect accept.

    Example: [bold]pace import-peft runs/qs/peft --recipe recipes/quickstart.toml -o runs/qs/imported.safetensors[/]
    """
    from pace_cli.artifacts import import_peft as run_import
    from pace_cli.recipe import load_recipe

    report = run_import(folder, output, load_recipe(recipe, set_ or ()), overwrite=overwrite)
    if json_output:
        print_json({"output": str(report.output), "layers": report.layers, "rank": report.rank,
                    "scaling": report.scaling, "bias": report.bias, "bias_layers": report.bias_layers,
                    "head": report.head, "head_from": report.head_from, "num_classes": report.num_classes})
        return
    console.print(f"[green]imported[/] {report.layers} LoRA layers (rank {report.rank}, scaling "
                  f"{report.scaling:g} folded into lora_B, {report.bias_layers} bias shifts, head from "
                  f"{report.head_from}) into {report.output}", soft_wrap=True)
