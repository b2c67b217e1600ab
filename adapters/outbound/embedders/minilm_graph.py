"""all-MiniLM-L6-v2's encoder as an ONNX graph for onnxruntime, built in memory from the bundled
safetensors weights with the `onnx` helper API: no torch, no export, no download.

The graph is BERT's, in onnxruntime's fused CPU operators (com.microsoft: EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu); it maps token ids and their mask to the last hidden
state. Pooling and normalisation are left to the caller.

Quantised (what the local embedder runs), every weight matrix of the encoder is int8, symmetric,
one scale per output column, and each matrix product's input is quantised on the fly one token
(row) at a time: scale = max |x| / 127 over that token's row, values as uint8 around 128
(QuantizeLinear over blocks of a whole row), then MatMulIntegerToFloat (u8 x s8, the fast kernels
on x86) and the row scales. A token's figures thus never depend on the other tokens or texts of
the pass: a text's vector is the same alone and in any batch, to the bit
(tests/unit/test_local_embedder.py). onnxruntime's own dynamic quantisation (DynamicQuantizeMatMul,
QAttention) takes one scale per tensor, i.e. per pass, which made a text's vector depend on its
batch companions and cost 0.6-1.2 points of hit rate; per token costs 0.3 (docs/decisions.md).
The attention's query/key/value product is one such int8 product, split and fed to
MultiHeadAttention with the bias and the padding mask. The embedding tables, layer norms, biases
and the attention itself stay float32.
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
ZERO = "zero_128"
ZEROS = "zeros_128"
MS_OPS = frozenset(
    (
        "EmbedLayerNormalization",
        "Attention",
        "MultiHeadAttention",
        "SkipLayerNormalization",
        "BiasGelu",
        "MatMulIntegerToFloat",
    )
)


class _Builder:
    def __init__(self, eps: float, heads: int, quantized: bool) -> None:
        self.eps = eps
        self.heads = heads
        self.quantized = quantized
        self.nodes: list[Any] = []
        self.weights: list[tuple[str, npt.NDArray[Any]]] = []
        if quantized:
            self.constant(ZERO, np.array(128, dtype=np.uint8))
            self.constant("one", np.array(1, dtype=np.float32))
            self.constant("last_axis", np.array([-1], dtype=np.int64))
            self.constant("per_127", np.array(1 / 127, dtype=np.float32))
            self.constant("tiny", np.array(1e-30, dtype=np.float32))
            # the rows' zero points, (batch, length, 1) x 128: QuantizeLinear wants them in the
            # scales' shape
            shape = self.node("Shape", [MASK], "mask.shape")
            rows = self.node(
                "Concat",
                [shape, self.constant("[1]", np.array([1], dtype=np.int64))],
                "rows",
                axis=0,
            )
            fill = helper.make_tensor("128", TensorProto.UINT8, [1], [128])
            self.node("ConstantOfShape", [rows], ZEROS, value=fill)

    def constant(self, name: str, array: npt.NDArray[Any]) -> str:
        self.weights.append((name, array))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        domain = MS if op in MS_OPS else ""
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attributes))
        return output

    def matmul(self, x: str, name: str, weight: Array) -> str:
        """x (batch, length, in) @ `weight` (in, out), without bias: float32, or int8 with a
        scale per token of x and per column of `weight`."""
        if not self.quantized:
            return self.node("MatMul", [x, self.constant(name, weight)], name + ".out")
        scale = np.maximum(np.abs(weight).max(axis=0), np.float32(1e-12)) / np.float32(127)
        q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        # per token: max |x| over the row / 127 (a row of zeros gets a tiny scale, not 0)
        row_max = self.node(
            "ReduceMax",
            [self.node("Abs", [x], name + ".abs"), "last_axis"],
            name + ".max",
            keepdims=1,
        )
        row_scale = self.node(
            "Max",
            [self.node("Mul", [row_max, "per_127"], name + ".max/127"), "tiny"],
            name + ".x.scale",
        )
        qx = self.node(
            "QuantizeLinear", [x, row_scale, ZEROS], name + ".x", axis=-1, block_size=q.shape[0]
        )
        w = [
            self.constant(name, q),
            "one",
            self.constant(name + ".scale", scale.astype(np.float32)),
        ]
        product = self.node("MatMulIntegerToFloat", [qx, *w, ZERO], name + ".xw")
        return self.node("Mul", [product, row_scale], name + ".out")

    def attention(self, x: str, name: str, weight: Array, bias: Array) -> str:
        b = self.constant(name + ".bias", bias)
        if not self.quantized:
            w = self.constant(name, weight)
            return self.node(
                "Attention", [x, w, b, "mask_index"], name + ".out", num_heads=self.heads
            )
        qkv = self.matmul(x, name + ".qkv", weight)
        hidden = weight.shape[1] // 3
        parts = [name + ".q", name + ".k", name + ".v"]
        split = self.constant(name + ".split", np.array([hidden] * 3, dtype=np.int64))
        self.nodes.append(helper.make_node("Split", [qkv, split], parts, axis=-1))
        return self.node(
            "MultiHeadAttention", [*parts, b, MASK], name + ".out", num_heads=self.heads
        )

    def skip_norm(
        self, x: str, skip: str, name: str, norm: tuple[Array, Array], bias: Array
    ) -> str:
        inputs = [x, skip, self.constant(name + ".weight", norm[0])]
        inputs += [self.constant(name + ".bias", norm[1]), self.constant(name + ".in_bias", bias)]
        return self.node("SkipLayerNormalization", inputs, name + ".out", epsilon=self.eps)


def minilm_graph(weights: Mapping[str, Array], config: Mapping[str, Any], quantized: bool) -> bytes:
    """The serialised ONNX model (int8 when `quantized`, see above): inputs `input_ids` and
    `mask` (int32, batch, length; padding on the right), output the last hidden state (float32,
    batch, length, hidden)."""
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
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
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
