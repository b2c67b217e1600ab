"""The local embedder's model as it ran before onnxruntime: all-MiniLM-L6-v2's forward pass in
NumPy (OpenBLAS for the matrix products). Kept for benchmarks/embedder_cost.py and
benchmarks/embedder_quality.py, which compare it with the product's embedder
(adapters/outbound/embedders/local.py) in one run; nothing in the product imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from adapters.outbound.embedders.local import MiniLM, load_model

Array = npt.NDArray[np.float32]
_MASKED = np.float32(np.finfo(np.float32).min)
_FFN_ROWS = 64


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: Array  # (hidden, 3 * hidden): query, key and value projections fused
    qkv_bias: Array
    out: Array
    out_bias: Array
    norm1: tuple[Array, Array]
    up: Array
    up_bias: Array
    down: Array
    down_bias: Array
    norm2: tuple[Array, Array]


def _gelu(x: Array) -> Array:
    """Exact (erf) GELU, as BERT's `gelu`, in place: x · ½(1 + erf(x/√2)).

    NumPy has no erf: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, float32 resolution), in
    place to spare temporaries. |z| is capped at 5, where erf is 1 in float32 anyway, so exp()
    never produces (slow) subnormal numbers.
    """
    f = np.float32
    z = np.multiply(x, f(0.7071067811865476))
    np.abs(z, out=z)
    np.minimum(z, f(5.0), out=z)
    t = np.multiply(z, f(0.3275911))
    t += f(1.0)
    np.reciprocal(t, out=t)
    poly = np.multiply(t, f(1.061405429))
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += f(c)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    z *= poly  # erfc(|z|)
    np.subtract(f(1.0), z, out=z)
    np.copysign(z, x, out=z)  # erf(z)
    z += f(1.0)
    z *= f(0.5)
    x *= z
    return x


def _feed_forward(layer: _Layer, x: Array) -> Array:
    """down(gelu(up(x))), a block of rows at a time: the wide intermediate activations of a
    block stay in the CPU cache through GELU's many elementwise passes."""
    out = np.empty_like(x)
    for start in range(0, x.shape[0], _FFN_ROWS):
        rows = slice(start, start + _FFN_ROWS)
        hidden = x[rows] @ layer.up
        hidden += layer.up_bias
        np.matmul(_gelu(hidden), layer.down, out=out[rows])
    out += layer.down_bias
    return out


def _layer_norm(x: Array, weight_bias: tuple[Array, Array], eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    weight, bias = weight_bias
    return np.asarray(centered / np.sqrt(var + np.float32(eps)) * weight + bias, dtype=np.float32)


class NumpyMiniLM(MiniLM):
    """The model itself: synchronous, CPU-bound. One BLAS thread, as the embedder ran it."""

    def __init__(self, model_dir: Path) -> None:
        threadpool_limits(limits=1, user_api="blas")
        config, w, self.tokenizer = load_model(model_dir)
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = [
            self._layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))
        ]

    @staticmethod
    def _layer(w: dict[str, Array], p: str) -> _Layer:
        def t(name: str) -> Array:  # torch's Linear keeps (out, in); x @ W wants (in, out)
            return np.ascontiguousarray(w[p + name].T)

        qkv = [f"{p}attention.self.{name}." for name in ("query", "key", "value")]
        norm1 = p + "attention.output.LayerNorm."
        return _Layer(
            qkv=np.ascontiguousarray(np.concatenate([w[n + "weight"].T for n in qkv], axis=1)),
            qkv_bias=np.concatenate([w[n + "bias"] for n in qkv]),
            out=t("attention.output.dense.weight"),
            out_bias=w[p + "attention.output.dense.bias"],
            norm1=(w[norm1 + "weight"], w[norm1 + "bias"]),
            up=t("intermediate.dense.weight"),
            up_bias=w[p + "intermediate.dense.bias"],
            down=t("output.dense.weight"),
            down_bias=w[p + "output.dense.bias"],
            norm2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
        )

    def _forward(self, batch: list[list[int]]) -> Array:
        size, length = len(batch), max(len(ids) for ids in batch)
        ids = np.zeros((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=np.float32)
        for row, token_ids in enumerate(batch):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1.0
        x = self.word[ids] + self.position[:length] + self.token_type
        x = _layer_norm(x.reshape(size * length, self.hidden), self.embed_norm, self.eps)
        # Padding keys get the most negative float: exp() of it is 0, as in transformers.
        bias = ((1.0 - mask) * _MASKED)[:, None, None, :]
        for layer in self.layers:
            x = self._layer_forward(layer, x, bias, size, length)
        tokens = x.reshape(size, length, self.hidden)
        summed = np.einsum("bld,bl->bd", tokens, mask)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)

    def _layer_forward(self, layer: _Layer, x: Array, bias: Array, size: int, length: int) -> Array:
        heads, head_dim = self.heads, self.hidden // self.heads
        qkv = (x @ layer.qkv + layer.qkv_bias).reshape(size, length, 3, heads, head_dim)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (size, heads, length, head_dim)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(head_dim)) + bias
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores, out=scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(size * length, self.hidden)
        x = _layer_norm(context @ layer.out + layer.out_bias + x, layer.norm1, self.eps)
        return _layer_norm(_feed_forward(layer, x) + x, layer.norm2, self.eps)
