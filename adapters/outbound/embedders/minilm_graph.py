"""all-MiniLM-L6-v2's encoder as an ONNX graph for onnxruntime, built in memory from the bundled
safetensors weights with the `onnx` helper API: no torch, no export, no download.

The graph is BERT's, in onnxruntime's fused CPU operators (com.microsoft: EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu); it maps token ids and their mask to the last hidden
state. Pooling and normalisation are left to the caller.

Quantised, every weight matrix of the encoder is int8, symmetric, one scale per output column
(per-channel), and activations are quantised on the fly per tensor (onnxruntime's dynamic
quantisation: DynamicQuantizeMatMul, QAttention). The embedding tables, layer norms and biases stay
float32. This is what `onnxruntime.quantization.quantize_dynamic(per_channel=True)` makes of the
float32 graph, written out here because that tool works on files (and a temporary directory),
while this graph is built at run time and kept in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from onnx import TensorProto, helper

Array = npt.NDArray[np.float32]
MS = "com.microsoft"
INPUT_IDS = "input_ids"
MASK = "mask"


class _Builder:
    def __init__(self, eps: float, heads: int, quantized: bool) -> None:
        self.eps = eps
        self.heads = heads
        self.quantized = quantized
        self.nodes: list[Any] = []
        self.weights: list[tuple[str, npt.NDArray[Any]]] = []

    def constant(self, name: str, array: npt.NDArray[Any]) -> str:
        self.weights.append((name, array))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        domain = "" if op in ("MatMul", "DynamicQuantizeLinear") else MS
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attributes))
        return output

    def matrix(self, name: str, weight: Array) -> list[str]:
        """`weight` (in, out) as the inputs a (quantised) matmul takes after its activation."""
        if not self.quantized:
            return [self.constant(name, weight)]
        scale = np.maximum(np.abs(weight).max(axis=0), np.float32(1e-12)) / np.float32(127)
        q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        return [
            self.constant(name, q),
            self.constant(name + ".scale", scale.astype(np.float32)),
            self.constant(name + ".zero", np.zeros(q.shape[1], dtype=np.int8)),
        ]

    def matmul(self, x: str, name: str, weight: Array) -> str:
        op = "DynamicQuantizeMatMul" if self.quantized else "MatMul"
        return self.node(op, [x, *self.matrix(name, weight)], name + ".out")

    def attention(self, x: str, name: str, weight: Array, bias: Array) -> str:
        b = self.constant(name + ".bias", bias)
        if not self.quantized:
            w = self.constant(name, weight)
            return self.node(
                "Attention", [x, w, b, "mask_index"], name + ".out", num_heads=self.heads
            )
        qx = [name + ".x", name + ".x.scale", name + ".x.zero"]
        self.nodes.append(helper.make_node("DynamicQuantizeLinear", [x], qx))
        w, w_scale, w_zero = self.matrix(name, weight)
        inputs = [qx[0], w, b, qx[1], w_scale, "mask_index", qx[2], w_zero]
        return self.node("QAttention", inputs, name + ".out", num_heads=self.heads)

    def skip_norm(
        self, x: str, skip: str, name: str, norm: tuple[Array, Array], bias: Array
    ) -> str:
        inputs = [x, skip, self.constant(name + ".weight", norm[0])]
        inputs += [self.constant(name + ".bias", norm[1]), self.constant(name + ".in_bias", bias)]
        return self.node("SkipLayerNormalization", inputs, name + ".out", epsilon=self.eps)


def minilm_graph(weights: Mapping[str, Array], config: Mapping[str, Any], quantized: bool) -> bytes:
    """The serialised ONNX model: inputs `input_ids` and `mask` (int32, batch, length; padding
    on the right), output the last hidden state (float32, batch, length, hidden)."""
    eps = float(config["layer_norm_eps"])
    g = _Builder(eps, int(config["num_attention_heads"]), quantized)
    w = weights
    # token type 0 for every token: its embedding is added to every position's
    positions = (
        w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    )
    embed = [
        INPUT_IDS,
        "",
        g.constant("word", w["embeddings.word_embeddings.weight"]),
        g.constant("position", positions),
        "",
        g.constant("embed_norm.weight", w["embeddings.LayerNorm.weight"]),
        g.constant("embed_norm.bias", w["embeddings.LayerNorm.bias"]),
        MASK,
    ]
    g.nodes.append(
        helper.make_node(
            "EmbedLayerNormalization", embed, ["x0", "mask_index"], domain=MS, epsilon=eps
        )
    )
    x = "x0"
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        qkv = [f"{p}attention.self.{part}." for part in ("query", "key", "value")]
        context = g.attention(
            x,
            f"layer{i}.qkv",
            np.concatenate([w[n + "weight"].T for n in qkv], axis=1),
            np.concatenate([w[n + "bias"] for n in qkv]),
        )
        attended = g.skip_norm(
            g.matmul(context, f"layer{i}.out", w[p + "attention.output.dense.weight"].T),
            x,
            f"layer{i}.norm1",
            (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
            w[p + "attention.output.dense.bias"],
        )
        up = g.matmul(attended, f"layer{i}.up", w[p + "intermediate.dense.weight"].T)
        gelu = g.node(
            "BiasGelu",
            [up, g.constant(f"layer{i}.up.bias", w[p + "intermediate.dense.bias"])],
            f"layer{i}.gelu",
        )
        x = g.skip_norm(
            g.matmul(gelu, f"layer{i}.down", w[p + "output.dense.weight"].T),
            attended,
            f"layer{i}.norm2",
            (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            w[p + "output.dense.bias"],
        )
    hidden = int(config["hidden_size"])
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2" + (" int8" if quantized else ""),
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT32, ["batch", "length"]),
            helper.make_tensor_value_info(MASK, TensorProto.INT32, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "length", hidden])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    # The weights go straight into the model (90 MB): make_graph and make_model copy what they
    # are given, each copy a tenth of a second.
    for name, array in g.weights:
        tensor = model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array).tobytes()  # little-endian: x86, arm64
    serialised: bytes = model.SerializeToString()
    return serialised
