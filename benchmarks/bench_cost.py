#!/usr/bin/env python
"""What PACE costs: train-step time and memory against Hugging Face PEFT's LoRA, and per variant, eval throughput merged vs unmerged,
`pace merge` against a file copy, and adapter size against base size.

Everything compared is measured side by side in one run: repetitions are interleaved (the
order rotates each round) and medians are reported, because the machine this runs on is noisy.
Memory figures come from the kernel's peak-RSS counter (VmHWM) of a fresh subprocess per
variant, so each figure has its own peak.

    python benchmarks/bench_cost.py --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("off", "pace", "lazy", "fast")
DOUBLE_BATCH_OFF = "off, 2x batch"
KIND, RANK = "lora_mul+vpt_add", 10
TARGETS = ["qkv", "proj", "fc1", "fc2"]
NUM_CLASSES = 10

# model configs: timm name, timm kwargs, input shape, train batch, eval batch
CONFIGS = {
    "vit_s": dict(name="vit_small_patch16_224", kwargs=dict(img_size=224), input=(3, 224, 224),
                  batch=8, eval_batch=16),
    "tiny": dict(name="vit_tiny_patch16_224",
                 kwargs=dict(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=6, num_heads=4),
                 input=(1, 28, 28), batch=64, eval_batch=256),
}


# ---------------------------------------------------------------- helpers


def _status_mb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) / 1024


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


# Runs the measured command from a small interpreter: Linux keeps ru_maxrss across fork and exec,
# so a child forked straight from this (torch-sized) process would inherit our peak RSS.
_LAUNCH = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "maxrss_kb": usage.ru_maxrss,
                  "code": os.waitstatus_to_exitcode(status)}), file=sys.stderr)
"""


def _run(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, its peak RSS in MiB, stdout)."""
    cmd = [shutil.which(cmd[0]) or cmd[0]] + cmd[1:]
    proc = subprocess.run([sys.executable, "-c", _LAUNCH] + cmd, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"code": proc.returncode}
    if proc.returncode or result["code"]:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
    return result["wall"], result["maxrss_kb"] / 1024, proc.stdout


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _interleaved(candidates: dict, rounds: int, measure) -> dict[str, list[float]]:
    """``measure(name, obj) -> seconds`` for every candidate, ``rounds`` times, rotating the order."""
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(measure(name, candidates[name]))
    return times


def _round_ratios(times: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of (time / reference time in the same round): robust to slow phases."""
    return {n: _median([a / b for a, b in zip(ts, times[reference])]) for n, ts in times.items()}


def _table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- 1. train step


def _build_trainer(config: str, variant: str, noise_free_blocks: int, batch_factor: int = 1,
                   per_sample_weights: bool = True):
    import timm
    import torch

    from pace_cli.adapters import AdapterConfig, adapted_layers, inject_adapters
    from pace_cli.regularizer import PaceConfig, PaceRegularizer

    cfg = CONFIGS[config]
    torch.manual_seed(0)  # same weights for every variant
    model = timm.create_model(cfg["name"], pretrained=False, num_classes=NUM_CLASSES, **cfg["kwargs"])
    inject_adapters(model, AdapterConfig(kind=KIND, rank=RANK), num_classes=NUM_CLASSES)
    for layer in adapted_layers(model).values():
        layer.per_sample_weights = per_sample_weights
    with torch.no_grad():  # non-zero adapters, as after some training (cost does not depend on it)
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    batch = cfg["batch"] * batch_factor
    reg = PaceRegularizer(model, PaceConfig(variant=variant, noise_free_blocks=noise_free_blocks),
                          num_train_samples=4 * batch, num_classes=NUM_CLASSES)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn((batch,) + cfg["input"], generator=g), torch.randint(0, NUM_CLASSES, (batch,), generator=g),
            torch.arange(batch))
    counter = [0]

    def step():
        images, labels, indices = data
        parts = reg.loss(images, labels, indices, counter[0])
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()
        counter[0] += 1

    return step


def bench_train_time(config: str, noise_free_blocks: int, rounds: int, steps: int = 2) -> dict:
    """Per-step seconds; each sample is ``steps`` consecutive steps so `lazy` shows its average."""
    steppers = {v: _build_trainer(config, v, noise_free_blocks) for v in VARIANTS}
    # PACE's floor: `pace` runs every layer after the noise-free ones on 2B samples, so the
    # baseline on a doubled batch shows what doubling the batch costs on this machine.
    steppers[DOUBLE_BATCH_OFF] = _build_trainer(config, "off", noise_free_blocks, batch_factor=2)
    # the noisy layers without per-sample weights (two matmuls): what the fused path saves
    for v in ("pace", "fast"):
        steppers[f"{v}, two-matmul path"] = _build_trainer(config, v, noise_free_blocks, per_sample_weights=False)
    for s in steppers.values():  # warm-up: allocator, first-call overheads, the `fast` memory
        for _ in range(steps):
            s()

    def measure(name, step):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    times = _interleaved(steppers, rounds, measure)
    return {"seconds": {v: _median(t) for v, t in times.items()}, "ratio": _round_ratios(times, "off"),
            "raw": times}


def _worker_train_memory(config: str, variant: str, noise_free_blocks: int) -> dict:
    step = _build_trainer(config, variant, noise_free_blocks)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    for _ in range(2):  # lazy's paired and plain step; the optimiser state is made in the first
        step()
    return {"rss_before_mb": before, "peak_mb": _status_mb("VmHWM")}


def bench_train_memory(config: str, noise_free_blocks: int) -> dict:
    out = {}
    for v in VARIANTS:
        _, _, text = _run([sys.executable, __file__, "--worker", "train-memory", config, v, str(noise_free_blocks)])
        r = json.loads(text.strip().splitlines()[-1])
        r["step_mb"] = r["peak_mb"] - r["rss_before_mb"]
        out[v] = r
    for v in VARIANTS:
        out[v]["step_ratio"] = out[v]["step_mb"] / out["off"]["step_mb"]
    return out


# ---------------------------------------------------------------- 1c. against PEFT's LoRA (issue 10)

PEFT_RANK = 8
# name -> (adapter kind, PACE variant, factored lora_add forward); "peft" is Hugging Face PEFT's LoRA
PEFT_CASES = {
    "peft lora": None,
    "off lora_add": ("lora_add", "off", True),
    "off lora_add, dense ΔW (before)": ("lora_add", "off", False),
    "fast lora_add": ("lora_add", "fast", True),
    "pace lora_add": ("lora_add", "pace", True),
    "off lora_mul": ("lora_mul", "off", True),
    "off lora_mul+vpt_add": ("lora_mul+vpt_add", "off", True),
    "pace lora_mul+vpt_add": ("lora_mul+vpt_add", "pace", True),
}
PEFT_TARGETS = {  # figure -> (case, target ratio to PEFT's step)
    "off lora_add": 1.0, "fast lora_add": 1.05, "pace lora_add": 2.0,
    "off lora_mul+vpt_add": 1.1, "pace lora_mul+vpt_add": 2.2,
}


def _build_peft_case(config: str, case: str):
    """One train step (forward, cross-entropy, backward, AdamW) of a case in PEFT_CASES."""
    import timm
    import torch

    cfg = CONFIGS[config]
    torch.manual_seed(0)
    model = timm.create_model(cfg["name"], pretrained=False, num_classes=NUM_CLASSES, **cfg["kwargs"])
    batch = cfg["batch"]
    g = torch.Generator().manual_seed(1)
    images = torch.randn((batch,) + cfg["input"], generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    spec = PEFT_CASES[case]
    if spec is None:
        from peft import LoraConfig, get_peft_model

        # lora_alpha = r: PEFT's scale alpha/r is 1, as in pace's B A; the new head is trained in full
        model = get_peft_model(model, LoraConfig(r=PEFT_RANK, lora_alpha=PEFT_RANK, target_modules=TARGETS,
                                                 modules_to_save=["head"]))
        loss_fn = lambda: torch.nn.functional.cross_entropy(model(images).float(), labels)  # noqa: E731
    else:
        from pace_cli.adapters import AdapterConfig, adapted_layers, inject_adapters
        from pace_cli.regularizer import PaceConfig, PaceRegularizer

        kind, variant, factored = spec
        inject_adapters(model, AdapterConfig(kind=kind, rank=PEFT_RANK, targets=tuple(TARGETS)),
                        num_classes=NUM_CLASSES)
        for layer in adapted_layers(model).values():
            layer.factored_lora = factored
        reg = PaceRegularizer(model, PaceConfig(variant=variant), num_train_samples=4 * batch,
                              num_classes=NUM_CLASSES)
        indices, counter = torch.arange(batch), [0]

        def loss_fn():
            counter[0] += 1
            return reg.loss(images, labels, indices, counter[0]).total
    with torch.no_grad():  # non-zero adapters, as after some training (cost does not depend on it)
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in params)


def bench_vs_peft(config: str, rounds: int, steps: int = 2) -> dict:
    built = {c: _build_peft_case(config, c) for c in PEFT_CASES}
    steppers = {c: b[0] for c, b in built.items()}
    for s in steppers.values():
        for _ in range(steps):
            s()

    def measure(name, step):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    times = _interleaved(steppers, rounds, measure)
    ratio = _round_ratios(times, "peft lora")
    return {"seconds": {c: _median(t) for c, t in times.items()}, "ratio": ratio,
            "trainable": {c: b[1] for c, b in built.items()}, "raw": times,
            "lora_mul_over_lora_add_off": _median([a / b for a, b in zip(times["off lora_mul"],
                                                                         times["off lora_add"])])}


def _worker_peft_memory(config: str, case: str) -> dict:
    step, _ = _build_peft_case(config, case)
    before = _status_mb("VmRSS")
    _reset_peak_rss()
    for _ in range(2):
        step()
    return {"rss_before_mb": before, "peak_mb": _status_mb("VmHWM")}


def bench_peft_memory(config: str, repeats: int = 3) -> dict:
    """Step memory (peak RSS during 2 steps minus RSS before) per case, fresh process each, median of repeats."""
    samples: dict[str, list[float]] = {c: [] for c in PEFT_CASES}
    for _ in range(repeats):
        for case in PEFT_CASES:
            _, _, text = _run([sys.executable, __file__, "--worker", "peft-memory", config, case])
            r = json.loads(text.strip().splitlines()[-1])
            samples[case].append(r["peak_mb"] - r["rss_before_mb"])
    step = {c: _median(v) for c, v in samples.items()}
    return {"step_mb": step, "ratio": {c: step[c] / step["peft lora"] for c in step}, "raw": samples}


# ---------------------------------------------------------------- 2. eval throughput


def bench_eval(config: str, rounds: int, batches: int) -> dict:
    import timm
    import torch

    from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters
    from pace_cli.adapters import merge_state_dict

    cfg = CONFIGS[config]
    torch.manual_seed(0)
    base = timm.create_model(cfg["name"], pretrained=False, num_classes=NUM_CLASSES, **cfg["kwargs"])
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    unmerged = timm.create_model(cfg["name"], pretrained=False, num_classes=NUM_CLASSES, **cfg["kwargs"])
    unmerged.load_state_dict(base_state)
    inject_adapters(unmerged, AdapterConfig(kind=KIND, rank=RANK), num_classes=NUM_CLASSES)
    with torch.no_grad():
        for p in unmerged.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    merged = timm.create_model(cfg["name"], pretrained=False, num_classes=NUM_CLASSES, **cfg["kwargs"])
    merged.load_state_dict(merge_state_dict(base_state, adapter_state_dict(unmerged), KIND), strict=True)
    models = {"base": base.eval(), "merged": merged.eval(), "unmerged": unmerged.eval()}
    images = torch.randn((cfg["eval_batch"],) + cfg["input"], generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        error = (merged(images) - unmerged(images)).abs().max().item()
        for m in models.values():
            m(images)

        def measure(name, model):
            start = time.perf_counter()
            for _ in range(batches):
                model(images)
            return time.perf_counter() - start

        times = _interleaved(models, rounds, measure)
    n = batches * cfg["eval_batch"]
    return {"images_per_s": {k: n / _median(t) for k, t in times.items()},
            "time_ratio": _round_ratios(times, "base"), "merged_vs_unmerged_max_abs_diff": error,
            "batch": cfg["eval_batch"]}


# ---------------------------------------------------------------- 3./4. merge and file sizes

_COPY = """
import json, os, shutil, sys, time
start = time.perf_counter()
shutil.copyfile(sys.argv[1], sys.argv[2])
if sys.argv[3] == "fsync":  # what pace merge does before renaming its output into place
    fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

_MAKE_FILES = """
import sys, torch, timm
from pace_cli import artifacts, files
from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters
torch.manual_seed(0)
model = timm.create_model("vit_base_patch16_224", pretrained=False)
state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
files.save_tensors(sys.argv[1], state)
report = inject_adapters(model, AdapterConfig(kind=%r, rank=%d), num_classes=%d)
with torch.no_grad():
    for p in model.parameters():
        if p.requires_grad:
            p.normal_(0, 0.02)
meta = artifacts.AdapterMetadata(
    kind=%r, rank=%d, targets=%r, layers=report.adapted_layers, head=report.head_name,
    timm_model="vit_base_patch16_224", num_classes=%d,
    base_fingerprint=artifacts.base_fingerprint(state, report.head_name),
    trainable_parameters=report.trainable_parameters).to_metadata()
files.save_tensors(sys.argv[2], adapter_state_dict(model), meta)
""" % (KIND, RANK, NUM_CLASSES, KIND, RANK, TARGETS, NUM_CLASSES)


def _warm(*paths: Path) -> None:
    """Read files fully so every timed command starts from the same (hot) page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 24):
                pass


def bench_merge(workdir: Path, rounds: int) -> dict:
    base, adapter = workdir / "vit_b_base.safetensors", workdir / "vit_b_adapter.safetensors"
    _run([sys.executable, "-c", _MAKE_FILES, str(base), str(adapter)])
    pace = str(Path(sys.executable).with_name("pace"))
    target = workdir / "out.safetensors"
    commands = {
        "copyfile": [sys.executable, "-c", _COPY, str(base), str(target), "plain"],
        "copyfile+fsync": [sys.executable, "-c", _COPY, str(base), str(target), "fsync"],
        "pace merge": [pace, "merge", str(base), str(adapter), "-o", str(target), "--json"],
        # the same imports as `pace merge`, doing nothing: the interpreter's floor
        "imports only": [sys.executable, "-c", "import pace_cli.cli, pace_cli.artifacts"],
    }
    walls: dict[str, list[float]] = {n: [] for n in commands}
    inner: dict[str, list[float]] = {n: [] for n in commands}
    peaks: dict[str, list[float]] = {n: [] for n in commands}

    def measure(name, cmd):
        target.unlink(missing_ok=True)
        _warm(base, adapter)
        wall, peak, text = _run(cmd)
        walls[name].append(wall)
        peaks[name].append(peak)
        if name != "imports only":
            inner[name].append(json.loads(text[text.index("{"):])["seconds"])
        return wall

    _interleaved(commands, rounds, measure)
    target.unlink(missing_ok=True)
    size = base.stat().st_size
    copy_s, merge_s = _median(inner["copyfile"]), _median(inner["pace merge"])
    peak, floor = _median(peaks["pace merge"]), _median(peaks["imports only"])
    return {
        "base_bytes": size, "adapter_bytes": adapter.stat().st_size,
        "seconds_in_process": {n: _median(v) for n, v in inner.items() if v},
        "seconds_whole_command": {n: _median(v) for n, v in walls.items()},
        "peak_rss_mb": {n: _median(v) for n, v in peaks.items()},
        "merge_over_copy": merge_s / copy_s,
        "merge_over_copy_fsync": merge_s / _median(inner["copyfile+fsync"]),
        "merge_over_copy_whole_command": _median(walls["pace merge"]) / _median(walls["copyfile"]),
        "peak_rss_over_file": peak * 2**20 / size,
        "peak_rss_above_imports_over_file": (peak - floor) * 2**20 / size,
        "raw": {"wall": walls, "inner": inner, "peak": peaks},
        "files": (base, adapter),
    }


def _worker_merge_phases(base: str, adapter: str, out: str) -> dict:
    """In-process split of the merge time: reading, fingerprinting, the arithmetic, the whole merge."""
    from pace_cli import artifacts
    from pace_cli.adapters import iter_merged

    ad = artifacts.read_adapter(adapter)

    def read_all():
        with artifacts.LazySafetensors(base) as b:
            for k in b:
                b[k]

    def fingerprint():
        with artifacts.LazySafetensors(base) as b:
            artifacts.base_fingerprint(b, ad.head_name)

    def arithmetic():
        with artifacts.LazySafetensors(base) as b:
            for _ in iter_merged(b, ad.tensors, ad.kind):
                pass

    def merge():
        artifacts.merge_files(base, adapter, out, overwrite=True)

    def merge_two_passes():
        artifacts.merge_files(base, adapter, out, overwrite=True, force=True)

    phases = {"read every tensor": read_all, "fingerprint pass": fingerprint,
              "read + merge arithmetic (iter_merged)": arithmetic,
              "merge_files (one pass, write + fsync)": merge,
              "merge_files force (fingerprint pass first)": merge_two_passes}

    def measure(name, fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    times = _interleaved(phases, 4, measure)
    Path(out).unlink(missing_ok=True)
    return {n: _median(t) for n, t in times.items()}


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json-out", type=Path, help="write all figures (and raw samples) here")
    parser.add_argument("--sections", default="peft,train,memory,eval,merge",
                        help="comma-separated subset of: peft, train, memory, eval, merge")
    parser.add_argument("--rounds-peft", type=int, default=5, help="interleaved rounds, ViT-S vs PEFT")
    parser.add_argument("--memory-repeats", type=int, default=2, help="fresh processes per case, PEFT memory (0: skip)")
    parser.add_argument("--peft-config", default="vit_s", choices=sorted(CONFIGS), help="model of the PEFT section")
    parser.add_argument("--rounds-vit-s", type=int, default=3, help="interleaved rounds for ViT-S (slow)")
    parser.add_argument("--rounds-tiny", type=int, default=10, help="interleaved rounds for the tiny ViT")
    parser.add_argument("--rounds-eval-vit-s", type=int, default=7, help="interleaved rounds, ViT-S eval")
    parser.add_argument("--rounds-merge", type=int, default=3, help="interleaved rounds for merge vs copy")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workdir", type=Path, help="where the ViT-B files go (default: a temporary folder)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the subprocesses
    if args.worker:
        kind, *rest = args.worker
        if kind == "train-memory":
            result = _worker_train_memory(rest[0], rest[1], int(rest[2]))
        elif kind == "peft-memory":
            result = _worker_peft_memory(rest[0], rest[1])
        else:
            result = _worker_merge_phases(*rest)
        print(json.dumps(result))
        return 0

    sections = set(args.sections.split(","))
    started = time.perf_counter()
    report: dict = {"env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                            "loadavg_start": os.getloadavg()}}
    cases = [("vit_s", 0, args.rounds_vit_s), ("vit_s", 1, args.rounds_vit_s),
             ("tiny", 0, args.rounds_tiny), ("tiny", 1, args.rounds_tiny)]

    if "peft" in sections:
        r = report["vs_peft"] = bench_vs_peft(args.peft_config, args.rounds_peft)
        print(f"  vs peft time done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        if args.memory_repeats > 0:
            m = report["vs_peft_memory"] = bench_peft_memory(args.peft_config, args.memory_repeats)
        else:  # timing only
            m = {"step_mb": {c: float("nan") for c in PEFT_CASES}, "ratio": {c: float("nan") for c in PEFT_CASES}}
        rows = [[c, r["seconds"][c] * 1000, r["ratio"][c], PEFT_TARGETS.get(c, ""),
                 m["step_mb"][c], m["ratio"][c], r["trainable"][c]] for c in PEFT_CASES]
        cfg = CONFIGS[args.peft_config]
        print(_table(f"\n0. against PEFT LoRA: {cfg['name']} {cfg['kwargs']}, batch {cfg['batch']}, rank {PEFT_RANK} "
                     f"on {', '.join(TARGETS)}, AdamW; ratio = median per-round ratio to PEFT's step;"
                     "\n   step MiB = peak RSS during 2 steps minus RSS before (fresh process per case, median of repeats)",
                     ["case", "ms/step", "x peft", "target", "step MiB", "mem x peft", "trainable"], rows))
        print(f"   lora_mul / lora_add, off: {r['lora_mul_over_lora_add_off']:.2f}x (the multiplicative form by itself)")

    if "train" in sections:
        rows = []
        for config, nfb, rounds in cases:
            r = report.setdefault("train_time", {})[f"{config}/nfb={nfb}"] = bench_train_time(config, nfb, rounds)
            rows += [[f"{config} b={CONFIGS[config]['batch']}", nfb, v, r["seconds"][v] * 1000, r["ratio"][v]]
                     for v in r["seconds"]]
            print(f"  train time {config} nfb={nfb} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        print(_table("\n1. train step time (median of interleaved rounds; ratio = median per-round ratio to off)",
                     ["model", "noise_free_blocks", "variant", "ms/step", "x off"], rows))

    if "memory" in sections:
        rows = []
        for config, nfb, _ in cases:
            r = report.setdefault("train_memory", {})[f"{config}/nfb={nfb}"] = bench_train_memory(config, nfb)
            rows += [[f"{config} b={CONFIGS[config]['batch']}", nfb, v, r[v]["peak_mb"], r[v]["step_mb"],
                      r[v]["step_ratio"]] for v in VARIANTS]
            print(f"  train memory {config} nfb={nfb} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
        print(_table("\n1b. train peak memory (VmHWM of a fresh process per variant, reset after building the model;"
                     "\n    step MiB = peak during 2 steps minus RSS before them)",
                     ["model", "noise_free_blocks", "variant", "peak MiB", "step MiB", "step x off"], rows))

    if "eval" in sections:
        rows = []
        for config, rounds, batches in (("vit_s", args.rounds_eval_vit_s, 1), ("tiny", args.rounds_tiny, 4)):
            r = report.setdefault("eval", {})[config] = bench_eval(config, rounds, batches)
            rows += [[f"{config} b={r['batch']}", m, r["images_per_s"][m], r["time_ratio"][m]]
                     for m in ("base", "merged", "unmerged")]
        print(_table("\n2. eval throughput (eval mode, inference_mode; ratio = time / base time)",
                     ["model", "weights", "images/s", "time x base"], rows))

    if "merge" in sections:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            r = bench_merge(Path(tmp), args.rounds_merge)
            base, adapter = r.pop("files")
            _, _, text = _run([sys.executable, __file__, "--worker", "merge-phases", str(base), str(adapter),
                               str(Path(tmp) / "phases.safetensors")])
            r["phases_seconds"] = json.loads(text.strip().splitlines()[-1])
        report["merge"] = r
        rows = [[n, r["seconds_in_process"].get(n, float("nan")), r["seconds_whole_command"][n], r["peak_rss_mb"][n]]
                for n in r["seconds_whole_command"]]
        print(_table(f"\n3. ViT-B/16 merge vs copy ({r['base_bytes'] / 2**20:.0f} MiB base, hot page cache)",
                     ["command", "s in process", "s whole command", "peak RSS MiB"], rows))
        print(f"   merge / copyfile: {r['merge_over_copy']:.2f}x in process, "
              f"{r['merge_over_copy_fsync']:.2f}x vs copy+fsync, {r['merge_over_copy_whole_command']:.2f}x whole command")
        print(f"   peak RSS / file size: {r['peak_rss_over_file']:.2f}x "
              f"({r['peak_rss_above_imports_over_file']:.2f}x above the imports-only floor)")
        print(_table("   merge phases, in process:", ["phase", "s"], [[k, v] for k, v in r["phases_seconds"].items()]))
        print(f"\n4. adapter file / base file (ViT-B/16, {KIND} rank {RANK}, {NUM_CLASSES}-class head): "
              f"{r['adapter_bytes'] / 2**20:.2f} MiB / {r['base_bytes'] / 2**20:.1f} MiB = "
              f"{100 * r['adapter_bytes'] / r['base_bytes']:.2f}%")

    report["env"]["loadavg_end"] = os.getloadavg()
    report["env"]["seconds"] = time.perf_counter() - started
    print(f"\nload average start {report['env']['loadavg_start'][0]:.2f}, end {os.getloadavg()[0]:.2f}; "
          f"{report['env']['seconds']:.0f}s", file=sys.stderr)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
