#!/usr/bin/env python
"""What the rescaling kinds cost against the PEFT method each one matches: `dora` vs PEFT's LoRA
with use_dora, `ia3` vs PEFT's IA3, and `lora_add` vs PEFT's LoRA, each with PACE `off` and `pace`.

One train step = forward, cross-entropy (plus the PACE term), backward, AdamW step, on one model
(ViT-Tiny/16 at 224, batch 8 by default) with the same targets for a kind and its PEFT twin. All
cases are timed in one run, rounds interleaved with the order rotating (bench_cost's scheme), and
each ratio is the median over rounds of (case / its PEFT twin in the same round).

Peak memory is the torch profiler's memory timeline (``profile_memory=True`` and
``export_memory_timeline``) over one step after a warm-up step: the largest total of the tensor
bytes it tracks at any instant (parameters, optimizer state, activations, gradients,
temporaries), the same model's frozen weights included in every case. It counts tensors only, not
allocator caching or the interpreter, so it is deterministic where peak RSS is not; tracemalloc
would not see torch's C++ allocations at all.

    python benchmarks/kinds_cost.py --threads 1 --json-out benchmarks/results/kinds_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cost import _interleaved, _median, _round_ratios, _table  # noqa: E402

NUM_CLASSES = 10
RANK = 8
# kind -> (its [adapter] targets, ia3's feed-forward layers); PEFT gets the same (attn.proj: a bare "proj"
# would also put a PEFT LoRA on the patch embedding's conv, which pace never adapts)
LAYOUT = {"lora_add": (("qkv", "attn.proj", "fc1", "fc2"), ()), "dora": (("qkv", "attn.proj", "fc1", "fc2"), ()),
          "ia3": (("qkv", "fc2"), ("fc2",))}
PEFT_TWIN = {"lora_add": "peft lora", "dora": "peft dora", "ia3": "peft ia3"}
CASES = [case for kind in LAYOUT for case in (PEFT_TWIN[kind], f"off {kind}", f"pace {kind}")]


def _peft_model(model, kind: str):
    from peft import IA3Config, LoraConfig, get_peft_model

    targets, feedforward = LAYOUT[kind]
    if kind == "ia3":
        return get_peft_model(model, IA3Config(target_modules=list(targets), feedforward_modules=list(feedforward),
                                               modules_to_save=["head"]))
    # lora_alpha = r: PEFT's scale alpha / r is 1, as in pace's B A; the new head is trained in full
    return get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, target_modules=list(targets),
                                            use_dora=kind == "dora", modules_to_save=["head"]))


def build_case(case: str, model_name: str, img_size: int, batch: int):
    """(one train step, trainable parameters) of a case: a PEFT method, or a pace kind with a PACE variant."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=NUM_CLASSES, img_size=img_size)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, img_size, img_size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    variant, _, kind = case.partition(" ")
    if variant == "peft":
        kind = next(k for k, twin in PEFT_TWIN.items() if twin == case)
        model = _peft_model(model, kind)
        loss_fn = lambda: torch.nn.functional.cross_entropy(model(images).float(), labels)  # noqa: E731
    else:
        from pace_cli.adapters import AdapterConfig, inject_adapters
        from pace_cli.regularizer import PaceConfig, PaceRegularizer

        targets, feedforward = LAYOUT[kind]
        inject_adapters(model, AdapterConfig(kind=kind, rank=RANK, targets=targets, feedforward=feedforward),
                        num_classes=NUM_CLASSES)
        reg = PaceRegularizer(model, PaceConfig(variant=variant), num_train_samples=4 * batch,
                              num_classes=NUM_CLASSES)
        indices, counter = torch.arange(batch), [0]

        def loss_fn():
            counter[0] += 1
            return reg.loss(images, labels, indices, counter[0]).total
    with torch.no_grad():  # adapters away from their initial values, as after some training
        for name, p in model.named_parameters():
            if p.requires_grad and "head" not in name:
                p.add_(torch.randn_like(p) * 0.02)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in params)


def peak_tensor_bytes(step) -> int:
    """The most tensor bytes live at once during ``step()``, from the torch profiler's memory timeline."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(categories) for categories in sizes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="train steps per timed sample")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # export_memory_timeline's deprecation notice
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), os.getloadavg()
    built = {case: build_case(case, args.model, args.img_size, args.batch) for case in CASES}
    steps = {case: b[0] for case, b in built.items()}
    for step in steps.values():  # warm-up: optimizer state, allocator, first-call overheads
        step()
    peak = {case: peak_tensor_bytes(step) / 2**20 for case, step in steps.items()}

    def measure(_, step):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        return (time.perf_counter() - start) / args.steps

    times = _interleaved(steps, args.rounds, measure)
    seconds = {case: _median(t) for case, t in times.items()}
    time_ratio, memory_ratio = {}, {}
    for kind, twin in PEFT_TWIN.items():
        for variant in ("off", "pace"):
            case = f"{variant} {kind}"
            time_ratio[case] = _round_ratios({case: times[case], twin: times[twin]}, twin)[case]
            memory_ratio[case] = peak[case] / peak[twin]
    rows = [[case, seconds[case], time_ratio.get(case, 1.0), peak[case], memory_ratio.get(case, 1.0),
             built[case][1]] for case in CASES]
    print(_table(f"train step vs the matching PEFT method: {args.model} at {args.img_size}, batch {args.batch}, "
                 f"{torch.get_num_threads()} threads, {args.rounds} rounds",
                 ["case", "s/step", "time / PEFT", "peak MiB", "memory / PEFT", "trainable"], rows))
    if args.json_out:
        report = {
            "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "seconds": time.perf_counter() - started},
            "config": {"model": args.model, "img_size": args.img_size, "batch": args.batch, "rank": RANK,
                       "layout": {k: {"targets": t, "feedforward": f} for k, (t, f) in LAYOUT.items()},
                       "rounds": args.rounds, "steps": args.steps,
                       "memory": "torch profiler memory timeline, peak total tensor bytes in one step"},
            "seconds": seconds, "time_ratio_to_peft": time_ratio, "peak_tensor_mib": peak,
            "memory_ratio_to_peft": memory_ratio, "trainable": {c: b[1] for c, b in built.items()}, "raw": times,
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
