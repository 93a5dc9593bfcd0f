"""The KV-cache layer our decode loop grows in place: views of zeroed buffers with spare columns and rows."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .cpu_inference import ZERO_TAIL


class GrowingLayer(DynamicLayer):
    """A plain per-layer KV cache whose keys/values are views of zeroed buffers with spare columns.

    DynamicLayer concatenates the whole cache with the new token at every step, copying all of
    it (at 32 rows x 100 tokens that was a third of a bf16 decode step on CPU). Here a step
    writes its column into the buffer's spare room and only a full buffer is copied, into one
    with a quarter more room. Anything else that sets `keys`/`values` (joining rows, trimming
    padding) is just a tensor: it is appended to in place when it still views this layer's
    buffer with room after it, and copied into a new buffer otherwise. Values are unchanged.

    Columns after a view are zeros (nothing writes past the end; `crop` starts a new buffer),
    and the views say how many (`ZERO_TAIL`): the CPU decode attention then multiplies the
    whole buffer, contiguous, instead of having torch copy the strided view first.

    Buffers also keep a few spare rows, and a view may use only the first of them: rows that
    leave, split or join are moved or written within the buffer (`select_rows`, `append_rows`)
    instead of the whole cache being gathered or concatenated anew (at 32 rows x 100 tokens in
    bf16 that gather was ~12 ms, a fifth of a two-thread decode step, on most steps).
    """

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self._key_buffer = _append_columns(self.keys, key_states, getattr(self, "_key_buffer", None))
        self.values, self._value_buffer = _append_columns(
            self.values, value_states, getattr(self, "_value_buffer", None)
        )
        return self.keys, self.values

    def open_column(self) -> None:
        """Make `keys` and `values` one column longer, as `update` with one token would, leaving
        the new column for the caller to write (it holds zeros until then). For a decode step
        that writes its keys and values straight into the cache (cpu_kernels.rope_append); the
        layer must hold tokens already. Views this method made last time are extended without
        checking where they lie again (`_column_in` took ~30 us a layer)."""
        keys, values = self.keys, self.values
        opened = getattr(self, "_opened", None)
        if opened is not None and opened[0] is keys and opened[1] is values:
            shape = (keys.shape[0], keys.shape[1], keys.shape[2] + 1, keys.shape[3])
            key_tail, value_tail = getattr(keys, ZERO_TAIL, 0) - 1, getattr(values, ZERO_TAIL, 0) - 1
            if key_tail >= 0 and value_tail >= 0:  # one op per view (slicing the buffer took two)
                self.keys = keys.as_strided(shape, keys.stride(), keys.storage_offset())
                self.values = values.as_strided(shape, values.stride(), values.storage_offset())
                setattr(self.keys, ZERO_TAIL, key_tail)
                setattr(self.values, ZERO_TAIL, value_tail)
                self._opened = (self.keys, self.values)
                return
        self.keys, self._key_buffer = _open_columns(keys, 1, getattr(self, "_key_buffer", None))
        self.values, self._value_buffer = _open_columns(values, 1, getattr(self, "_value_buffer", None))
        self._opened = (self.keys, self.values)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices` (row i becomes old row indices[i])."""
        sources = indices.tolist()
        self.select_rows(sources, _moves(sources))

    def select_rows(self, sources: list[int], moves: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Row i becomes old row `sources[i]`; `moves` holds the (rows, their sources) where the
        two differ. Only those rows are copied, in place, when the buffer has room for the rows;
        otherwise all are gathered into a new buffer with room for a few more. Spare columns go
        along, so the next step appends in place."""
        self._opened = None  # (only memory: the views it keeps would keep a replaced buffer)
        if self.get_seq_length() > 0:
            self.keys, self._key_buffer = _select_rows(self.keys, sources, moves, getattr(self, "_key_buffer", None))
            self.values, self._value_buffer = _select_rows(
                self.values, sources, moves, getattr(self, "_value_buffer", None)
            )

    def has_room(self, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Whether `append_rows` can write these rows into this layer's buffers as they are."""
        return (
            self.get_seq_length() > 0
            and _has_room(self.keys, keys, getattr(self, "_key_buffer", None))
            and _has_room(self.values, values, getattr(self, "_value_buffer", None))
        )

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        # the cut columns are not zeros: never append over them
        self._key_buffer = self._value_buffer = self._opened = None


def opens_columns(cache, rows: int, length: int, layers: int) -> bool:
    """Whether a decode step can write its keys and values straight into `cache` (`GrowingLayer.open_column`): its
    `layers` layers are all GrowingLayers holding `length` > 0 tokens of `rows` rows."""
    cache_layers = getattr(cache, "layers", None)
    if cache_layers is None or getattr(cache, "offloading", False) or len(cache_layers) != layers or length == 0:
        return False
    for layer in cache_layers:
        if type(layer) is not GrowingLayer or not layer.is_initialized:
            return False
        keys = layer.keys
        if keys.dim() != 4 or keys.shape[0] != rows or keys.shape[2] != length:
            return False
    return True


def _column_in(view: torch.Tensor, buffer: torch.Tensor | None) -> int | None:
    """The buffer column where `view` starts, if `view` is `buffer[:rows, :, a:b]`; else None."""
    if (
        buffer is None
        or view.dim() != 4
        or view.stride() != buffer.stride()
        or view.shape[0] > buffer.shape[0]
        or view.shape[1] != buffer.shape[1]
        or view.shape[3] != buffer.shape[3]
    ):
        return None
    if view.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr():
        return None
    offset = view.storage_offset() - buffer.storage_offset()
    column, rest = divmod(offset, buffer.stride(2))
    if rest or column < 0 or column + view.shape[2] > buffer.shape[2]:
        return None
    return column


def _columns(buffer: torch.Tensor, rows: int, start: int, end: int) -> torch.Tensor:
    view = buffer[:rows, :, start:end]
    setattr(view, ZERO_TAIL, buffer.shape[2] - end)
    return view


def _append_columns(
    cache: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if cache.dim() != 4 or cache.numel() == 0:
        cache = new[:, :, :0]
    view, buffer = _open_columns(cache, new.shape[2], buffer)
    view[:, :, cache.shape[2] :] = new
    return view, buffer


def _open_columns(cache: torch.Tensor, added: int, buffer: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`cache` (4-d) with `added` more columns, in its buffer where there is room after it, else
    copied into a new buffer with room; the added columns are the buffer's zeros."""
    length = cache.shape[2]
    start = _column_in(cache, buffer)
    if start is None or start + length + added > buffer.shape[2]:
        total = length + added
        buffer = cache.new_zeros(
            (_with_room(cache.shape[0]), cache.shape[1], total + max(16, total // 4), cache.shape[3])
        )
        buffer[: cache.shape[0], :, :length] = cache
        start = 0
    return _columns(buffer, cache.shape[0], start, start + length + added), buffer


def _with_room(rows: int) -> int:
    """Rows a new buffer holds: a few more than in use, for rows that split or join later."""
    return rows + max(4, rows // 4)


def append_rows(cache, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Add rows to every layer in place: per layer (keys, values) no longer than the cache's, which
    are left-padded with zeros to its length and written into the buffer's spare rows. Returns
    False, changing nothing, where some layer is not a growing one with that room."""
    layers = cache.layers
    if len(layers) != len(kv) or not all(
        isinstance(layer, GrowingLayer) and layer.has_room(keys, values) for layer, (keys, values) in zip(layers, kv)
    ):
        return False
    for layer, (keys, values) in zip(layers, kv):
        layer.keys = _write_rows(layer.keys, keys, layer._key_buffer)
        layer.values = _write_rows(layer.values, values, layer._value_buffer)
    return True


def _has_room(cache: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    return (
        _column_in(cache, buffer) is not None
        and cache.shape[0] + new.shape[0] <= buffer.shape[0]
        and new.shape[1:2] == cache.shape[1:2]
        and new.shape[3] == cache.shape[3]
        and new.shape[2] <= cache.shape[2]
    )


def _write_rows(cache: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    start, rows, length = _column_in(cache, buffer), cache.shape[0], cache.shape[2]
    added = buffer[rows : rows + new.shape[0]]
    added.zero_()  # spare rows may hold rows that left: the padding and the tail must be zeros
    added[:, :, start + length - new.shape[2] : start + length] = new
    return _columns(buffer, rows + new.shape[0], start, start + length)


def _moves(sources: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    moved = [row for row, source in enumerate(sources) if row != source]
    return torch.tensor(moved, dtype=torch.long), torch.tensor([sources[row] for row in moved], dtype=torch.long)


def select_rows(cache, sources: list[int]) -> None:
    """Every layer of `cache` keeps old row `sources[i]` as row i (rows dropped, split, reordered).
    A growing layer with room copies only the rows whose source is another row, in place."""
    moves = _moves(sources)
    keep = None
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.select_rows(sources, moves)
        else:
            keep = torch.tensor(sources) if keep is None else keep
            layer.batch_select_indices(keep)


def _select_rows(
    cache: torch.Tensor, sources: list[int], moves: tuple[torch.Tensor, torch.Tensor], buffer: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    start = _column_in(cache, buffer)
    keep = torch.tensor(sources, dtype=torch.long)
    if start is None:
        return cache.index_select(0, keep), None
    rows, (moved, moved_from) = len(sources), moves
    if rows <= buffer.shape[0]:
        # the gather copies the sources out first, so a row may be both a source and overwritten
        if moved.numel():
            buffer.index_copy_(0, moved, buffer.index_select(0, moved_from))
        return _columns(buffer, rows, start, start + cache.shape[2]), buffer
    # index_select, not buffer[keep]: advanced indexing of a bf16 cache was ~3x slower
    selected = buffer.new_zeros((_with_room(rows), *buffer.shape[1:2], buffer.shape[2] - start, buffer.shape[3]))
    selected[:rows] = buffer[:, :, start:].index_select(0, keep)
    return _columns(selected, rows, 0, cache.shape[2]), selected
