"""Every analysis and restoration method on a random-weight Llama of a chosen size, with no download:
wall time, peak memory against the weights' bytes, and pass or fail per command (issue 13).

The model is built from a config (``--size tiny|135m|1b|8b``, or ``--hidden``/``--layers``) with the
demo's tokenizer (the project's own SmolLM2 asset), a random LoRA adapter (peft, q/v) on it, a second
random model as Safe LoRA's "unaligned original", and random text files of the demo's shapes for the
analyses that take set files. Each command runs as the CLI runs it, ``python -m core ... --json`` in
its own process with tiny settings and a fresh cache, so nothing is answered from a cache.

Landscape and basin run with ``--direction-memory regenerate`` (the lean path, reported in the
"memory" column). Restoration methods run on tiny data and a tiny held-out evaluation
(``RESTORE_DATA``), RESTA with an existing unaligned model. Memory comes from ``bench/peak.py``:
"over base" is (peak RSS - the RSS of a process that only imports the engine) / weight bytes; "one
batch" the largest rise of RSS within one model forward call (one batch's activations); "net" the
same as "over base" with the peak taken outside forward calls, the quantity issue 13's targets
bound ("activations of one batch reported apart"). With CUDA, the same split of torch's GPU
allocations, which the targets then bound. Targets are judged from 128 MiB of weights up (at the
tiny size the interpreter dominates); a missed target fails the run.

    python bench/scale.py --size tiny                  # a minute or two on one core
    python bench/scale.py --size 1b --threads 2        # CPU, the issue's closing check
    python bench/scale.py --device cuda --size 8b      # the check for a machine with a GPU

``--only correlate,interpolate`` runs a subset (``curvature`` is the analysis, ``"restore curvature"``
the method); ``--keep DIR`` keeps the model, data and cache (a rerun in it starts from an empty cache).
Exit status 1 when any command fails or misses its target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peak import status_bytes  # noqa: E402
from core.world.models import ModelSpec, load_tokenizer  # noqa: E402
from core.world.placement import weight_bytes  # noqa: E402

# hidden, layers, heads, kv heads, intermediate (vocabulary: the demo tokenizer's 49,152)
SIZES = {
    "tiny": (64, 2, 4, 2, 128),
    "135m": (576, 30, 9, 3, 1536),  # SmolLM2-135M
    "1b": (2048, 16, 32, 8, 8192),  # Llama-3.2-1B
    "8b": (4096, 32, 32, 8, 14336),  # Llama-3.1-8B
}
# the targets, peak / weight bytes with one batch's activations apart
TARGETS = {"landscape": 1.5, "basin": 1.5, "curvature": 1.5, "restore direction": 2.5, "restore resta": 2.0}
TARGETS["restore safelora"] = 2.0
# "curvature over LoRA": the analysis and the restoration loop over LoRA (its first-order baseline too)
TARGETS["restore curvature"] = TARGETS["restore gradient-ascent"] = 1.5
TARGETS_FROM = 128 * 2**20  # weight bytes from which the targets are judged (below, the interpreter dominates)
TINY = {
    "correlate": "--n 4 --null-seeds 1 --null-examples 3".split(),
    # a fixed radius: the fit walks out until the loss rises, far (and slowly) on an untrained model
    "landscape": "--grid 5 --samples 2 --no-floor --radius 0.05 --direction-memory regenerate".split(),
    "curvature": (
        "--k 2 --layers 1 --samples 2 --probe-tokens 16 --lanczos-steps 4 --trace-probes 2 --drift-steps 4 "
        "--every 2 --train-examples 2 --probe-samples 4"
    ).split(),
    # a fixed range: a random model is not aligned, so no basin edge can be fitted on it
    "basin": (
        "--directions 1 --points 3 --plane-points 3 --prompts 2 --max-new-tokens 4 --radius 0.05 "
        "--direction-memory regenerate"
    ).split(),
}
LBFGS = ["iterations=1", "pairs=2", "pair_batch=2", "batch_size=2", "step_grid=1.0"]
METHODS = {
    "curvature": LBFGS,
    "gradient-ascent": LBFGS,
    "direction": ["rounds=2", "warmup_rounds=1", "batch_size=4"],
    "interpolate": [],
    # RESTA's own setting, an existing harmfully fine-tuned model (here the second random model): no SFT
    "resta": ["scale=1", "unaligned={unaligned}"],
    "safelora": ["unaligned={unaligned}"],
}
# every method's data and held-out evaluation, tiny: short own answers, few forget prompts, a small
# monitor and fuse, 8 examples per held-out set and 2 capability items per task
RESTORE_DATA = (
    "--harmful-tokens 8 --response-tokens 4 --forget 8 --monitor 4 --fuse 4 --eval-examples 8 --capability-items 2"
).split()
SET_FILES = {"correlate": ("harmful", "task", "general"), "landscape": ("harmful", "benign")}
WORDS = "the a model date answer safe task general prompt response token example layer weight".split()


def build(
    root: Path, size: tuple[int, int, int, int, int], dtype: torch.dtype, device: str, tokenizer: str | None = None
) -> dict[str, Path]:
    """Random base, a second random model (Safe LoRA's unaligned original) and a random LoRA adapter,
    with ``tokenizer``'s tokenizer (default: the demo's SmolLM2)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.world.demo import raw_model_path

    hidden, layers, heads, kv, inter = size
    tok = load_tokenizer(ModelSpec(tokenizer or raw_model_path()))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        initializer_range=0.2 if hidden <= 128 else 0.02,  # tiny: outputs depend on the prompt
    )
    paths = {"base": root / "base", "unaligned": root / "unaligned", "adapter": root / "adapter"}
    build_device = device if device.startswith("cuda") else "cpu"
    for seed, name in ((0, "base"), (1, "unaligned")):
        torch.manual_seed(seed)
        with torch.device(build_device):
            model = LlamaForCausalLM(config).to(dtype)
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
        if name == "base":
            peft = get_peft_model(
                model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
            )
            with torch.no_grad():
                for pname, p in peft.named_parameters():
                    if "lora_B" in pname:
                        p.normal_(0, 0.05)
            peft.save_pretrained(paths["adapter"])
        del model
    return paths


def random_sets(root: Path, seed: int = 0) -> dict[str, Path]:
    """Random prompt/response files of the demo's shapes (short instructions, short answers)."""
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    out = {}
    for name, n in (("harmful", 16), ("task", 16), ("general", 16), ("benign", 16)):
        path = root / f"{name}.jsonl"
        rows = [{"prompt": text(rng.randint(8, 24)), "response": text(rng.randint(4, 24))} for _ in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = path
    return out


ENGINE_ONLY = (  # the engine imported, nothing run; its peak RSS as bench/peak.py reports one
    "import json, os, core.service.commands; from bench.peak import status_bytes; "
    "json.dump({'peak': status_bytes('VmHWM')}, open(os.environ['SCALE_MEMORY_FILE'], 'w'))"
)
PEAK = str(ROOT / "bench" / "peak.py")


def run(argv: list[str], env: dict[str, str], work: Path, timeout: float) -> dict:
    """``python -m core *argv`` in one process (through ``bench/peak.py``): wall time, its own peak
    RSS, one batch's activations and the peak outside forward calls, CUDA peak, exit status and the
    last stderr line when it failed."""
    return run_python([PEAK, *argv], env, work, timeout)


def run_python(argv: list[str], env: dict[str, str], work: Path, timeout: float) -> dict:
    """``python *argv`` measured as ``run`` says. Peak RSS is the process's own ``VmHWM`` (sampled
    while it runs, and read at exit): ``wait4``'s ``ru_maxrss`` also counts the forked copy of this
    process before ``exec``, so it never reads below this process's own RSS (the fallback without /proc)."""
    out, err, memory_file = work / "stdout", work / "stderr", work / "memory.json"
    memory_file.unlink(missing_ok=True)
    env = {**env, "SCALE_MEMORY_FILE": str(memory_file), "PYTHONPATH": str(ROOT)}
    start, hwm = time.perf_counter(), 0
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, *argv], stdout=o, stderr=e, cwd=ROOT, env=env)
        deadline = start + timeout
        while True:
            hwm = max(hwm, status_bytes("VmHWM", f"/proc/{proc.pid}/status"))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in err.read_text().splitlines() if ln.strip()]
    answer = out.read_text().strip().splitlines()
    ok = proc.returncode == 0 and bool(answer) and answer[-1].startswith("{")
    memory = json.loads(memory_file.read_text()) if memory_file.exists() else {}
    rss = max(hwm, memory.get("peak", 0)) or usage.ru_maxrss * 1024
    return {
        "path": _memory_path(answer[-1]) if ok else "",
        "wall_s": time.perf_counter() - start,
        "rss": rss,
        "activations": memory.get("activations", 0),
        "outside": memory.get("outside", rss),
        "cuda": memory.get("cuda"),
        "rc": proc.returncode,
        "ok": ok,
        "why": "" if ok else (lines[-1] if lines else f"exit {proc.returncode}")[:160],
    }


def _memory_path(line: str) -> str:
    """The ``direction_memory`` an answer reports (landscape: at the top; basin: per model), or ""."""
    answer = json.loads(line)
    parts = [answer, *(v for v in answer.values() if isinstance(v, dict))]
    found = {p.get("direction_memory") for p in parts}
    return ",".join(sorted(p for p in found if p))


def commands(paths: dict[str, Path], sets: dict[str, Path], only: set[str]) -> list[tuple[str, list[str]]]:
    pair = ["--base", str(paths["base"]), "--finetuned", str(paths["adapter"])]
    out = []
    for name, tiny in TINY.items():
        files = [a for s in SET_FILES.get(name, ()) for a in (f"--{s}-file", str(sets[s]))]
        out.append((name, [name, *pair, *tiny, *files]))
    for name, params in METHODS.items():
        flags = [a for p in params for a in ("--param", p.format(unaligned=paths["unaligned"]))]
        out.append((f"restore {name}", ["restore", "--method", name, *pair, *flags, *RESTORE_DATA]))
    return [(n, a) for n, a in out if not only or n in only or _method_named(n, only)]


def _method_named(name: str, only: set[str]) -> bool:
    """``restore X`` is also chosen by the bare ``X``, unless ``X`` names an analysis too (``curvature``:
    the analysis; write ``restore curvature`` for the method)."""
    bare = name.removeprefix("restore ")
    return bare != name and bare in only and bare not in TINY


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny")
    ap.add_argument("--hidden", type=int, help="hidden size (with --layers: a custom size)")
    ap.add_argument("--layers", type=int, help="number of layers")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per command (0: all cores)")
    ap.add_argument("--only", default="", help="comma-separated subset of commands")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--keep", help="build in (and keep) this folder instead of a temporary one")
    ap.add_argument("--tokenizer", help="model directory whose tokenizer to use (default: the demo's SmolLM2)")
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = ap.parse_args()

    size = SIZES[args.size]
    if args.hidden or args.layers:
        hidden = args.hidden or size[0]
        heads = max(1, hidden // 64)
        size = (hidden, args.layers or size[1], heads, max(1, heads // 4), 4 * hidden)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="scale-"))
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "cache", ignore_errors=True)  # a kept folder's cache would answer the commands
    try:
        t0 = time.perf_counter()
        paths = build(root, size, dtype, args.device, args.tokenizer)
        sets = random_sets(root)
        weights = weight_bytes(paths["base"], dtype)
        print(
            f"random Llama hidden {size[0]}, {size[1]} layers: {weights / 2**20:.1f} MiB of weights "
            f"({str(dtype).removeprefix('torch.')}), built in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        env = {
            **os.environ,
            "SAFETY_CACHE_DIR": str(root / "cache"),  # a fresh cache: nothing answered from a previous run
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "SAFETY_ALLOWED_ROOTS": str(root),
        }
        common = ["--json", "--threads", str(args.threads), "--device", args.device]
        base = run_python(["-c", ENGINE_ONLY], env, root, args.timeout)  # the engine alone
        base_rss = base["rss"]
        rows = []
        for name, argv in commands(paths, sets, {c for c in args.only.split(",") if c}):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            r = run([*argv, *common], env, root, args.timeout)
            r.update(command=name, over_base=(r["rss"] - base_rss) / weights, target=TARGETS.get(name))
            r.update(net=(r["outside"] - base_rss) / weights, activations_ratio=r["activations"] / weights)
            if r["cuda"] is not None:  # on the GPU: the same split of torch's allocations, which the target bounds
                r["cuda_ratio"] = r["cuda"]["peak"] / weights
                r["cuda_net"] = r["cuda"]["outside"] / weights
            judged = r["target"] is not None and r["ok"] and weights >= TARGETS_FROM
            r["met"] = r.get("cuda_net", r["net"]) <= r["target"] if judged else None
            rows.append(r)
        print_table(rows, weights, base_rss)
        if args.json:
            print(json.dumps({"weights_bytes": weights, "engine_rss": base_rss, "rows": rows}))
        return 0 if all(r["ok"] and r["met"] is not False for r in rows) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def print_table(rows: list[dict], weights: int, base_rss: int) -> None:
    cuda = any(r["cuda"] is not None for r in rows)
    print(f"weights {weights / 2**20:.1f} MiB; engine import alone {base_rss / 2**20:.0f} MiB RSS")
    print("over base: (peak RSS - engine) / weights; one batch: the largest RSS rise within one forward call;")
    print("net: (peak RSS outside forward calls - engine) / weights, the quantity the target bounds")
    if weights < TARGETS_FROM:
        print(f"targets not judged below {TARGETS_FROM // 2**20} MiB of weights (the interpreter dominates)")
    head = f"{'command':<26} {'wall s':>8} {'peak RSS MiB':>13} {'over base':>10} {'one batch MiB':>14} {'net':>6}"
    if cuda:
        print("CUDA: torch's peak allocation / weights, and its net (outside forward calls), which the target bounds")
    print(head + (f" {'CUDA peak':>10} {'CUDA net':>9}" if cuda else "") + f" {'target':>7} {'memory':>10}  result")
    for r in rows:
        line = f"{r['command']:<26} {r['wall_s']:>8.1f} {r['rss'] / 2**20:>13.0f} {r['over_base']:>10.2f}"
        line += f" {r['activations'] / 2**20:>14.0f} {r['net']:>6.2f}"
        nan = float("nan")
        line += f" {r.get('cuda_ratio', nan):>10.2f} {r.get('cuda_net', nan):>9.2f}" if cuda else ""
        target = f"{r['target']:.1f}" if r["target"] else "-"
        verdict = {None: "", True: ", target met", False: ", target MISSED"}[r["met"]]
        result = f"pass{verdict}" if r["ok"] else f"FAIL ({r['why']})"
        print(line + f" {target:>7} {r['path'] or '-':>10}  " + result)


if __name__ == "__main__":
    sys.exit(main())
