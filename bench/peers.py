"""This project's curvature and landscape against the peer libraries, on the same model, data and
parameters (issue 15's table), printed as ratios with agreement checks:

(a) one Hessian-vector product / one gradient on the same batch: the first product (forward,
    create_graph backward, one more backward) and each further product (one backward through the
    kept gradient graph), beside today's path (every product from scratch); PyHessian 0.1 (its
    ``hessian`` class keeps ``gradsH`` the same way) and curvlinops (``HessianLinearOperator``,
    torch.func jvp over jacrev, nothing kept);
(b) the top 4 eigenvalues: Lanczos with the stopping rule and kept graph against the fixed-step
    Lanczos of before and scipy ``eigsh`` over curvlinops' operator (PyHessian's power iteration
    with ``--pyhessian-eigenvalues``, slow);
(c) one landscape grid point / one forward: ``core.geometry.landscape.surface`` against
    loss-landscapes' ``random_plane``, each point's cost the slope between a 3 x 3 and a 6 x 6 grid.

The peers are optional: each row is measured for a peer only when it imports. Install them for
the bench only, never into requirements.txt, e.g. a venv that sees this project's packages:

    python3.11 -m venv /work/peers-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /work/peers-venv/lib/python3.11/site-packages/main.pth
    /work/peers-venv/bin/pip install --no-deps pyhessian curvlinops-for-pytorch loss-landscapes einops \
        einconv linear_operator jaxtyping wadler_lindig backpack-for-pytorch unfoldNd

Run: /work/peers-venv/bin/python bench/peers.py --threads 2 (the demo world's fine-tuned model, its
460,800 LoRA weights, 8 curvature-probe examples, 50 Lanczos steps); --quick: a tiny random Llama
with a LoRA adapter, to check the script works in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import interleaved_times, median_time  # noqa: E402
from core.base.progress import Progress  # noqa: E402
from core.geometry.curvature import HessianOperator, select_parameters, top_eigenpairs  # noqa: E402
from core.geometry.landscape import (  # noqa: E402
    LandscapeConfig,
    mean_loss,
    perturbed_parameters,
    random_direction,
    surface,
)
from core.world.data import safety_probe  # noqa: E402
from core.world.loss import encode  # noqa: E402
from core.world.models import ModelSpec, load_model, load_tokenizer  # noqa: E402


# ---------------------------------------------------------------------------- the problem
def tiny_pair(root: Path) -> ModelSpec:
    """A 2-layer hidden-32 random Llama with the SmolLM2 tokenizer and a LoRA adapter (q, v; r=2)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.world.demo import raw_model_path

    tok = load_tokenizer(ModelSpec(raw_model_path()))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    peft = get_peft_model(
        LlamaForCausalLM.from_pretrained(root / "model"),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(root / "adapter")
    return ModelSpec(str(root / "model"), str(root / "adapter"))


class Logits(torch.nn.Module):
    """A Hugging Face causal LM as the peers call a model: a batch dict in, the logits at the
    counted positions out (one row per counted token, as this project computes them: prompt and
    padding positions cost no vocabulary projection)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        counted = torch.zeros_like(batch["labels"], dtype=torch.bool)
        counted[:, :-1] = batch["labels"][:, 1:] != -100
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=counted,
            use_cache=False,
        )
        return out.logits.reshape(-1, out.logits.size(-1))


class ExampleMeanLoss(torch.nn.Module):
    """This project's loss from those logits and the labels: per example, the mean cross-entropy of
    its counted tokens (label != -100), then the mean over examples (``reduction`` for curvlinops)."""

    reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        counted = labels[:, 1:] != -100
        tok = F.cross_entropy(logits.float(), labels[:, 1:][counted], reduction="none")
        rows = counted.nonzero()[:, 0]
        total = torch.zeros(labels.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
        return (total / counted.sum(1).clamp(min=1)).mean()


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-300))


# ---------------------------------------------------------------------------- (a) products
def products(model, params: dict, batch: dict, reps: int) -> dict:
    """Gradient, first and further product (kept graph), today's product; the peers' products."""
    kept = HessianOperator(model, params, [batch])
    fresh = HessianOperator(model, params, [batch], graph_memory_gb=0.0)
    v = np.random.default_rng(0).standard_normal(kept.size)
    fresh.gradient(), fresh.matvec(v)  # warm-up
    want = fresh.matvec(v)

    def first() -> None:
        kept.release()
        kept.matvec(v)

    out: dict = {"params": kept.size, "gradient_s": median_time(fresh.gradient, reps)}
    out["ours"] = {
        "first_s": median_time(first, reps),
        "further_s": median_time(lambda: kept.matvec(v), reps),
        "today_s": median_time(lambda: fresh.matvec(v), reps),
        "agreement": relative(kept.matvec(v), want),
        "graph": kept.graph_report(),
    }
    plist = list(params.values())
    vt = [t.clone() for t in kept._split(v)]
    try:
        from pyhessian import hessian
        from pyhessian.utils import hessian_vector_product
    except ImportError as e:
        out["pyhessian"] = {"skipped": f"not importable ({e})"}
    else:
        wrapped, loss = Logits(model), ExampleMeanLoss()
        state: dict = {}

        def build() -> None:
            for p in plist:
                p.grad = None
            with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no double backward
                state["h"] = hessian(wrapped, loss, data=(batch, batch["labels"]), cuda=False)
            state["hv"] = hessian_vector_product(state["h"].gradsH, state["h"].params, vt)

        further = lambda: hessian_vector_product(state["h"].gradsH, state["h"].params, vt)  # noqa: E731
        # gradient, both first products, then both further products, each set timed in turn
        turns = interleaved_times({"gradient": fresh.gradient, "ours": first, "pyhessian": build}, reps)
        out["gradient_s"], out["ours"]["first_s"] = turns["gradient"], turns["ours"]
        out["pyhessian"] = {"first_s": turns["pyhessian"], "agreement": relative(kept._flat(state["hv"]), want)}
        turns = interleaved_times({"ours": lambda: kept.matvec(v), "pyhessian": further}, reps)
        out["ours"]["further_s"], out["pyhessian"]["further_s"] = turns["ours"], turns["pyhessian"]
        state.clear()
        for p in plist:
            p.grad = None
    operator = curvlinops_operator(model, plist, batch)
    if isinstance(operator, str):
        out["curvlinops"] = {"skipped": operator}
    else:
        flat_v = torch.from_numpy(v).to(plist[0].dtype)
        with sdpa_kernel(SDPBackend.MATH):
            product = lambda: operator @ flat_v  # noqa: E731
            hv = product()
            t = median_time(product, reps)
        out["curvlinops"] = {"first_s": t, "further_s": t, "agreement": relative(hv.double().numpy(), want)}
    for name in ("ours", "pyhessian", "curvlinops"):
        row = out[name]
        if "first_s" in row:
            row["first_ratio"] = row["first_s"] / out["gradient_s"]
            row["further_ratio"] = row["further_s"] / out["gradient_s"]
    out["ours"]["today_ratio"] = out["ours"]["today_s"] / out["gradient_s"]
    return out


class CompositeSiLU(torch.nn.Module):
    """x * sigmoid(x): SiLU from ops with forward-mode AD (``aten::silu_backward`` has none, and
    curvlinops takes a jvp of the gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def composite_silu(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every SiLU activation module replaced by ``CompositeSiLU`` (same values)."""
    for module in list(model.modules()):
        act = getattr(module, "act_fn", None)
        if isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation":  # transformers' own
            module.act_fn = CompositeSiLU()
    return model


def curvlinops_operator(model, plist: list, batch: dict):
    """curvlinops' Hessian operator over the same loss and parameters, or why it is skipped."""
    try:
        from curvlinops import HessianLinearOperator
    except ImportError as e:
        return f"not importable ({e})"
    n = batch["input_ids"].shape[0]
    return HessianLinearOperator(
        Logits(composite_silu(model)),
        ExampleMeanLoss(),
        plist,
        [(batch, batch["labels"])],
        check_deterministic=False,
        num_data=n,
        batch_size_fn=lambda x: x["input_ids"].shape[0],
    )


# ---------------------------------------------------------------------------- (b) eigenvalues
def eigenvalues(
    model, params: dict, batch: dict, steps: int, tol: float, pyhessian_power: bool, fixed_run: bool = True
) -> dict:
    """Top-4 eigenvalues three ways; agreements are against the fixed-step run (``fixed_run``),
    else against this project's values (then the fixed-step row is left out, saving its 50 products)."""
    out: dict = {}
    ours, info = HessianOperator(model, params, [batch]), {}
    t = time.perf_counter()
    vals, _, _ = top_eigenpairs(ours, 4, steps, tol=tol, info=info)
    out["ours"] = {"s": time.perf_counter() - t, "products": ours.calls, "values": vals.tolist(), **info}
    fixed = vals
    if fixed_run:
        today = HessianOperator(model, params, [batch], graph_memory_gb=0.0)
        t = time.perf_counter()
        fixed, _, _ = top_eigenpairs(today, 4, steps, tol=0.0)
        out["fixed"] = {"s": time.perf_counter() - t, "products": today.calls, "values": fixed.tolist()}
        out["ours"]["agreement"] = float(np.max(np.abs(vals - fixed)) / abs(fixed[0]))
    operator = curvlinops_operator(model, list(params.values()), batch)
    if isinstance(operator, str):
        out["curvlinops"] = {"skipped": operator}
    else:
        count = [0]
        dtype = next(iter(params.values())).dtype

        def matvec(x: np.ndarray) -> np.ndarray:
            count[0] += 1
            with sdpa_kernel(SDPBackend.MATH):
                return (operator @ torch.from_numpy(np.asarray(x).reshape(-1)).to(dtype)).double().numpy()

        scipy_op = LinearOperator(operator.shape, matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(operator.shape[0])
        t = time.perf_counter()
        found = np.sort(eigsh(scipy_op, k=4, which="LA", tol=tol, v0=v0, return_eigenvectors=False))[::-1]
        out["curvlinops"] = {"s": time.perf_counter() - t, "products": count[0], "values": found.tolist()}
        out["curvlinops"]["agreement"] = float(np.max(np.abs(found - fixed)) / abs(fixed[0]))
    if pyhessian_power:
        from pyhessian import hessian

        with sdpa_kernel(SDPBackend.MATH):
            t = time.perf_counter()
            h = hessian(Logits(model), ExampleMeanLoss(), data=(batch, batch["labels"]), cuda=False)
            found, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=4)
        out["pyhessian_power"] = {"s": time.perf_counter() - t, "values": sorted(found, reverse=True)}
        for p in params.values():
            p.grad = None
    return out


# ---------------------------------------------------------------------------- (c) landscape
def landscape(model, batch: dict, reps: int, grids: tuple[int, int] = (3, 6), forwards: int = 5) -> dict:
    """Per grid point / one forward, for this project's ``surface`` and loss-landscapes'
    ``random_plane`` on the same model and batch. A point's cost is the slope between a small and a
    large grid, (t_large - t_small) / (n_large^2 - n_small^2), for both tools alike: what each pays
    once per grid (directions, theta0, restoring the weights) drops out. One forward is the mean of
    ``forwards`` consecutive ones, steady like the grid's (a lone forward ran ~5% slower). Each turn
    times every call once, in turn; the ratios are medians over turns."""
    for p in model.parameters():
        p.requires_grad_(False)
    batches = [batch]
    mean_loss(model, batches)  # warm-up
    params = perturbed_parameters(model, LandscapeConfig().modules)
    t = time.perf_counter()
    d1, d2 = random_direction(params, 1), random_direction(params, 2)
    directions = time.perf_counter() - t
    small, large = grids
    extra = large**2 - small**2

    def ours(n: int) -> None:
        surface(model, params, d1, d2, np.linspace(-0.01, 0.01, n), batches, Progress(), "bench")

    fns = {
        "forward": lambda: [mean_loss(model, batches) for _ in range(forwards)],
        "ours_small": lambda: ours(small),
        "ours_large": lambda: ours(large),
    }
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Loss
    except ImportError as e:
        peer = f"not importable ({e})"
    else:
        metric, wrapped = Loss(ExampleMeanLoss(), batch, batch["labels"]), Logits(model)
        start = [p.detach().clone() for p in model.parameters()]

        def plane(steps: int) -> None:
            with torch.no_grad():
                loss_landscapes.random_plane(wrapped, metric, distance=100, steps=steps, normalization="filter")
                for p, p0 in zip(model.parameters(), start):  # it leaves the weights at its last point
                    p.copy_(p0)

        peer = {"peer_small": lambda: plane(small), "peer_large": lambda: plane(large)}
        fns.update(peer)
    rows = [interleaved_times(fns, 1) for _ in range(reps)]
    forward = [r["forward"] / forwards for r in rows]

    def tool(key: str) -> dict:
        points = [(r[f"{key}_large"] - r[f"{key}_small"]) / extra for r in rows]
        turns = [pt / f for pt, f in zip(points, forward)]
        once = [r[f"{key}_small"] - small**2 * pt for r, pt in zip(rows, points)]
        return {"ratio": float(np.median(turns)), "turns": turns, "point_s": float(np.median(points)), "once_s": once}

    out = {
        "forward_s": float(np.median(forward)),
        "grids": list(grids),
        "ours": {**tool("ours"), "directions_s": directions},
    }
    out["loss_landscapes"] = tool("peer") if isinstance(peer, dict) else {"skipped": peer}
    return out


# ---------------------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="a tiny random Llama with a LoRA adapter (seconds)")
    ap.add_argument("--examples", type=int, default=8, help="curvature-probe examples in the batch (default 8)")
    ap.add_argument("--steps", type=int, default=50, help="Lanczos steps of the fixed-step run (default 50)")
    ap.add_argument("--tol", type=float, default=1e-6, help="Lanczos and eigsh tolerance (default 1e-6)")
    ap.add_argument("--reps", type=int, default=3, help="timing repetitions, median (default 3)")
    ap.add_argument("--rows", default="a,b,c", help="which rows: a products, b eigenvalues, c landscape (default all)")
    ap.add_argument("--no-fixed", action="store_true", help="leave out the fixed-step Lanczos reference run")
    ap.add_argument("--pyhessian-eigenvalues", action="store_true", help="also PyHessian's power iteration (slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            spec = tiny_pair(Path(tmp))
        else:
            from core.world.demo import WorldConfig, build_world

            spec = build_world(WorldConfig()).finetuned_spec
        model, tok = load_model(spec), load_tokenizer(spec)
        params = select_parameters(model, "lora")
        batch = encode(tok, safety_probe("curvature", 0)[: args.examples])
        out = {
            "threads": args.threads,
            "model": "tiny" if args.quick else "demo fine-tune",
            "tokens": int(batch["attention_mask"].sum()),
            "counted_tokens": int((batch["labels"][:, 1:] != -100).sum()),
        }
        rows = set(args.rows.split(","))
        if "a" in rows:
            out["products"] = products(model, params, batch, args.reps)
        if "b" in rows:
            out["eigenvalues"] = eigenvalues(
                model, params, batch, args.steps, args.tol, args.pyhessian_eigenvalues, not args.no_fixed
            )
        if "c" in rows:
            out["landscape"] = landscape(load_model(spec, merge=True), batch, args.reps)  # as the app: merged
    report(out)
    print(json.dumps(out))


def report(out: dict) -> None:
    print(f"{out['model']}: {out['tokens']} tokens ({out['counted_tokens']} counted), {out['threads']} threads")
    if "products" in out:
        report_products(out["products"])
    if "eigenvalues" in out:
        report_eigenvalues(out["eigenvalues"])
    if "landscape" in out:
        report_landscape(out["landscape"])


def report_products(a: dict) -> None:
    print(f"(a) one Hessian-vector product / one gradient ({a['gradient_s']:.3f} s; {a['params']:,} LoRA weights):")
    o = a["ours"]
    print(
        f"    this project: first {o['first_ratio']:.2f}x, further {o['further_ratio']:.2f}x "
        f"(today's path {o['today_ratio']:.2f}x); graph {o['graph']['mode']}, "
        f"{o['graph']['retained_bytes'] / 2**20:.1f} MiB kept; agrees with today's to {o['agreement']:.1e}"
    )
    for name in ("pyhessian", "curvlinops"):
        row = a[name]
        if "skipped" in row:
            print(f"    {name}: skipped, {row['skipped']}")
        else:
            print(
                f"    {name}: first {row['first_ratio']:.2f}x, further {row['further_ratio']:.2f}x; "
                f"agrees with this project to {row['agreement']:.1e}"
            )


def report_eigenvalues(b: dict) -> None:
    o = b["ours"]
    print("(b) top-4 eigenvalues:")
    if "fixed" in b:
        print(f"    fixed-step Lanczos (before): {b['fixed']['s']:.2f} s, {b['fixed']['products']} products")
    agree = f"max |difference| / lambda_1 {o['agreement']:.1e} (vs fixed-step); " if "agreement" in o else ""
    print(
        f"    this project: {o['s']:.2f} s, {o['products']} products (converged: {o['converged']}); "
        f"{agree}time ratio to curvlinops "
        + (f"{o['s'] / b['curvlinops']['s']:.2f}" if "s" in b.get("curvlinops", {}) else "n/a")
    )
    cl = b.get("curvlinops", {})
    if "skipped" in cl:
        print(f"    curvlinops: skipped, {cl['skipped']}")
    else:
        print(
            f"    curvlinops + eigsh: {cl['s']:.2f} s, {cl['products']} products; "
            f"max |difference| / lambda_1 {cl['agreement']:.1e} (vs {'fixed-step' if 'fixed' in b else 'this project'})"
        )
    if "pyhessian_power" in b:
        print(f"    PyHessian power iteration: {b['pyhessian_power']['s']:.2f} s")


def report_landscape(c: dict) -> None:
    print(f"(c) one landscape grid point / one forward ({c['forward_s']:.3f} s):")
    turns = lambda row: ", ".join(f"{t:.3f}" for t in row["turns"])  # noqa: E731
    ours = c["ours"]
    once = lambda row: f"once per grid {np.median(row['once_s']):.2f} s"  # noqa: E731
    print(f"    this project: {ours['ratio']:.3f}x (turns {turns(ours)}; {once(ours)})")
    ll = c["loss_landscapes"]
    if "skipped" in ll:
        print(f"    loss-landscapes: skipped, {ll['skipped']}")
    else:
        print(f"    loss-landscapes: {ll['ratio']:.3f}x (turns {turns(ll)}; {once(ll)}, directions included)")


if __name__ == "__main__":
    main()
