"""The frozen base's side of head training: last hidden states and next-token targets at
every labelled position, computed per batch or cached once on disk per (data, model, dtype)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.heads import hook_layer_output
from ..core.safe_writes import staged
from .config import TrainConfig
from .data import IGNORE_INDEX, Example


@dataclass
class Features:
    hidden: torch.Tensor  # [N, H], loss positions only
    targets: torch.Tensor  # [N]
    counts: list[int]  # loss positions per example, in batch order


def _pad_batch(examples: list[Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _heads_states(model, ids: torch.Tensor, mask: torch.Tensor, tap_layer: int | None) -> torch.Tensor:
    """The decoder's last hidden states; with `tap_layer`, that layer's output before them ([tap, last])."""
    decoder = model.get_decoder()
    if not tap_layer:
        return decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    tapped: list[torch.Tensor] = []
    handle = hook_layer_output(model, tap_layer, tapped.append)
    try:
        last = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        handle.remove()
    return torch.cat((tapped[-1], last), dim=-1)


def base_features(
    model, examples: list[Example], pad_id: int, device, trainable_base: bool, tap_layer: int | None = None
) -> Features:
    """Last hidden states at the positions that predict a label (with `tap_layer`, the heads' input: that
    decoder layer's output beside the last state). The frozen base runs under inference_mode (no graph, no
    saved activations); with LoRA it must keep its graph."""
    ids, labels, mask = _pad_batch(examples, pad_id, device)
    context = torch.enable_grad() if trainable_base else torch.inference_mode()
    with context:
        hidden = _heads_states(model, ids, mask, tap_layer)
        shifted = labels[:, 1:]
        select = shifted != IGNORE_INDEX
        selected = hidden[:, :-1][select]
        targets = shifted[select]
    if not trainable_base:
        # inference tensors cannot enter autograd; the copy is only [N, H]
        selected, targets = selected.clone(), targets.clone()
    return Features(selected.float(), targets, select.sum(dim=1).tolist())


def frozen_features(lm, examples: list[Example], device, tap_layer: int | None) -> Features:
    """`base_features` of a frozen base (`lm`: a loaded model with its tokenizer), as the heads read them."""
    return base_features(
        lm.model, examples, lm.tokenizer.pad_token_id, device, trainable_base=False, tap_layer=tap_layer
    )


class HiddenStateCache:
    """Last hidden states of every loss position, computed once, reused by every epoch.

    Stored as fp32 safetensors (exact: the heads see the same inputs as without the cache; a
    bf16 base's states are bf16 values, kept under their own key).
    Logits are not cached: at V=49k they would be ~200 KB per token, while recomputing them
    from the cached state is one matmul.
    """

    def __init__(self, hidden: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor):
        self.hidden, self.targets, self.offsets = hidden, targets, offsets

    @staticmethod
    def key(
        config: TrainConfig,
        data_path: Path,
        num_examples: int,
        dtype: torch.dtype = torch.float32,
        tap_layer: int | None = None,
    ) -> str:
        import hashlib

        digest = hashlib.sha256()
        with data_path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(
            json.dumps(
                [config.model, config.adapter, config.max_length, config.overlong, config.limit, num_examples]
            ).encode()
        )
        if dtype != torch.float32:  # a bf16 base computes other states (fp32 caches keep their old names)
            digest.update(str(dtype).encode())
        if tap_layer:  # other states: [tap, last]
            digest.update(f"tap {tap_layer}".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def build_or_load(
        cls,
        path: Path,
        model,
        examples: list[Example],
        pad_id: int,
        device,
        batch_size: int,
        progress=None,
        tap_layer: int | None = None,
    ) -> "HiddenStateCache":
        from safetensors.torch import load_file, save_file

        if path.is_file():
            state = load_file(str(path))
            return cls(state["hidden"], state["targets"], state["offsets"])
        hidden_parts, target_parts, counts = [], [], []
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            features = base_features(model, batch, pad_id, device, trainable_base=False, tap_layer=tap_layer)
            hidden_parts.append(features.hidden.cpu())
            target_parts.append(features.targets.cpu())
            counts += features.counts
            if progress is not None:
                progress(sum(features.counts))
        offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(counts), 0)
        cache = cls(torch.cat(hidden_parts), torch.cat(target_parts), offsets)
        tensors = {"hidden": cache.hidden, "targets": cache.targets, "offsets": cache.offsets}
        with staged(path, sum(t.numel() * t.element_size() for t in tensors.values())) as staging:
            save_file(tensors, str(staging))
        return cache

    def features(self, examples: list[Example], device) -> Features:
        spans = [(int(self.offsets[e.index]), int(self.offsets[e.index + 1])) for e in examples]
        hidden = torch.cat([self.hidden[a:b] for a, b in spans]).to(device)
        targets = torch.cat([self.targets[a:b] for a, b in spans]).to(device)
        return Features(hidden, targets, [b - a for a, b in spans])


# ---- the trainer ----------------------------------------------------------------------------
