"""Model load time: GGUF dequantization (first time) against the cached safetensors reload.

Target: a reload of the shipped SmolLM2 GGUF takes under a second once it is cached.
Run: .venv/bin/python bench/model_load.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoModelForCausalLM  # noqa: E402

from core.base.paths import SMOLLM2_GGUF, asset_file  # noqa: E402
from core.world.models import ModelSpec, load_model, load_tokenizer  # noqa: E402


def main() -> None:
    gguf = asset_file(*SMOLLM2_GGUF)
    t = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    t_gguf = time.perf_counter() - t
    spec = ModelSpec(str(gguf))
    load_model(spec)  # converts on first use, then cached
    t = time.perf_counter()
    load_model(spec)
    load_tokenizer(spec)
    t_cached = time.perf_counter() - t
    print(
        f"GGUF dequantizing load {t_gguf:.2f}s vs cached safetensors reload {t_cached:.2f}s "
        f"({t_gguf / t_cached:.0f}x; target < 1 s)"
    )
    print(json.dumps({"gguf_load_s": round(t_gguf, 2), "cached_reload_s": round(t_cached, 2)}))


if __name__ == "__main__":
    main()
