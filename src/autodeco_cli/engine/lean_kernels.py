"""The lean decode step's layers in bf16 through our C kernels: a dozen calls a layer, not ~60 ops.

On the 2-vCPU Xeon at 2 threads, the ops around the linears took about as long as the linears
(reports/engine-speed.md, "The lean body's small ops"): per layer two RMSNorms of 8 torch ops
each, the residual adds, the rotation and the cache append (~15 ops), SiLU * up, and the mask
and format conversions around the attention kernel, ~3-10 us each at 1-32 rows, mostly dispatch.
Here each of those is one C call (cpu_kernels' `decode_ops_bf16`, checked bit for bit against
torch's ops on load), the residual add rides with the next RMSNorm, keys and values are written
straight into the growing cache's buffer, and the attention kernel gets the rows' padding once
per step instead of a 4-d mask per layer. The values are the ones the torch ops give (the same
roundings, the same fp32 sum order), so a step gives transformers' bits wherever transformers
runs the same attention implementation (ours: `DECODE_ATTENTION`).

Only bf16 models whose attention is our decode attention take it; float32 never does. A step
takes it when every cache layer is a `GrowingLayer` holding tokens and the attention mask has
one column per cached token plus the new one (as the engine's decode loop passes it); any other
step runs `LeanDecoder`'s torch ops.
"""

from __future__ import annotations

import torch
from transformers.activations import SiLUActivation

from ..core import cpu_kernels
from ..core.attention_kernel import decode_attention_rows
from ..core.cpu_kernels import add_rms_norm, amx_matmul, decode_layers, rope_append, silu_mul
from .cpu_inference import DECODE_ATTENTION, PackedLinear
from .kv_cache import GrowingLayer, opens_columns


def kernel_layers_blocker(model: torch.nn.Module, layers) -> str | None:
    """Why the bf16 kernel layers do not serve `model` (whose lean `layers` are given), or None."""
    config = model.config
    if model.dtype != torch.bfloat16:
        return f"dtype {model.dtype} (the kernels are bf16)"
    if config._attn_implementation != DECODE_ATTENTION:
        return f"attention implementation {config._attn_implementation!r}"
    if cpu_kernels.load("decode_ops_bf16") is None or cpu_kernels.load("decode_attention_bf16") is None:
        return "the C kernels do not run here (CPU features, compiler, or AUTODECO_CPU_KERNEL=0)"
    body = model.model
    norms = [body.norm.weight] + [w for layer in layers for w in (layer.input_norm[0], layer.post_norm[0])]
    if any(w.dtype != torch.bfloat16 or not w.is_contiguous() or w.device.type != "cpu" for w in norms):
        return "an RMSNorm weight that is not contiguous bf16 on the CPU"
    for layer, module in zip(layers, body.layers):
        act = module.mlp.act_fn
        if type(act) not in (SiLUActivation, torch.nn.SiLU) or type(act).forward not in (
            SiLUActivation.forward,
            torch.nn.SiLU.forward,
        ):
            return f"activation {type(act).__name__} (the kernels run SiLU)"
        kv_heads = module.self_attn.config.num_key_value_heads
        if layer.head_dim % 32 or layer.head_dim > 256 or layer.heads % kv_heads or layer.heads // kv_heads > 64:
            return "attention heads the kernel does not take"
    return None


class _Joined:
    """Linears of one input whose AMX-packed weights lie back to back (as `pack_linear_weights`
    packs a layer's q, k, v and its gate, up): one call of the AMX kernel computes all their
    outputs side by side, each column as its own linear computes it (the kernel's sums run per
    16 outputs), saving the other calls' Python and thread start-up."""

    __slots__ = ("kernel", "packed", "bias", "width")

    def __init__(self, kernel, packed, bias, width):
        self.kernel, self.packed, self.bias, self.width = kernel, packed, bias, width

    @classmethod
    def of(cls, linears) -> _Joined | None:
        first = linears[0]
        if any(type(m) is not PackedLinear or m._amx is None or m.in_features != first.in_features for m in linears):
            return None
        end = first._amx_weight.data_ptr()
        for m in linears:  # whole tiles of 16 outputs each, one after the other
            if m.out_features % 16 or m._amx_weight.data_ptr() != end or not m._amx_weight.is_contiguous():
                return None
            end += m._amx_weight.nbytes
        packed = torch.as_strided(first._amx_weight, (sum(m._amx_weight.numel() for m in linears),), (1,))
        biases = [m.bias for m in linears]
        if any(b is not None for b in biases):
            biases = [
                b if b is not None else torch.zeros(m.out_features, dtype=torch.bfloat16)
                for b, m in zip(biases, linears)
            ]
            bias = torch.cat([b.detach() for b in biases])
        else:
            bias = None
        return cls(first._amx, packed, bias, sum(m.out_features for m in linears))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The linears' outputs side by side: [..., sum of their widths]."""
        return amx_matmul(self.kernel, x, self.packed, self.bias, self.width)


class KernelLayers:
    """Runs a decode step's decoder layers and final norm through the kernels (see the module doc)."""

    def __init__(self, layers, final_norm, modules):
        self.layers = layers
        self.final_norm = final_norm
        self.ops = cpu_kernels.load("decode_ops_bf16")
        self.attention = cpu_kernels.load("decode_attention_bf16")
        # per layer: q, k, v and gate, up as one call each, or their own linears where they are not packed so
        self.qkv = [_Joined.of([m.self_attn.q_proj, m.self_attn.k_proj, m.self_attn.v_proj]) for m in modules]
        self.gate_up = [_Joined.of([m.mlp.gate_proj, m.mlp.up_proj]) for m in modules]
        self.one_call = _OneCall.of(self, modules)

    def padding(self, hidden, attention_mask, cache) -> tuple[bool, torch.Tensor | None]:
        """(whether this step can run here, the rows' padding as bytes or None when there is none)."""
        if attention_mask is None or hidden.dtype != torch.bfloat16 or not hidden.is_contiguous():
            return False, None
        rows, length = hidden.shape[0], attention_mask.shape[-1] - 1
        if not opens_columns(cache, rows, length, len(self.layers)) or attention_mask.shape != (rows, length + 1):
            return False, None
        # one query position after every cached one: the causal mask is the padding alone
        if bool(attention_mask.all()):
            return True, None
        return True, attention_mask.to(torch.uint8).contiguous()

    def __call__(self, hidden, cos, sin, cache, keep) -> torch.Tensor:
        """The final norm's output; `hidden` (the embeddings, [rows, 1, hidden]) becomes the
        residual stream in place."""
        ops, layers = self.ops, self.layers
        cos, sin = cos.contiguous(), sin.contiguous()
        if self.one_call is not None and not torch.is_grad_enabled():
            return self.one_call(hidden, cos, sin, cache, keep)
        normed = add_rms_norm(ops, hidden, None, *layers[0].input_norm)
        for index, layer in enumerate(layers):
            delta = self._layer(index, layer, cache.layers[index], hidden, normed, cos, sin, keep)
            norm = layers[index + 1].input_norm if index + 1 < len(layers) else self.final_norm
            normed = add_rms_norm(ops, hidden, delta, *norm)
        return normed

    def _layer(self, index, layer, kv: GrowingLayer, hidden, normed, cos, sin, keep) -> torch.Tensor:
        """LlamaDecoderLayer.forward up to its last residual add (which the next norm makes)."""
        qkv = self.qkv[index]
        q, k, v = (qkv(normed), None, None) if qkv is not None else (layer.q(normed), layer.k(normed), layer.v(normed))
        kv.open_column()
        keys, values = kv.keys, kv.values
        queries = rope_append(q, k, v, cos, sin, keys, values, layer.heads)
        attended = decode_attention_rows(self.attention, queries, keys, values, keep, layer.scaling)
        normed = add_rms_norm(self.ops, hidden, layer.o(attended), *layer.post_norm)
        gate_up = self.gate_up[index]
        gate, up = (gate_up(normed), None) if gate_up is not None else (layer.gate(normed), layer.up(normed))
        return layer.down(silu_mul(gate, up))


class _OneCall:
    """All of a step's layers as one C call (cpu_kernels.decode_layers): the same kernels, arguments and
    order as `KernelLayers`' calls from Python, so the same bits, without ~9 Python calls a layer that
    each ran on caches the streamed weights had emptied. Only where every linear runs the AMX kernel
    (q|k|v and gate|up joined) and all layers have one shape; the weights' pointers are read once, here,
    as `_Joined` reads its own."""

    __slots__ = ("kernel", "weights", "scalars", "shape", "final_norm", "held")

    @classmethod
    def of(cls, layers: KernelLayers, modules) -> _OneCall | None:
        kernel = cpu_kernels.load("decode_layers_bf16")
        if kernel is None or None in layers.qkv or None in layers.gate_up:
            return None
        outs = [(m.self_attn.o_proj, m.mlp.down_proj) for m in modules]
        if any(type(m) is not PackedLinear or m._amx is None for pair in outs for m in pair):
            return None
        first = layers.layers[0]
        heads, dim, hidden = first.heads, first.head_dim, outs[0][0].out_features
        kv_heads, inter = modules[0].self_attn.config.num_key_value_heads, outs[0][1].in_features
        one_shape = (heads, dim, (heads + 2 * kv_heads) * dim, 2 * inter, heads * dim, hidden, inter, hidden)
        held, rows = [], []  # the tensors whose pointers `weights` holds; each layer's pointers

        def pointer(tensor):
            if tensor is None:
                return 0
            held.append(tensor)
            return tensor.data_ptr()

        for layer, qkv, gate_up, (o, down) in zip(layers.layers, layers.qkv, layers.gate_up, outs):
            sizes = (layer.heads, layer.head_dim, qkv.width, gate_up.width, o.in_features, o.out_features)
            if sizes + (down.in_features, down.out_features) != one_shape:
                return None
            linears = ((qkv.packed, qkv.bias), (o._amx_weight, o.bias), (gate_up.packed, gate_up.bias))
            linears += ((down._amx_weight, down.bias),)
            norms = (pointer(layer.input_norm[0]), pointer(layer.post_norm[0]))
            rows.append((*norms, *(pointer(t) for pair in linears for t in pair)))
        plan = cls()
        plan.kernel, plan.shape, plan.final_norm = kernel, (hidden, heads, kv_heads, dim, inter), layers.final_norm
        plan.weights = torch.tensor(rows, dtype=torch.int64)
        scalars = [(layer.input_norm[1], layer.post_norm[1], layer.scaling) for layer in layers.layers]
        plan.scalars = torch.tensor(scalars, dtype=torch.float32)
        plan.held = held
        return plan

    def __call__(self, hidden, cos, sin, cache, keep) -> torch.Tensor:
        caches = []
        for kv in cache.layers:
            kv.open_column()
            keys, values = kv.keys, kv.values
            strides = keys.stride()
            if values.stride() != strides or strides[3] != 1:
                raise ValueError("the decode attention kernel takes keys and values of one layout (unit last stride)")
            caches += (keys.data_ptr(), values.data_ptr(), keys.shape[2], *strides[:3])
        return decode_layers(self.kernel, self.weights, self.scalars, caches, self.shape, hidden, cos, sin, keep,
                             self.final_norm)  # fmt: skip
