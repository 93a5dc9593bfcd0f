"""A lean decode step for llama-family models: transformers' own computation, without its plumbing.

At one new token per row, transformers' modules spend about as long in Python around the ops
(module calls and their hooks machinery, kwargs plumbing, the deprecation and output-capture
wrappers, output dataclasses) as the small ops themselves take (reports/engine-speed.md, "The
bf16 body against its floor"). `LeanDecoder` walks `model.model.layers` with the modules' own
weights and runs the same torch ops, in the same order and dtypes, as `LlamaModel.forward` and
its layers do: the causal mask and the rotary cos/sin once per step (as the model does), RMSNorm
in fp32 then cast, the same linears (`PackedLinear` included), the cache append through the
cache's `update`, the model's own attention function with the same mask and kwargs, and the
output embedding called as a module (so the engine's hooks on it run). Queries and keys rotate
as one tensor, which gives each value the same roundings (the rotation is elementwise). Outputs are therefore
bit for bit transformers' (tests/test_lean_decode.py), and no sample changes. In float32 the RMSNorms, with the
residual adds before them, and the rotation are C calls (cpu_kernels' `decode_ops_f32`, held to these torch ops bit
for bit when it loads); in bf16 whole layers can be (`lean_kernels`).

It covers llama, and qwen2 and mistral where they are the same computation (qwen2's q/k/v biases
are the linears' own); sliding windows are not covered. `lean_decode_blocker` names what keeps a
model on transformers' path, so the engine can say which path it runs.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch.nn.modules import module as torch_module

from ..core import cpu_kernels
from ..core.cpu_kernels import add_rms_norm, rope_f32
from ..core.decoder_ops import rms_norm, rotate
from .cpu_inference import DECODE_ATTENTION, PackedLinear
from .kv_cache import opens_columns
from .lean_kernels import KernelLayers, kernel_layers_blocker

# model class -> (its modeling module, the class-name prefix of its layers' modules)
SUPPORTED = {
    "LlamaForCausalLM": ("transformers.models.llama.modeling_llama", "Llama"),
    "MistralForCausalLM": ("transformers.models.mistral.modeling_mistral", "Mistral"),
    "Qwen2ForCausalLM": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
}
# where the engine records which path a decode step ran
LEAN = "lean"
TRANSFORMERS = "transformers"


def lean_decode_blocker(model: torch.nn.Module) -> str | None:
    """Why `model` cannot decode through `LeanDecoder` (one line), or None where it can."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        # the step calls transformers 5's mask and cache signatures (4.x names them otherwise)
        return f"transformers {transformers.__version__} (the lean step follows transformers 5's modules)"
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"{name} is not a model the lean decode step covers ({', '.join(SUPPORTED)})"
    modeling, prefix = SUPPORTED[name]
    classes = importlib.import_module(modeling)
    if type(model) is not getattr(classes, name):
        return f"{name} is a subclass or wrapper of transformers' class"
    config = model.config
    if config._attn_implementation not in ("sdpa", "eager", DECODE_ATTENTION):
        return f"attention implementation {config._attn_implementation!r} (the step runs sdpa, eager and ours)"
    if model.training or getattr(config, "output_attentions", False):
        return "training mode or output_attentions"
    if getattr(config, "sliding_window", None) is not None and name == "MistralForCausalLM":
        return "mistral with a sliding window"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    body = model.model
    expected = {
        body.norm: "RMSNorm",
        body.rotary_emb: "RotaryEmbedding",
    }
    for layer in body.layers:
        expected.update(
            {
                layer: "DecoderLayer",
                layer.self_attn: "Attention",
                layer.mlp: "MLP",
                layer.input_layernorm: "RMSNorm",
                layer.post_attention_layernorm: "RMSNorm",
            }
        )
    for module, kind in expected.items():
        if type(module) is not getattr(classes, prefix + kind):
            return f"{type(module).__name__} where {prefix}{kind} was expected (an adapter or a patched module)"
    linears = [m for layer in body.layers for m in (*_attention_linears(layer), *_mlp_linears(layer))]
    if any(type(m) not in (torch.nn.Linear, PackedLinear) for m in linears):
        return "a linear layer that is not an nn.Linear (an adapter)"
    if type(body.embed_tokens) is not torch.nn.Embedding or body.embed_tokens.max_norm is not None:
        return "an input embedding that is not a plain nn.Embedding"
    return _hook_blocker(model, body)


def _hook_blocker(model: torch.nn.Module, body: torch.nn.Module) -> str | None:
    """The step calls the body's modules' forwards directly, so hooks on them would not run."""
    if torch_module._global_forward_pre_hooks or torch_module._global_forward_hooks:
        return "global module hooks"
    if model._forward_hooks:
        return "forward hooks on the model"
    if any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in body.modules()):
        return "hooks or a replaced forward inside the model's body"
    return None


def _attention_linears(layer):
    attention = layer.self_attn
    return attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj


def _mlp_linears(layer):
    return layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj


class _Layer:
    """What a decode step reads of one decoder layer, looked up once: nn.Module attribute access
    goes through `Module.__getattr__` (~1 us each, ~20 per layer and step)."""

    __slots__ = (
        "index", "attention", "input_norm", "post_norm", "heads", "head_dim", "scaling",
        "q", "k", "v", "o", "gate", "up", "down", "act",
    )  # fmt: skip

    def __init__(self, index: int, layer: torch.nn.Module):
        attention, mlp = layer.self_attn, layer.mlp
        self.index, self.attention = index, attention
        self.input_norm = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.post_norm = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.heads, self.head_dim, self.scaling = (
            attention.config.num_attention_heads,
            attention.head_dim,
            attention.scaling,
        )
        # bound forwards: the modules' own, read their weights at each call
        self.q, self.k, self.v, self.o = (m.forward for m in _attention_linears(layer))
        self.gate, self.up, self.down = (m.forward for m in _mlp_linears(layer))
        self.act = mlp.act_fn.forward


def _float_ops_kernel(layers: list[_Layer], final_norm):
    """cpu_kernels' `decode_ops_f32` where it serves these layers (float32 norm weights, contiguous on the CPU; even
    head sizes), else None: the torch ops then run."""
    norms = [final_norm[0]] + [w for layer in layers for w in (layer.input_norm[0], layer.post_norm[0])]
    if any(w.dtype != torch.float32 or not w.is_contiguous() or w.device.type != "cpu" for w in norms):
        return None
    if any(layer.head_dim % 2 for layer in layers) or norms[0].numel() > 16384:
        return None
    return cpu_kernels.load("decode_ops_f32")


class LeanDecoder:
    """One decode step (one new token per row) of a supported model (`lean_decode_blocker`)."""

    def __init__(self, model: torch.nn.Module, kernels: bool = True):
        """`kernels`: run bf16 steps through our C kernels where they serve the model (`lean_kernels`)."""
        from transformers.masking_utils import create_causal_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.model = model
        self.body = model.model
        self.config = model.config
        modeling = importlib.import_module(SUPPORTED[type(model).__name__][0])
        self._create_mask = create_causal_mask
        # transformers 5.x renamed the mask's past_key_values to cache (as GenerationEngine finds for the model)
        self._mask_cache_kwarg = (
            "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
        )
        self._attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, modeling.eager_attention_forward
        )
        # Mistral hands its config's window to attention (None here); Qwen2 its layer's (None on full layers)
        self._extra_kwargs = {"sliding_window": None} if type(model).__name__ != "LlamaForCausalLM" else {}
        self._layers = [_Layer(i, layer) for i, layer in enumerate(self.body.layers[: self.config.num_hidden_layers])]
        self._final_norm = (self.body.norm.weight, self.body.norm.variance_epsilon)
        self.kernels_why = kernel_layers_blocker(model, self._layers) if kernels else "turned off"
        self._kernels = None
        if self.kernels_why is None:
            self._kernels = KernelLayers(self._layers, self._final_norm, self.body.layers[: len(self._layers)])
        # float32: the norms, residual adds and rotation in C, torch's linears and attention (the same bits)
        self._float_ops = _float_ops_kernel(self._layers, self._final_norm) if kernels else None

    def __call__(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """The logits `model(input_ids, attention_mask, position_ids, cache, use_cache=True,
        logits_to_keep=1).logits` holds: [rows, 1, vocab]."""
        self._run_model_pre_hooks(input_ids, attention_mask, position_ids, cache)
        body = self.body
        hidden = body.embed_tokens.forward(input_ids)
        if self._kernels is not None:
            runs, keep = self._kernels.padding(hidden, attention_mask, cache)
            if runs:
                cos, sin = body.rotary_emb(hidden, position_ids=position_ids)
                hidden = self._kernels(hidden, cos, sin, cache, keep)
                return self.model.get_output_embeddings()(hidden[:, -1:, :])
        mask = self._create_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            **{self._mask_cache_kwarg: cache},
            position_ids=position_ids,
        )
        cos, sin = body.rotary_emb(hidden, position_ids=position_ids)
        kwargs = {"position_ids": position_ids, "use_cache": True, **self._extra_kwargs}
        if self._float_ops is not None and hidden.dtype == torch.float32 and hidden.is_contiguous():
            # each layer's keys and values written straight into the cache's new column, where the cache lets them
            rows, in_place = hidden.shape[0], attention_mask is not None
            in_place = in_place and opens_columns(cache, rows, attention_mask.shape[-1] - 1, len(self._layers))
            hidden = self._float_layers(hidden, mask, cos.contiguous(), sin.contiguous(), cache, kwargs, in_place)
            return self.model.get_output_embeddings()(hidden[:, -1:, :])
        # [rows, 1, 1, head_dim]: broadcast over the heads of [rows, 1, heads, head_dim]
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        for layer in self._layers:
            hidden = self._layer(layer, hidden, mask, cos, sin, cache, kwargs)
        hidden = rms_norm(*self._final_norm, hidden)
        return self.model.get_output_embeddings()(hidden[:, -1:, :])

    def _layer(self, layer: _Layer, hidden, mask, cos, sin, cache, kwargs) -> torch.Tensor:
        """LlamaDecoderLayer.forward with LlamaAttention.forward and LlamaMLP.forward inlined."""
        residual = hidden
        normed = rms_norm(*layer.input_norm, hidden)
        rows = hidden.shape[:-1]
        shape = (*rows, -1, layer.head_dim)
        # queries and keys rotate as one tensor: the rotation is elementwise, so each value gets the
        # same roundings as in apply_rotary_pos_emb, in half the small ops
        joined = torch.cat((layer.q(normed), layer.k(normed)), dim=-1).view(shape)
        joined = rotate(joined, cos, sin)
        query, key = joined[:, :, : layer.heads].transpose(1, 2), joined[:, :, layer.heads :].transpose(1, 2)
        value = layer.v(normed).view(shape).transpose(1, 2)
        key, value = cache.update(key, value, layer.index, kwargs=kwargs)
        output, _ = self._attention(
            layer.attention, query, key, value, mask, dropout=0.0, scaling=layer.scaling, **kwargs
        )
        hidden = residual + layer.o(output.reshape(*rows, -1).contiguous())
        residual = hidden
        normed = rms_norm(*layer.post_norm, hidden)
        return residual + layer.down(layer.act(layer.gate(normed)) * layer.up(normed))

    def _float_layers(self, hidden, mask, cos, sin, cache, kwargs, in_place: bool) -> torch.Tensor:
        """The layers and the final norm as `_layer` runs them, with each residual add made by the next norm's call
        and `hidden` (the embeddings) the residual stream in place; `in_place`: the cache opens columns
        (`kv_cache.opens_columns`)."""
        ops, layers, rows = self._float_ops, self._layers, hidden.shape[:-1]
        normed = add_rms_norm(ops, hidden, None, *layers[0].input_norm)
        for index, layer in enumerate(layers):
            q, k, v = layer.q(normed), layer.k(normed), layer.v(normed)
            if in_place:
                kv = cache.layers[layer.index]
                kv.open_column()
                key, value = kv.keys, kv.values
                query, _ = rope_f32(q, k, cos, sin, layer.heads, (v, key, value))
            else:
                query, key = rope_f32(q, k, cos, sin, layer.heads)
                value = v.view(*rows, -1, layer.head_dim).transpose(1, 2)
                key, value = cache.update(key, value, layer.index, kwargs=kwargs)
            output, _ = self._attention(
                layer.attention, query, key, value, mask, dropout=0.0, scaling=layer.scaling, **kwargs
            )
            normed = add_rms_norm(ops, hidden, layer.o(output.reshape(*rows, -1).contiguous()), *layer.post_norm)
            delta = layer.down(layer.act(layer.gate(normed)) * layer.up(normed))
            norm = layers[index + 1].input_norm if index + 1 < len(layers) else self._final_norm
            normed = add_rms_norm(ops, hidden, delta, *norm)
        return normed

    def _run_model_pre_hooks(self, input_ids, attention_mask, position_ids, cache) -> None:
        """What calling the model runs before its forward: its pre-hooks (the engine's huge-page
        placement counts calls there). Values they return are not used: none of ours return any."""
        model = self.model
        if not model._forward_pre_hooks:
            return
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": True,
        }
        for key, hook in list(model._forward_pre_hooks.items()):
            if key in model._forward_pre_hooks_with_kwargs:
                hook(model, (), kwargs)
            else:
                hook(model, ())
