"""What AVX2's int16 saturation would do to the int8 embedder's vectors, on a CPU without VNNI.

    .venv/bin/python benchmarks/int8_saturation.py

onnxruntime's u8 x s8 kernel on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) adds
the products two by two in 16 bits (VPMADDUBSW), which saturates at 32767; with VNNI the sums are
32-bit and exact. This machine has VNNI, so the saturating kernel is emulated: the NumPy MiniLM
(benchmarks/numpy_minilm.py) with each weight product replaced by the product graph's arithmetic
(weights int8 per column, activations uint8 per token around 128) computed exactly, or with every
pair of products clipped to int16. Printed: the cosine of each text's vector to the float32 one,
worst and mean, for the unit test's fixture (which asserts >= 0.99) and one in eight of the
calibration texts. The `exact` rows should match onnxruntime's figures on this CPU (fixture worst
0.9922): that is what shows the emulation is the kernel's arithmetic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy_minilm  # noqa: E402

from adapters.outbound.embedders.local import bundled_model_dir  # noqa: E402
from container import question_judge  # noqa: E402

PRODUCTS = ("qkv", "out", "up", "down")


class Int8Weight:
    """`x @ Int8Weight(w)`: the int8 graph's product, exact or saturating pairwise."""

    __array_ufunc__ = None  # so that x @ self calls __rmatmul__

    def __init__(self, weight: np.ndarray, saturate: bool) -> None:
        self.scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127
        self.q = np.clip(np.rint(weight / self.scale), -127, 127).astype(np.int64)
        self.saturate = saturate

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        row_scale = np.maximum(np.abs(x).max(axis=1, keepdims=True) / 127, 1e-30)
        u = (np.clip(np.rint(x / row_scale), -127, 127) + 128).astype(np.int64)
        if self.saturate:
            total = np.zeros((u.shape[0], self.q.shape[1]), dtype=np.int64)
            for k in range(0, u.shape[1], 2):
                pair = u[:, k : k + 1] * self.q[k : k + 1]
                pair += u[:, k + 1 : k + 2] * self.q[k + 1 : k + 2]
                total += np.clip(pair, -32768, 32767)
        else:
            total = u @ self.q
        total -= 128 * self.q.sum(axis=0)[None, :]
        return (total * self.scale[None, :] * row_scale).astype(np.float32)


def _feed_forward(layer: Any, x: np.ndarray) -> np.ndarray:
    hidden = numpy_minilm._gelu((x @ layer.up) + layer.up_bias)
    return (hidden @ layer.down) + layer.down_bias


def main() -> None:
    model_dir = bundled_model_dir()
    reference = numpy_minilm.NumpyMiniLM(model_dir)
    fixture = json.loads((ROOT / "tests/fixtures/minilm_reference.json").read_text())["items"]
    judge = question_judge()
    pairs = [json.loads(line) for line in (ROOT / "benchmarks/cache_pairs.jsonl").open()]
    calibration = sorted({judge.embedding_text(p[side]) for p in pairs for side in "ab"})[::8]
    sets = {"fixture": [item["text"] for item in fixture], "calibration/8": calibration}
    expected = {name: np.array(reference.encode(texts)) for name, texts in sets.items()}
    numpy_minilm._feed_forward = _feed_forward
    for saturate in (False, True):
        model = numpy_minilm.NumpyMiniLM(model_dir)
        model.layers = [
            type(layer)(
                **{
                    f: Int8Weight(getattr(layer, f), saturate)
                    if f in PRODUCTS
                    else getattr(layer, f)
                    for f in layer.__slots__
                }
            )
            for layer in model.layers
        ]
        for name, texts in sets.items():
            got, want = np.array(model.encode(texts)), expected[name]
            cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
            kind = "saturating (AVX2)" if saturate else "exact (VNNI)"
            print(f"{kind:<18} {name:<14} {len(texts):>4} texts: cosine to float32 worst "
                  f"{cos.min():.4f}, mean {cos.mean():.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
