"""Training benchmark on CPU: throughput and peak memory, baseline vs FullCube; a learning check.

Throughput: `examples/unet.py` (the classic U-Net, width 64) and `smp:Unet:resnet18` at
256×256, each unconverted and FullCube (`make_plan(..., preset="fullcube")` → `convert`: every
eligible 3×3 conv replaced by a default Cube block), trained with the trainer's step (BCE loss,
Adam, channels_last, the trainer's input normalisation) on synthetic tiles. The four
configurations run side by side in one process, one step each in turn (round-robin), so load
drift on this shared machine hits all alike; images/s are medians after warm-up steps.

Peak memory: one fresh subprocess per configuration, which builds the model, notes its RSS,
resets the kernel's high-water mark (`/proc/self/clear_refs` ← 5), runs the same training
steps and reads `VmHWM` from /proc/self/status; the table shows the process's peak RSS and the
increase during training (activations, gradients, optimiser state, allocator caches).
`ru_maxrss` is not used: Linux carries the parent's high-water mark across fork + exec, so a
child of a process that already holds four models reports the parent's peak. tracemalloc
does not see torch's allocations.

Learning check (`--learning`): `cubesearch.training.train` on the embedded synthetic dataset,
`smp:Unet:resnet18` from scratch, baseline and FullCube, for a fixed budget of steps at 128×128,
with several seeds (model init and data order; the tiles are the same for every run); the
validation IoU, mean and spread.

Run: `nice -n 10 python benchmarks/train.py [--batch 2] [--steps 6]` and
`nice -n 10 python benchmarks/train.py --learning [--learning-steps 300]`; write
benchmarks/results/train.md and benchmarks/results/train-learning.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import machine, md_table  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.markdown import Markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = (str(ROOT / "examples" / "unet.py"), "smp:Unet:resnet18")


def short(spec: str) -> str:
    return "examples/unet.py" if spec.endswith("unet.py") else spec


def build(spec: str, variant: str, size: int, flops: bool = True) -> tuple[torch.nn.Module, dict]:
    """(model, facts): the unconverted model or its FullCube conversion, and its GFLOPs."""
    from cubesearch.cost.pricing import CostModel
    from cubesearch.models.load import load_model
    from cubesearch.plan.conversion import convert
    from cubesearch.plan.plan import make_plan
    from cubesearch.plan.sites import find_sites

    torch.manual_seed(0)
    model = load_model(spec)
    report = find_sites(model, input_size=(3, size, size), flops=flops)
    facts = {"sites": len(report.sites), "replaced": 0}
    plan, notes = make_plan(report, spec, preset="fullcube" if variant == "fullcube" else "none",
                            model_kwargs={"num_classes": 1, "in_channels": 3})
    if variant == "fullcube":
        model = convert(model, plan)
        facts["replaced"] = len(plan.sites)
        facts["notes"] = notes
    if flops:
        facts["gflops"] = CostModel.from_report(report).flops(plan) / 1e9
    facts["params"] = sum(p.numel() for p in model.parameters())
    return model, facts


class Stepper:
    """One training step as the trainer does it on CPU: channels_last, normalised input, BCE
    on the logits, Adam."""

    def __init__(self, model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        from cubesearch.training import Inputs, logits_of, make_loss

        self.model = model.to(memory_format=torch.channels_last).train()
        self.inputs = Inputs(3, torch.device("cpu"), True)
        self.loss = make_loss("bce", 1)
        self.logits_of = logits_of
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.batches = batches
        self.i = 0

    def __call__(self) -> int:
        image, mask = self.batches[self.i % len(self.batches)]
        self.i += 1
        x, y = self.inputs(image, mask)
        logits = self.logits_of(self.model(x), tuple(y.shape[-2:]))
        value = self.loss(logits, y)
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        self.opt.step()
        return x.shape[0]


def make_batches(size: int, batch: int, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from cubesearch.training.data.synthetic import SyntheticBuildings

    ds = SyntheticBuildings(batch * n, size, seed=0)
    out = []
    for b in range(n):
        items = [ds[b * batch + i] for i in range(batch)]
        out.append((torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])))
    return out


# --- peak memory: one subprocess per configuration --------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(spec: str, variant: str, size: int, batch: int, steps: int) -> None:
    """Peak RSS of this (fresh) process: VmHWM, per address space, so unlike ru_maxrss it
    does not inherit the parent's high-water mark across fork + exec."""
    model, _ = build(spec, variant, size, flops=False)
    stepper = Stepper(model, make_batches(size, batch))
    hwm_setup = _status_kib("VmHWM")
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(steps):
        stepper()
    hwm_train = _status_kib("VmHWM")
    print(json.dumps({"before_mib": rss_before / 1024,
                      "peak_mib": max(hwm_setup, hwm_train) / 1024,
                      "train_peak_mib": hwm_train / 1024}))


def measure_memory(spec: str, variant: str, size: int, batch: int, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--_memory", spec, variant, str(size), str(batch), str(steps)]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"memory subprocess failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- throughput ---------------------------------------------------------------------------------


def throughput(args) -> str:
    configs = [(spec, variant) for spec in MODELS for variant in ("baseline", "fullcube")]
    batches = make_batches(args.size, args.batch)
    steppers, facts = {}, {}
    for spec, variant in configs:
        model, facts[(spec, variant)] = build(spec, variant, args.size)
        steppers[(spec, variant)] = Stepper(model, batches)
    samples: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    for r in range(args.warmup + args.steps):
        for c in configs:
            t0 = time.perf_counter()
            n = steppers[c]()
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                samples[c].append(n / dt)
        print(f"round {r + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
    del steppers
    memory = {c: measure_memory(c[0], c[1], args.size, args.batch, args.mem_steps)
              for c in configs}
    rows = []
    for spec in MODELS:
        base = statistics.median(samples[(spec, "baseline")])
        for variant in ("baseline", "fullcube"):
            c = (spec, variant)
            med = statistics.median(samples[c])
            f, m = facts[c], memory[c]
            f_base = facts[(spec, "baseline")]
            rows.append([
                short(spec), "FullCube" if variant == "fullcube" else "baseline",
                f"{f['replaced']}/{f['sites']}", f"{f['gflops']:.2f}",
                f"{f['gflops'] / f_base['gflops']:.2f}×", f"{f['params'] / 1e6:.2f} M",
                f"{med:.2f}", f"{min(samples[c]):.2f}–{max(samples[c]):.2f}",
                f"{med / base:.2f}×", f"{m['peak_mib']:,.0f}",
                f"{m['train_peak_mib'] - m['before_mib']:,.0f}"])
    header = ["model", "variant", "sites replaced", "GFLOPs/img (eval, cost model)",
              "FLOPs vs baseline", "params", "train img/s (median)", "range", "speed vs baseline",
              "peak RSS MiB", "RSS increase in training MiB"]
    notes = sorted({n for f in facts.values() for n in f.get("notes", [])})
    return (f"CPU training throughput at 3×{args.size}×{args.size}, batch {args.batch}: "
            f"{args.steps} timed steps per configuration after {args.warmup} warm-up step(s), "
            f"the four configurations interleaved step by step in one process (ratios are "
            f"fairer than absolute figures, which depend on the load); the step is the "
            f"trainer's (channels_last, BCE, Adam). FullCube = every eligible 3×3 conv → "
            f"`CubeBlock` with the default config (lattice stride 2, groups 4, router pre, "
            f"attention on, depth 1). GFLOPs per image at batch 1 in eval mode (fvcore-exact cost "
            f"model). Peak memory: a fresh subprocess per configuration, `VmHWM` (/proc/self/status) "
            f"over {args.mem_steps} training steps, the high-water mark reset just before "
            f"training: peak RSS of the whole process (Python, torch, the model) and its "
            f"increase over the RSS before training."
            + (f" Notes: {'; '.join(notes)}." if notes else "")
            + "\n\n" + md_table(header, rows))


# --- learning check -------------------------------------------------------------------------


def learning(args) -> str:
    from cubesearch.cost.pricing import CostModel
    from cubesearch.models.load import load_model
    from cubesearch.plan.plan import make_plan
    from cubesearch.plan.sites import find_sites
    from cubesearch.training import train
    from cubesearch.training.data import make_datasets

    spec, size = "smp:Unet:resnet18", args.learning_size
    report = find_sites(load_model(spec), input_size=(3, size, size))
    plan, _ = make_plan(report, spec, preset="fullcube",
                        model_kwargs={"num_classes": 1, "in_channels": 3})
    cost = CostModel.from_report(report)
    datasets = make_datasets("synthetic", size, train_tiles=args.train_tiles,
                             val_tiles=args.val_tiles, seed=0)
    runs = []
    variants = ["baseline", "fullcube"]
    for k, seed in enumerate(args.seeds):
        for variant in (variants if k % 2 == 0 else variants[::-1]):  # alternate the order
            t0 = time.perf_counter()
            res = train(spec, plan=plan if variant == "fullcube" else None, data=datasets,
                        steps=args.learning_steps, input_size=(3, size, size), seed=seed,
                        batch_size=args.learning_batch, progress=False)
            row = {"variant": variant, "seed": seed, "iou": res.metrics["iou"],
                   "f1": res.metrics["f1"], "oa": res.metrics["oa"],
                   "images_per_second": res.metrics["images_per_second"],
                   "minutes": (time.perf_counter() - t0) / 60}
            runs.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    rows = []
    for variant in variants:
        rs = [r for r in runs if r["variant"] == variant]
        ious = [r["iou"] for r in rs]
        spread = (statistics.stdev(ious) if len(ious) > 1 else 0.0)
        gflops = cost.flops(plan if variant == "fullcube" else {}) / 1e9
        rows.append(["FullCube" if variant == "fullcube" else "baseline", f"{gflops:.3f}",
                     f"{statistics.mean(ious):.3f} ± {spread:.3f}",
                     ", ".join(f"{r['iou']:.3f}" for r in rs),
                     f"{statistics.mean(r['f1'] for r in rs):.3f}",
                     f"{statistics.mean(r['oa'] for r in rs):.3f}",
                     f"{statistics.median(r['images_per_second'] for r in rs):.1f}",
                     f"{statistics.mean(r['minutes'] for r in rs):.1f}"])
    header = ["variant", f"GFLOPs at 3×{size}×{size}", "val IoU mean ± sd", "per seed",
              "F1 (mean)", "OA (mean)", "train img/s (median)", "min per run"]
    epochs = args.learning_steps * args.learning_batch / args.train_tiles
    return (f"`cubesearch.training.train(\"{spec}\", plan=…, steps={args.learning_steps}, "
            f"batch_size={args.learning_batch}, input_size=(3, {size}, {size}))` from scratch "
            f"(no pretrained weights, no warm start) on the embedded synthetic dataset: "
            f"{args.train_tiles} training tiles ({epochs:.1f} epochs) and {args.val_tiles} "
            f"validation tiles of {size}×{size} (the same tiles for every run), the trainer's "
            f"defaults otherwise (Adam, lr 2e-3, 5% warmup, cosine, BCE). Seeds "
            f"{', '.join(map(str, args.seeds))} (model init, data order, augmentations); runs "
            f"alternate baseline / FullCube. IoU of the building class over the whole validation "
            f"set; ± is the standard deviation across seeds (with {len(args.seeds)} seeds, a "
            f"rough spread, not a confidence interval).\n\n" + md_table(header, rows))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory":
        spec, variant, size, batch, steps = sys.argv[2:7]
        memory_child(spec, variant, int(size), int(batch), int(steps))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--learning", action="store_true", help="run the learning check instead")
    ap.add_argument("--learning-size", type=int, default=128)
    ap.add_argument("--learning-steps", type=int, default=300)
    ap.add_argument("--learning-batch", type=int, default=8)
    ap.add_argument("--train-tiles", type=int, default=512)
    ap.add_argument("--val-tiles", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("CUBESEARCH_NO_PROGRESS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    if args.learning:
        title = "# Learning check (`benchmarks/train.py --learning`)\n"
        body = learning(args)
        default_out = RESULTS / "train-learning.md"
    else:
        title = "# Training throughput and memory (`benchmarks/train.py`)\n"
        body = throughput(args)
        default_out = RESULTS / "train.md"
    minutes = (time.perf_counter() - t0) / 60
    report = "\n".join([
        title,
        f"Machine: {machine()}. Run with `nice -n 10` while other jobs shared the cores; took "
        f"{minutes:.1f} min. Command: `{' '.join(['python benchmarks/train.py', *sys.argv[1:]])}`.\n",
        body + "\n"])
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    Console(width=160).print(Markdown(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
