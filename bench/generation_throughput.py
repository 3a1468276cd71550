"""Generated tokens per second: the batched evaluator vs a one-prompt-at-a-time generate loop.

Same model (the demo base), same prompts, same greedy settings, one run each. Target >= 4x.
Run: .venv/bin/python bench/generation_throughput.py [--prompts 32] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.world.data import harmful_splits  # noqa: E402
from core.world.demo import WorldConfig, build_world  # noqa: E402
from core.world.generation import chat_prompt, generate  # noqa: E402
from core.world.models import load_model, load_tokenizer  # noqa: E402


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)


@torch.no_grad()
def one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The naive loop: one prompt, one generate call, no padding, no batching."""
    outs = []
    for p in prompts:
        enc = tokenizer(chat_prompt(tokenizer, p), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outs.append(tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True).strip())
    return outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    spec = build_world(WorldConfig()).finetuned_spec
    model, tokenizer = load_model(spec), load_tokenizer(spec)
    prompts = [e.prompt for e in harmful_splits(0)["eval"][: args.prompts]]

    t = time.perf_counter()
    batched = generate(model, tokenizer, prompts, args.tokens, args.batch_size)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    single = one_at_a_time(model, tokenizer, prompts, args.tokens)
    t_single = time.perf_counter() - t

    tps_batched = count_tokens(tokenizer, batched) / t_batched
    tps_single = count_tokens(tokenizer, single) / t_single
    same = sum(a == b for a, b in zip(batched, single))
    result = {
        "prompts": len(prompts),
        "max_new_tokens": args.tokens,
        "threads": torch.get_num_threads(),
        "batched_tokens_per_s": round(tps_batched, 1),
        "single_tokens_per_s": round(tps_single, 1),
        "speedup": round(tps_batched / tps_single, 2),
        "identical_outputs": f"{same}/{len(prompts)}",
    }
    print(
        f"batched {tps_batched:.1f} tok/s vs one-at-a-time {tps_single:.1f} tok/s: "
        f"{tps_batched / tps_single:.2f}x (target >= 4x)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
