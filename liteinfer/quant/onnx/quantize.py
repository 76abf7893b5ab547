"""Per-node quantization of ONNX models: a plan {node name: type} -> a quantized ModelProto.

Targets are the nodes that hold weights: MatMul (and Gemm, rewritten as MatMul + Add first),
Conv, and Gather over an embedding table. Types, smallest first:

  int2-b64 / int2-b32               Gather only: GatherBlockQuantized 2-bit (fp16 scales)
  int2x4-10 / int2x4-25 / int2x8-10 Gather only: the 10% / 25% rows of the tokens calibration
                                    text uses most on a 4-bit (8-bit) grid, the rest 2-bit:
                                    two GatherBlockQuantized tables, a row map and a Where
  int4-b128 / int4-b64 / int4-b32   MatMul -> MatMulNBits (4-bit, accuracy_level 4),
                                    Gather -> GatherBlockQuantized (4-bit); blocks of 128/64/32
  int4x8-25 / int4x8-50             MatMul: int4-b32 with the 25% / 50% most salient input rows
                                    in 8 bits (int8-b64): two MatMulNBits over Gathers of the
                                    input, added; between int4 and int8 in size and loss
  int8                              MatMul -> MatMulNBits 8-bit, Gather -> GatherBlockQuantized
                                    8-bit, Conv -> static QDQ int8 (per-channel weights,
                                    calibrated activations; ORT runs it as QLinearConv)
  int8w                             Conv: 8-bit per-channel weights only (DequantizeLinear ->
                                    float Conv): the size of int8 without activation rounding;
                                    GPTQ + bias correction with calibration data (conv_gptq.py)
  fp16                              weight stored in fp16, a Cast back to fp32 (file size only)
  fp32                              unchanged

Weight-only integers come from GPTQ when calibration activations are available (Hessians from
calibration.py), else from round-to-nearest with a min-MSE clipping search (blockwise.py).
Quantized weights are cached per (node, type), so trying many plans costs one GPTQ per pair.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output
from liteinfer.quant.onnx import blockwise, conv_gptq

MS_DOMAIN = "com.microsoft"
ACCURACY_LEVEL = 4  # int8 activations x low-bit weights: the fast CPU path
QTYPES = ("int2-b64", "int2-b32", "int2x4-10", "int2x4-25", "int2x8-10", "int4-b128", "int4-b64", "int4-b32",
          "int4x8-25", "int4x8-50", "int8", "int8w", "fp16", "fp32")
SPLIT_TYPES = {"int4x8-25": 0.25, "int4x8-50": 0.5}  # share of input rows in 8 bits
# embedding tables: (share of rows kept fine, their (bits, block), the other rows' (bits, block))
ROW_SPLIT_TYPES = {"int2x4-10": (0.10, (4, 32), (2, 32)), "int2x4-25": (0.25, (4, 32), (2, 32)),
                   "int2x8-10": (0.10, (8, 32), (2, 32))}
GATHER_TYPES = ["int2-b64", "int2-b32", *ROW_SPLIT_TYPES, "int4-b128", "int4-b64", "int4-b32", "int8", "fp16", "fp32"]
MIN_ELEMENTS = 4096  # smaller weights are not worth a node swap


def parse_qtype(qtype: str) -> tuple[int, int]:
    """(bits, block) of an integer type name."""
    if qtype == "int8":
        return 8, 32
    if qtype.startswith(("int4-b", "int2-b")):
        return int(qtype[3]), int(qtype[6:])
    raise LiteInferError(f"unknown quantization type {qtype!r} (known: {', '.join(QTYPES)})")


@dataclass
class Target:
    node: str  # node name (unique; unnamed nodes get names in `prepare_model`)
    op: str  # MatMul | Conv | Gather
    weight: str  # initializer name
    shape: tuple[int, ...]
    activation: str | None  # input tensor whose statistics GPTQ uses (MatMul only)
    choices: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


def load_onnx(path: str | Path):
    """onnx.load with a one-line error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise LiteInferError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=False)
    except Exception as e:  # DecodeError, ValidationError, ...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LiteInferError(f"{path}: not a valid ONNX model ({first})") from None
    return model


def prepare_model(model):
    """A copy with every node named and constant-weight Gemm rewritten as MatMul + Add."""
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    names = set()
    new_nodes = []
    for i, node in enumerate(graph.node):
        if not node.name or node.name in names:
            node.name = f"{node.op_type}_{i}"
        names.add(node.name)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits
            and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        ):
            w = numpy_helper.to_array(inits[node.input[1]])
            if attrs.get("transB", 0):
                w = np.ascontiguousarray(w.T)
            wname = node.input[1] + ".matmul_weight"
            graph.initializer.append(numpy_helper.from_array(w, wname))
            mm_out = node.output[0] + ".mm" if len(node.input) > 2 and node.input[2] else node.output[0]
            new_nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=node.name))
            if mm_out != node.output[0]:
                new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + ".bias"))
            continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(model)
    return model


def find_targets(model) -> list[Target]:
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer if i.data_type == 1}  # float32
    targets = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            shape = inits[node.input[1]]
            if len(shape) == 2 and shape[0] >= 16 and np.prod(shape) >= MIN_ELEMENTS:
                targets.append(Target(node.name, "MatMul", node.input[1], shape, node.input[0],
                                      ["int4-b128", "int4-b64", "int4-b32", *SPLIT_TYPES, "int8", "fp16", "fp32"]))
        elif node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in inits:
            shape = inits[node.input[1]]
            if np.prod(shape) >= 64:
                targets.append(Target(node.name, "Conv", node.input[1], shape, None, ["int8", "int8w", "fp16", "fp32"]))
        elif node.op_type == "Gather" and node.input[0] in inits:
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
            shape = inits[node.input[0]]
            if axis == 0 and len(shape) == 2 and np.prod(shape) >= MIN_ELEMENTS and shape[1] >= 32:
                targets.append(Target(node.name, "Gather", node.input[0], shape, None, list(GATHER_TYPES)))
    return targets


def type_bytes(t: Target, qtype: str) -> int:
    """Bytes the target's weight takes stored as `qtype` (scales and zero points included)."""
    if qtype == "fp32":
        return 4 * t.numel
    if qtype == "fp16":
        return 2 * t.numel
    if t.op == "Conv":  # int8 per output channel: data + float scale + zero point
        # static int8 is charged 1/16 more than int8w: its QDQ graph (activation Q/DQ pairs,
        # int32 biases) makes the file larger (EfficientNet-Lite0: 5.40 vs 5.13 MB), and with
        # GPTQ + bias correction int8w also loses ~30x less, so the search takes int8w first
        return t.numel + 5 * t.shape[0] + (t.numel // 16 if qtype == "int8" else 0)
    if t.op == "Gather":
        vocab, dim = t.shape
        if qtype in ROW_SPLIT_TYPES:  # two tables and the int32 row map
            share, high, low = ROW_SPLIT_TYPES[qtype]
            hot = hot_count(vocab, share)
            return _table_bytes(hot, dim, *high) + _table_bytes(vocab - hot, dim, *low) + 4 * vocab
        return _table_bytes(vocab, dim, *parse_qtype(qtype))
    k, n = t.shape
    if qtype in SPLIT_TYPES:  # two MatMulNBits and their int32 row indices
        high = blockwise.split_rows(k, SPLIT_TYPES[qtype])
        return (_nbits_bytes(k - high, n, 4, blockwise.SPLIT_LOW_BLOCK)
                + _nbits_bytes(high, n, 8, blockwise.SPLIT_HIGH_BLOCK) + 4 * k)
    bits, block = parse_qtype(qtype)
    return _nbits_bytes(k, n, bits, block)


def hot_count(vocab: int, share: float) -> int:
    return min(vocab, int(vocab * share + 0.5))


def _table_bytes(rows: int, dim: int, bits: int, block: int) -> int:
    """GatherBlockQuantized bytes of a [rows, dim] table: packed data, fp16 scales, packed zero points."""
    nb = -(-dim // block)
    return rows * (-(-dim * bits // 8) + 2 * nb + (-(-nb * bits // 8)))


def _nbits_bytes(k: int, n: int, bits: int, block: int) -> int:
    """MatMulNBits bytes of a [k, n] weight: packed data, fp32 scales, packed zero points."""
    nb = -(-k // block)
    return n * nb * block * bits // 8 + n * nb * 4 + n * (-(-nb * bits // 8))


def conv_int8w(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights and scales of a Conv weight [C_out, ...]."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(1)
    scale = np.maximum(amax / 127.0, 1e-12).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
    return q, scale


def weights_bytes(model) -> int:
    """Bytes of all initializers: what the file size is, less protobuf framing."""
    return sum(len(i.raw_data) if i.raw_data else _init_nbytes(i) for i in model.graph.initializer)


def _init_nbytes(init) -> int:
    return numpy_helper.to_array(init).nbytes


# ---------------------------------------------------------------- building quantized models


class Quantizer:
    """Builds quantized models from plans; caches each (node, type)'s quantized weights."""

    def __init__(self, model, hessians: dict | None = None, calib_feeds: list[dict] | None = None,
                 accuracy_level: int = ACCURACY_LEVEL, conv_stats: dict | None = None, work: Path | None = None,
                 token_counts: dict | None = None):
        """`work`: a scratch folder for the static int8 calibration files (quantize_onnx passes one
        beside the output, which the next run cleans if this one is killed); by default a
        temporary folder, made when first needed. `token_counts`: how often calibration text
        uses each row of an embedding table, by the Gather's index input (calibration.py)."""
        self.model = prepare_model(model)
        self.targets = {t.node: t for t in find_targets(self.model)}
        self.weights = {i.name: numpy_helper.to_array(i) for i in self.model.graph.initializer
                        if i.name in {t.weight for t in self.targets.values()}}
        self.hessians = hessians or {}
        self.conv_stats = conv_stats or {}  # weight name -> conv_gptq.ConvStats
        self.biases = {i.name: numpy_helper.to_array(i) for i in self.model.graph.initializer
                       if i.name in {n.input[2] for n in self.model.graph.node
                                     if n.name in self.targets and n.op_type == "Conv" and len(n.input) > 2}}
        self.calib_feeds = calib_feeds or []
        self.token_counts = token_counts or {}
        self.accuracy_level = accuracy_level
        self._cache: dict[tuple[str, str], blockwise.BlockQuant | blockwise.SplitQuant] = {}
        self._conv_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._work = work
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.method: dict[str, str] = {}

    def block_quant(self, t: Target, qtype: str) -> blockwise.BlockQuant | blockwise.SplitQuant | blockwise.RowSplit:
        key = (t.node, qtype)
        if key not in self._cache:
            w = self.weights[t.weight].astype(np.float32)
            if qtype in ROW_SPLIT_TYPES:  # Gather only (see find_targets)
                share, high, low = ROW_SPLIT_TYPES[qtype]
                node = next(n for n in self.model.graph.node if n.name == t.node)
                hot = blockwise.hot_rows(t.shape[0], hot_count(t.shape[0], share), self.token_counts.get(node.input[1]))
                self._cache[key] = blockwise.quantize_row_split(w, hot, high, low)
                self.method[t.node] = "rtn, rows by calibration use" if node.input[1] in self.token_counts else "rtn"
                return self._cache[key]
            if qtype in SPLIT_TYPES:  # MatMul only (see find_targets)
                self._cache[key] = blockwise.quantize_split(w, SPLIT_TYPES[qtype], self.hessians.get(t.activation))
                self.method[t.node] = "gptq" if t.activation in self.hessians else "rtn"
                return self._cache[key]
            bits, block = parse_qtype(qtype)
            if t.op == "Gather":  # blocks along the embedding dimension of each row
                self._cache[key] = blockwise.quantize_table(w, bits, block)
                self.method[t.node] = "rtn"
            elif t.activation in self.hessians:
                self._cache[key] = blockwise.quantize_gptq(w, self.hessians[t.activation], bits, block)
                self.method[t.node] = "gptq"
            else:
                self._cache[key] = blockwise.quantize_rtn(w, bits, block)
                self.method[t.node] = "rtn"
        return self._cache[key]

    def conv_int8w(self, t: Target) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(int8/uint8 weights, scales, zero points, corrected bias or None) of an int8w Conv.

        GPTQ + bias correction when the calibration statistics cover it, else symmetric RTN.
        """
        if t.node not in self._conv_cache:
            node = next(n for n in self.model.graph.node if n.name == t.node)
            bias = self.biases.get(node.input[2]) if len(node.input) > 2 else None
            if t.weight in self.conv_stats:
                cq = conv_gptq.quantize_conv(self.weights[t.weight], bias, self.conv_stats[t.weight])
                self._conv_cache[t.node] = (cq.q, cq.scale, cq.zero, cq.bias)
                self.method[t.node] = "gptq+bias"
            else:
                qw, scale = conv_int8w(self.weights[t.weight])
                self._conv_cache[t.node] = (qw, scale, np.zeros(len(scale), np.int8), None)
                self.method[t.node] = "rtn"
        return self._conv_cache[t.node]

    def dequant_conv(self, t: Target) -> tuple[np.ndarray, np.ndarray | None]:
        """(float weights, corrected bias or None) an int8w Conv computes with."""
        q, scale, zero, bias = self.conv_int8w(t)
        shape = (-1, *([1] * (q.ndim - 1)))
        w = (q.astype(np.float32) - zero.reshape(shape).astype(np.float32)) * scale.reshape(shape)
        return w.astype(np.float32), bias

    def build(self, plan: dict[str, str]):
        """A quantized ModelProto for {node: type}; nodes not in the plan stay fp32."""
        for node, qtype in plan.items():
            if node not in self.targets:
                raise LiteInferError(f"plan names {node!r}, which is not a quantizable node of this model")
            if qtype not in self.targets[node].choices:
                raise LiteInferError(f"type {qtype!r} is not available for {self.targets[node].op} node {node!r}")
        convs = [n for n, q in plan.items() if q == "int8" and self.targets[n].op == "Conv"]
        model = self._static_int8(self.model, convs) if convs else copy.deepcopy(self.model)
        by_name = {n.name: n for n in model.graph.node}
        new_inits, replace = [], {}
        for node_name, qtype in plan.items():
            t = self.targets[node_name]
            node = by_name.get(node_name)
            if qtype == "fp32" or (t.op == "Conv" and qtype == "int8") or node is None:
                continue
            if qtype == "fp16":
                half = t.weight + ".fp16"
                new_inits.append((half, self.weights[t.weight].astype(np.float16)))
                cast_out = t.weight + ".fp32"
                idx = 0 if t.op == "Gather" else 1
                node.input[idx] = cast_out
                replace[node_name] = [helper.make_node("Cast", [half], [cast_out], name=node_name + ".cast", to=1), node]
                continue
            if t.op == "Conv" and qtype == "int8w":
                qw, scale, zero, bias = self.conv_int8w(t)
                names = [f"{t.weight}.q8", f"{t.weight}.scale", f"{t.weight}.zp"]
                new_inits += list(zip(names, (qw, scale, zero), strict=True))
                node.input[1] = t.weight + ".deq"
                if bias is not None:  # the corrected bias replaces the FP32 one (dropped as unused)
                    new_inits.append((f"{t.weight}.bias", bias))
                    if len(node.input) > 2:
                        node.input[2] = f"{t.weight}.bias"
                    else:
                        node.input.append(f"{t.weight}.bias")
                replace[node_name] = [
                    helper.make_node("DequantizeLinear", names, [t.weight + ".deq"], name=node_name + ".dq", axis=0),
                    node,
                ]
                continue
            bq = self.block_quant(t, qtype)
            if isinstance(bq, blockwise.SplitQuant):
                inits, nodes = self._split_nodes(t, node, bq)
                new_inits += inits
                replace[node_name] = nodes
            elif isinstance(bq, blockwise.RowSplit):
                inits, nodes = self._row_split_nodes(t, node, bq)
                new_inits += inits
                replace[node_name] = nodes
            elif t.op == "MatMul":
                b, scales, zp = blockwise.matmulnbits_tensors(bq)
                names = [f"{t.weight}.q{bq.bits}", f"{t.weight}.scales", f"{t.weight}.zp"]
                new_inits += list(zip(names, (b, scales, zp), strict=True))
                k, n = t.shape
                replace[node_name] = [helper.make_node(
                    "MatMulNBits", [node.input[0], *names], list(node.output), name=node_name, domain=MS_DOMAIN,
                    K=k, N=n, bits=bq.bits, block_size=bq.block, accuracy_level=self.accuracy_level,
                )]
            else:  # Gather over an embedding table: fp16 out of the op, cast back
                inits, gbq = _gather_node(t.weight, node.input[1], node.output[0] + ".f16", node_name, bq)
                new_inits += inits
                replace[node_name] = [gbq, helper.make_node("Cast", [gbq.output[0]], list(node.output),
                                                            name=node_name + ".cast", to=1)]
        return _finish(model, replace, new_inits)

    def _row_split_nodes(self, t: Target, node, rs: blockwise.RowSplit) -> tuple[list, list]:
        """Initializers and nodes of a two-grid embedding lookup.

        map[id] is the row's index in the hot table, or -1 - its index in the cold table; both
        tables are looked up (index 0 for the other kind) and a Where keeps the right row. The
        extra work is per token, not per table row.
        """
        vocab = len(rs.hot) + len(rs.cold)
        row_map = np.zeros(vocab, dtype=np.int32)
        row_map[rs.hot] = np.arange(len(rs.hot), dtype=np.int32)
        row_map[rs.cold] = -1 - np.arange(len(rs.cold), dtype=np.int32)
        p = node.name
        inits = [(f"{t.weight}.rowmap", row_map), (f"{p}.zero", np.array(0, np.int32)),
                 (f"{p}.minus1", np.array(-1, np.int32)), (f"{p}.last", np.array([-1], np.int64))]
        nodes = [
            helper.make_node("Gather", [f"{t.weight}.rowmap", node.input[1]], [f"{p}.m"], name=f"{p}.map", axis=0),
            helper.make_node("Max", [f"{p}.m", f"{p}.zero"], [f"{p}.hi_idx"], name=f"{p}.hi_idx"),
            helper.make_node("Sub", [f"{p}.minus1", f"{p}.m"], [f"{p}.neg"], name=f"{p}.neg"),
            helper.make_node("Max", [f"{p}.neg", f"{p}.zero"], [f"{p}.lo_idx"], name=f"{p}.lo_idx"),
            helper.make_node("GreaterOrEqual", [f"{p}.m", f"{p}.zero"], [f"{p}.is_hot"], name=f"{p}.is_hot"),
            helper.make_node("Unsqueeze", [f"{p}.is_hot", f"{p}.last"], [f"{p}.is_hot3"], name=f"{p}.is_hot3"),
        ]
        for tag, bq in (("hi", rs.high), ("lo", rs.low)):
            part, gbq = _gather_node(f"{t.weight}.{tag}", f"{p}.{tag}_idx", f"{p}.{tag}.y", f"{p}.{tag}", bq)
            inits += part
            nodes.append(gbq)
        nodes.append(helper.make_node("Where", [f"{p}.is_hot3", f"{p}.hi.y", f"{p}.lo.y"], [f"{p}.f16"],
                                      name=f"{p}.where"))
        nodes.append(helper.make_node("Cast", [f"{p}.f16"], list(node.output), name=p, to=1))
        return inits, nodes

    def _split_nodes(self, t: Target, node, sq: blockwise.SplitQuant) -> tuple[list, list]:
        """Initializers and nodes computing x @ W as x[..., idx4] @ W4 + x[..., idx8] @ W8."""
        inits, nodes, parts = [], [], []
        for tag, idx, bq in (("lo", sq.idx4, sq.low), ("hi", sq.idx8, sq.high)):
            names = [f"{t.weight}.{tag}.q{bq.bits}", f"{t.weight}.{tag}.scales", f"{t.weight}.{tag}.zp"]
            inits += list(zip(names, blockwise.matmulnbits_tensors(bq), strict=True))
            inits.append((f"{t.weight}.{tag}.rows", idx))
            x = f"{node.name}.{tag}.x"
            parts.append(f"{node.name}.{tag}.y")
            nodes.append(helper.make_node("Gather", [node.input[0], f"{t.weight}.{tag}.rows"], [x],
                                          name=f"{node.name}.{tag}.gather", axis=-1))
            nodes.append(helper.make_node(
                "MatMulNBits", [x, *names], [parts[-1]], name=f"{node.name}.{tag}", domain=MS_DOMAIN,
                K=len(idx), N=t.shape[1], bits=bq.bits, block_size=bq.block, accuracy_level=self.accuracy_level,
            ))
        nodes.append(helper.make_node("Add", parts, list(node.output), name=node.name))
        return inits, nodes

    def _scratch(self) -> Path:
        if self._work is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="liteinfer-quant-")
            self._work = Path(self._tmp.name)
        return self._work

    def _static_int8(self, model, conv_nodes: list[str]):
        """Static QDQ int8 (per-channel weights) for the given Conv nodes; ranges calibrated once."""
        if not self.calib_feeds:
            raise LiteInferError("int8 convolutions need calibration data (--calib)")
        work = self._scratch()
        src, dst = work / "in.onnx", work / "out.onnx"
        onnx.save(model, str(src))
        # A Conv followed by ReLU/ReLU6 must be quantized with the activation's output range
        # (ORT then drops the Clip): the raw conv output spans ~[-80, 80], and 256 levels over
        # that leave ~10 for the [0, 6] that survives the Clip (measured: 47% top-1 agreement
        # with only the stem conv quantized, when the Clip is left out).
        consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        nodes = list(conv_nodes)
        for n in model.graph.node:
            if n.name in conv_nodes:
                after = consumers.get(n.output[0], [])
                if len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
                    nodes.append(after[0].name)
        logging.disable(logging.WARNING)  # ORT's "consider pre-processing" advice on every call
        try:
            quantize_static(
                str(src), str(dst), _Reader(self.calib_feeds), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv", "Clip", "Relu"], nodes_to_quantize=nodes, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(work / "calibration.json"),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        finally:
            logging.disable(logging.NOTSET)
        out = onnx.load(str(dst))
        del out.metadata_props[:]
        out.metadata_props.extend(model.metadata_props)
        return out


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of feeds (re-iterable)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0

    def __iter__(self):
        return iter(self.feeds)

    def __deepcopy__(self, memo):
        return _Reader(self.feeds)


def _gather_node(prefix: str, ids: str, out: str, name: str, bq: blockwise.BlockQuant):
    """(initializers, GatherBlockQuantized node) looking `ids` up in a transposed table `bq` (fp16 out)."""
    data, scales, zp = blockwise.gather_tensors(bq)
    names = [f"{prefix}.q{bq.bits}", f"{prefix}.scales", f"{prefix}.zp"]
    node = helper.make_node("GatherBlockQuantized", [names[0], ids, names[1], names[2]], [out], name=name,
                            domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=bq.block, bits=bq.bits)
    return list(zip(names, (data, scales, zp), strict=True)), node


def _finish(model, replace: dict, new_inits: list):
    """Swap nodes, add initializers, declare com.microsoft, drop weights nothing reads."""
    nodes = []
    for node in model.graph.node:
        nodes.extend(replace.get(node.name, [node]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for name, arr in new_inits:
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _drop_unused_initializers(model)
    return model


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for sub in (a.g for n in model.graph.node for a in n.attribute if a.g.node):
        used |= {i for n in sub.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def save_model(model, out: str | Path) -> int:
    """Write atomically; returns the file size."""
    with atomic_output(out) as tmp:
        onnx.save(model, str(tmp))
    return Path(out).stat().st_size
