"""Real torch models built in code that run as stages (`accordion.workers.staged`).

Three built-in models, weights fixed by a seed (every process builds the same), for the tests,
the benchmark (bench/cellular) and users who want to try the modes:

* ``builtin:gru-seq``: a GRU sequence classifier. One request is a sequence ``[L, 64]`` of any
  length L; the answer is the class scores ``[10]`` of the last hidden state. Its stage is the
  GRU cell: one step consumes one element of every running request (cellular batching).
* ``builtin:decoder-tiny``: a decoder-only transformer (2 layers, width 128, vocabulary 256)
  that generates greedily with a KV cache. One request is INT64 tokens ``[T]``: the prompt
  (tokens > 0) followed by one 0 per token to generate, so input and output lengths both vary;
  the answer is the generated tokens ``[n]`` (as FP32, the worker's output type). Its stage is
  one decoding step: every running request feeds one token (the next prompt token, or the one
  it generated last) and its own KV cache grows by one position.
* ``builtin:cnn-deep``: a deep CNN ``[3, 32, 32] -> [10]`` as an ``nn.Sequential`` of 10
  blocks, the stages of node-level batching (LazyBatching).

Each comes with `StagedModel`: the per-request state, the batched step, and a reference that
runs one request alone the plain way (``nn.GRU`` over the whole sequence; the decoder without a
cache, recomputing the full causal forward for every token; the CNN whole). The tests hold
every batching mode to that reference.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from accordion.workers.staged import StagedModel

GRU_FEATURES, GRU_HIDDEN, GRU_CLASSES = 64, 512, 10
VOCAB, WIDTH, HEADS, LAYERS, CONTEXT = 256, 128, 4, 2, 512
CNN_CHANNELS, CNN_BLOCKS = 32, 8


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
        torch.manual_seed(seed)
        module = build().eval()
        module.requires_grad_(False)  # inference only: no autograd graph behind any output
        return module


class _TorchStaged(StagedModel):
    """A staged model of torch modules on one device (`to`): the CPU until told otherwise."""

    device = torch.device("cpu")

    def to(self, device: str) -> None:
        from accordion.workers.models import torch_device  # models imports this module

        self.device = torch_device(device)
        self._moved()

    def _moved(self) -> None:
        """Move the weights (and any state kept between requests) to `self.device`."""

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------ GRU


class GruClassifier(nn.Module):
    """``nn.GRU`` over a sequence, a linear head on the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(GRU_FEATURES, GRU_HIDDEN, batch_first=True)
        self.head = nn.Linear(GRU_HIDDEN, GRU_CLASSES)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(sequence)
        out: torch.Tensor = self.head(hidden[-1])
        return out


@dataclass
class _GruState:
    sequence: npt.NDArray[np.float32]  # [L, F] on the host: a step copies its rows at once
    position: int = 0
    slot: _Row | None = None  # its hidden state's row in the model's `_RowPool` while in flight
    hidden: torch.Tensor | None = None  # [H], the last hidden state, once the last step ran


class _Row:
    """A request's row in a `_RowPool` (-1 once given back)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _RowPool:
    """The hidden state of every request in flight as rows of one tensor [rows, H] on the
    model's device; row 0 holds zeros for ever (the state before a request's first step).

    A step gathers its requests' rows by index and writes the new ones back the same way: a
    handful of kernels whatever the batch. Stacking per-request tensors and splitting the
    result again cost a call per request: on an H200 the GRU step took 0.42 ms at batch 64
    that way (0.14 ms at 16), launch and Python bound. A request takes a row at its first step
    and gives it back after its last, or when its state is garbage (a request dropped in
    flight: `weakref.finalize`); the pool doubles when every row is taken. Thread-safe: rows
    are given back from any thread, taken on the model thread."""

    def __init__(self, width: int, device: torch.device, rows: int = 64) -> None:
        self.data = torch.zeros(rows, width, device=device)
        self._free = list(range(rows - 1, 0, -1))  # pop() hands out the lowest first
        self._lock = threading.Lock()

    @property
    def taken(self) -> int:
        return int(self.data.shape[0]) - 1 - len(self._free)

    def take(self, owner: object) -> _Row:
        with self._lock:
            if not self._free:
                rows = int(self.data.shape[0])
                with torch.inference_mode(False):  # usable in and out of inference mode
                    self.data = torch.cat([self.data, torch.zeros_like(self.data)])
                self._free = list(range(2 * rows - 1, rows - 1, -1))
            row = _Row(self._free.pop())
        weakref.finalize(owner, self._give, row)
        return row

    def _give(self, row: _Row) -> None:
        with self._lock:
            if row.index > 0:
                self._free.append(row.index)
                row.index = -1

    def release(self, row: _Row) -> None:
        """The request is done with its row (idempotent, as is its finalizer)."""
        self._give(row)


class GruStaged(_TorchStaged):
    """The GRU classifier as one cell: a step advances every request by one element."""

    stages = 1
    ragged = True

    def __init__(self, seed: int = 0) -> None:
        module = _seeded(seed, GruClassifier)
        assert isinstance(module, GruClassifier)
        self.module = module
        gru = module.gru
        self.cell = nn.GRUCell(GRU_FEATURES, GRU_HIDDEN).eval().requires_grad_(False)
        with torch.no_grad():  # the same weights as the layer: one model, two executions
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(gru, f"{name}_l0"))
        self.input_shape = (-1, GRU_FEATURES)
        self.datatype = "FP32"
        self.pool = _RowPool(GRU_HIDDEN, self.device)

    def _moved(self) -> None:
        self.module.to(self.device)
        self.cell.to(self.device)
        self.pool = _RowPool(GRU_HIDDEN, self.device)

    def steps(self, sample: npt.NDArray[np.generic]) -> int:
        if sample.ndim != 2 or sample.shape[1] != GRU_FEATURES or sample.shape[0] < 1:
            raise ValueError(f"a gru-seq request is a sequence [L >= 1, {GRU_FEATURES}]")
        return int(sample.shape[0])

    def state_bytes(self, sample: npt.NDArray[np.generic]) -> int:
        return 4 * (GRU_HIDDEN + int(sample.size))

    def begin(self, sample: npt.NDArray[np.generic]) -> Any:
        return _GruState(np.array(sample, dtype=np.float32))

    def run(self, stage: int, states: Sequence[Any]) -> list[Any]:
        pool = self.pool
        for s in states:
            if s.slot is None:
                s.slot = pool.take(s)
        b = len(states)
        x = torch.from_numpy(np.stack([s.sequence[s.position] for s in states]))
        # rows read (row 0, zeros, at a first step) and written, in one copy to the device
        read = [s.slot.index if s.position else 0 for s in states]
        rows = _ints(read + [s.slot.index for s in states]).to(self.device)
        new = self.cell(x.to(self.device), pool.data.index_select(0, rows[:b]))
        pool.data.index_copy_(0, rows[b:], new)
        for k, s in enumerate(states):
            s.position += 1
            if s.position == len(s.sequence):  # its last step: keep the state, free the row
                s.hidden = new[k]
                pool.release(s.slot)
        return list(states)

    def finish(self, state: Any) -> npt.NDArray[np.generic]:
        if state.hidden is None:
            raise ValueError("finish before the request's last step")
        out: torch.Tensor = self.module.head(state.hidden)
        return out.cpu().numpy()

    def alone(self, sample: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        seq = torch.from_numpy(np.array(sample, dtype=np.float32)).to(self.device)
        out: torch.Tensor = self.module(seq.unsqueeze(0))[0]
        return out.cpu().numpy()

    def example(self, steps: int, seed: int = 0) -> npt.NDArray[np.generic]:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((steps, GRU_FEATURES)).astype(np.float32)


# -------------------------------------------------------------------------- decoder


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.ln2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
        )


class TinyDecoder(nn.Module):
    """A GPT-style decoder: token and position embeddings, pre-norm blocks, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(_Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of every position of `tokens` [T] (causal, no cache): the reference."""
        t = tokens.shape[0]
        x = self.tokens(tokens) + self.positions(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            assert isinstance(block, _Block)
            q, k, v = _heads(block.qkv(block.ln1(x)).unsqueeze(0))
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block.proj(attn.transpose(1, 2).reshape(1, t, WIDTH)[0])
            x = x + block.mlp(block.ln2(x))
        out: torch.Tensor = self.head(self.ln(x))
        return out


def _heads(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[b, T, 3W] -> q, k, v as [b, heads, T, W/heads]."""
    b, t, _ = qkv.shape
    parts = qkv.view(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


SPLIT_MIN_POSITIONS = 384
"""A step's attention is split into one more group only when that saves at least this many
attended (row, position) pairs: one `scaled_dot_product_attention` call with its slicing costs
about as much as attending over that many (measured on this project's CPU, one thread: a call
at batch 1 ~8 us with its mask, then ~40 ns per row and position at width 128, 4 heads; the
group's slicing and joining ~6 us more)."""


class _Slot:
    """Where a request's state lives in a `_SlotPool` (moved when the pool compacts), and how
    many positions of it hold state."""

    __slots__ = ("index", "used")

    def __init__(self, index: int) -> None:
        self.index = index
        self.used = 0


class _SlotPool:
    """The state of every request in flight (the decoder's KV caches) in one tensor, one slot
    per request along dimension `dim` (`shape` at 8 slots; it doubles when more than half are
    taken and none is left), read by the step as views, never copied per step.

    Why one pool: kept per request, the decoder copied each request's KV cache into a zeroed,
    padded batch per layer and step; its step grew with the batch times its longest context
    (measured 3.15 ms at batch 32 with contexts up to 16, 7.78 ms up to 256).

    Why slots in the order requests arrive: reading keys and values is the step's cost (on
    this CPU attention and a copy both take ~40 ns per row and position), and a batch whose
    members attend over its longest member's context pays for the padding of all the others
    (at the bench's lengths, batch 64: 46% of what it attended). Slots are handed out in
    increasing order, so along the slot dimension contexts decrease (every request in flight
    advances one position per step; requests that skip steps only blur the order), and the
    step splits its batch into ranges of neighbouring slots of similar contexts
    (`_attention_groups`), each attending over its own longest context: no gather, little
    padding. A finished request leaves a hole; holes inside a range cost like padding. The
    pool compacts (moves the requests in flight down, in their order, each by its used
    positions) when it runs out of slots, or when the positions attended over holes since
    the last compaction exceed twice what a compaction copies (a copy costs about twice an
    attended position: rent or buy).

    Head-major within a slot (the decoder's pool is [layer, k/v, slot, head, position, head
    width]): each head's keys of a slot are one contiguous run that attention streams through.
    Position-major (one row of all heads per position) read 128 bytes of every 512 per head; the
    step at batch 64 of mixed contexts took 4.82-4.88 ms with it against 4.38-4.50 ms head-major
    (one torch thread, this project's 2-core EPYC VM, 2026-12-04).

    Slots are given back after a request's last step, or when its state is garbage (a request
    dropped in flight): `weakref.finalize`. Thread-safe: states are made and dropped on the
    event loop's thread, steps (and compactions) run on the model thread."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dim: int,
        positions_dim: int,
        device: torch.device | None = None,
    ) -> None:
        self.dim = dim
        self.positions_dim = positions_dim  # of a slot's state (`data.select(dim, slot)`)
        self.data = torch.zeros(shape, device=device)
        self._owners: dict[int, _Slot] = {}  # the slots taken, by index
        self._cursor = 0  # the next slot handed out
        self._waste = 0  # positions attended over holes since the last compaction
        self.compactions = 0
        self._lock = threading.Lock()

    @property
    def slot_bytes(self) -> int:
        return self.data.element_size() * self.data.numel() // self.data.shape[self.dim]

    @property
    def capacity(self) -> int:
        return int(self.data.shape[self.dim])

    @property
    def taken(self) -> int:
        return len(self._owners)

    def take(self, owner: object) -> _Slot:
        with self._lock:
            if self._cursor >= self.capacity:
                if 2 * len(self._owners) > self.capacity:  # grow: twice the slots, states kept
                    with torch.inference_mode(False):  # usable in and out of inference mode
                        grown = torch.cat([self.data, torch.zeros_like(self.data)], self.dim)
                    self.data = grown
                else:
                    self._compact()
            slot = _Slot(self._cursor)
            self._cursor += 1
            self._owners[slot.index] = slot
        weakref.finalize(owner, self._give, slot)
        return slot

    def _give(self, slot: _Slot) -> None:
        with self._lock:
            if slot.index >= 0:
                del self._owners[slot.index]
                slot.index = -1
                if not self._owners:  # nobody left: start again at slot 0, nothing to move
                    self._cursor = self._waste = 0

    def release(self, slot: _Slot) -> None:
        """The request is done with its state: its slot is free (idempotent, as is its
        finalizer)."""
        self._give(slot)

    def wasted(self, positions: int, copy_positions: int) -> None:
        """A step attended over `positions` (row, position) pairs of holes; compact once the
        holes have cost more than moving `copy_positions` positions (the requests' state)
        twice over."""
        self._waste += positions
        if self._waste > 2 * copy_positions:
            with self._lock:
                self._compact()

    def _compact(self) -> None:
        """Move every slot taken down to 0, 1, ... in its order (the lock held)."""
        owners: dict[int, _Slot] = {}
        for target, (index, slot) in enumerate(sorted(self._owners.items())):
            if index != target:
                src = self.data.select(self.dim, index).narrow(self.positions_dim, 0, slot.used)
                dst = self.data.select(self.dim, target).narrow(self.positions_dim, 0, slot.used)
                dst.copy_(src)
                slot.index = target
            owners[target] = slot
        self._owners = owners
        self._cursor = len(owners)
        self._waste = 0
        self.compactions += 1


MERGE_SPAN = 16
"""`_attention_plan` merges at most this many neighbouring runs into one group."""


def _ints(values: list[int]) -> torch.Tensor:
    """An int64 tensor of a short list (through numpy: 8x faster than ``torch.tensor`` on a
    list, ~2 us against ~16 us at 64 values, and a step makes five)."""
    return torch.from_numpy(np.array(values, dtype=np.int64))


@dataclass(frozen=True)
class _Attention:
    """How a step's rows (in slot order) attend: `groups` of neighbouring slots, each
    ``(first slot, last slot + 1, offset, longest context, masked)``, attend together over
    their longest context. Their slots laid end to end make `size` rows (the step's rows and
    the holes between them); `at`: where each of the step's rows sits among them (None: no
    holes); `mask` [size, 1, 1, longest of all]: the positions each attends (a group with
    neither holes nor padding needs none); `holes`: positions attended over holes."""

    groups: list[tuple[int, int, int, int, bool]]
    size: int
    at: torch.Tensor | None
    mask: torch.Tensor | None
    holes: int


def _attention_plan(slots: list[int], contexts: list[int]) -> _Attention:
    """Split a step's rows (sorted by slot) into groups of neighbouring slots so that few
    positions are attended (a group: its slots times its longest context, holes counted) in
    few calls: runs of rows whose contexts share a power of two (at most 2x padding), cut
    where the holes between two rows would cost more than a call (`SPLIT_MIN_POSITIONS`);
    then the runs are grouped at the least cost (positions attended plus
    `SPLIT_MIN_POSITIONS` per call), by dynamic programming over the runs. In Python (a step at
    batch 64 has ~70 slots and a handful of runs; numpy calls cost more than that here).
    `_SlotPool` says why this pays."""
    runs: list[list[int]] = []  # [first slot, last slot + 1, longest, bucket, shortest]
    for slot, c in zip(slots, contexts, strict=True):
        if runs:
            run = runs[-1]
            if c.bit_length() == run[3] and (slot - run[1]) * max(run[2], c) <= SPLIT_MIN_POSITIONS:
                run[1] = slot + 1
                run[2] = max(run[2], c)
                run[4] = min(run[4], c)
                continue
        runs.append([slot, slot + 1, c, c.bit_length(), c])
    # the cheapest split of the runs into groups of neighbouring runs (a group costs its slots
    # times its longest context, plus a call), by dynamic programming over the last
    # `MERGE_SPAN` runs (a step has a few runs: one per power of two of its contexts)
    best, first = [0] * (len(runs) + 1), [0] * (len(runs) + 1)
    for j in range(1, len(runs) + 1):
        hi, longest, best[j] = runs[j - 1][1], 0, -1
        for i in range(j - 1, max(-1, j - 1 - MERGE_SPAN), -1):
            longest = max(longest, runs[i][2])
            cost = best[i] + (hi - runs[i][0]) * longest + SPLIT_MIN_POSITIONS
            if best[j] < 0 or cost < best[j]:
                best[j], first[j] = cost, i
    merged: list[list[int]] = []
    j = len(runs)
    while j:
        i = first[j]
        part = runs[i:j]
        longest = max(r[2] for r in part)
        merged.append([part[0][0], part[-1][1], longest, 0, min(r[4] for r in part)])
        j = i
    merged.reverse()
    b = len(slots)
    size = sum(g[1] - g[0] for g in merged)
    if size == b:  # no holes: the step's rows are the groups' rows, in order
        groups, offset = [], 0
        for lo, hi, longest, _, shortest in merged:
            groups.append((lo, hi, offset, longest, shortest != longest))
            offset += hi - lo
        if not any(g[4] for g in groups):
            return _Attention(groups, size, None, None, 0)
        at, wide, holes = None, contexts, 0
    else:
        where: list[int] = []
        wide = [1] * size  # a hole attends a position it does not own (its answer is dropped)
        rows = [0] * len(merged)
        k, offset = 0, 0
        lo, hi = merged[0][0], merged[0][1]
        for slot, c in zip(slots, contexts, strict=True):
            while slot >= hi:
                offset += hi - lo
                k += 1
                lo, hi = merged[k][0], merged[k][1]
            where.append(offset + slot - lo)
            wide[offset + slot - lo] = c
            rows[k] += 1
        at = _ints(where)
        groups, offset, holes = [], 0, 0
        for (lo, hi, longest, _, shortest), count in zip(merged, rows, strict=True):
            groups.append((lo, hi, offset, longest, shortest != longest or count < hi - lo))
            offset += hi - lo
            holes += (hi - lo - count) * longest
    longest_all = max(g[3] for g in groups)
    mask = (torch.arange(longest_all) < _ints(wide).unsqueeze(1)).view(size, 1, 1, longest_all)
    return _Attention(groups, size, at, mask, holes)


@dataclass
class _DecoderState:
    prompt: list[int]
    generate: int
    position: int = 0
    next_token: int = 0
    generated: list[int] | None = None
    slot: _Slot | None = None


class DecoderStaged(_TorchStaged):
    """The decoder as one cell: a step feeds one token of every running request, its KV cache
    (a slot of the model's `_SlotPool`) grows by one position; a request's steps are prompt +
    generated - 1."""

    stages = 1
    ragged = True

    def __init__(self, seed: int = 0) -> None:
        module = _seeded(seed, TinyDecoder)
        assert isinstance(module, TinyDecoder)
        self.module = module
        self.input_shape = (-1,)
        self.datatype = "INT64"
        self._moved()

    def _moved(self) -> None:
        self.module.to(self.device)
        # keys and values head-major: [layer, k/v, slot, head, position, head width]
        self.pool = _SlotPool((LAYERS, 2, 8, HEADS, CONTEXT, WIDTH // HEADS), 2, 3, self.device)
        self._heads = torch.arange(HEADS, device=self.device)

    @staticmethod
    def _split(sample: npt.NDArray[np.generic]) -> tuple[list[int], int]:
        tokens = [int(t) for t in np.asarray(sample).reshape(-1)]
        generate = 0
        while tokens and tokens[-1] == 0:
            tokens.pop()
            generate += 1
        if not tokens or generate < 1 or any(t <= 0 or t >= VOCAB for t in tokens):
            raise ValueError(
                f"a decoder-tiny request is a prompt of tokens in 1..{VOCAB - 1} followed by "
                "one 0 per token to generate (at least one)"
            )
        if len(tokens) + generate > CONTEXT:
            raise ValueError(f"prompt + tokens to generate exceed the context of {CONTEXT}")
        return tokens, generate

    def steps(self, sample: npt.NDArray[np.generic]) -> int:
        prompt, generate = self._split(sample)
        return len(prompt) + generate - 1

    def state_bytes(self, sample: npt.NDArray[np.generic]) -> int:
        self._split(sample)
        return self.pool.slot_bytes  # a slot holds the whole context, whatever the request uses

    def begin(self, sample: npt.NDArray[np.generic]) -> Any:
        prompt, generate = self._split(sample)
        return _DecoderState(prompt, generate, next_token=prompt[0], generated=[])

    def run(self, stage: int, states: Sequence[Any]) -> list[Any]:
        m, pool = self.module, self.pool
        for s in states:
            if s.slot is None:
                s.slot = pool.take(s)
        order = sorted(states, key=lambda s: s.slot.index)  # rows in slot order
        b = len(order)
        slots = [s.slot.index for s in order]
        where = [s.position for s in order]
        plan = _attention_plan(slots, [p + 1 for p in where])
        dev = self.device  # the step's indices go to it in one copy (and the plan's in two)
        indices = _ints([s.next_token for s in order] + where + slots).to(dev)
        tokens, positions, slot_index = indices[:b], indices[b : 2 * b], indices[2 * b :]
        at = None if plan.at is None else plan.at.to(dev)
        step_mask = None if plan.mask is None else plan.mask.to(dev)
        x = m.tokens(tokens) + m.positions(positions)
        hd = WIDTH // HEADS
        # (slot, head, position) of each row's new key and value in a layer's cache
        flat = ((slot_index * HEADS).unsqueeze(1) + self._heads) * CONTEXT + positions.unsqueeze(1)
        for layer, block in enumerate(m.blocks):
            assert isinstance(block, _Block)
            qkv = block.qkv(block.ln1(x))
            q = qkv[:, :WIDTH]
            cache = pool.data[layer]  # [2, slots, HEADS, CONTEXT, hd]
            kv = qkv[:, WIDTH:].reshape(b, 2, HEADS * hd).transpose(0, 1)  # [2, b, HEADS * hd]
            cache.view(2, -1, hd).index_copy_(1, flat.view(-1), kv.reshape(2, b * HEADS, hd))
            if at is not None:  # holes among the groups' slots: queries at their slots
                q = q.new_zeros(plan.size, WIDTH).index_copy_(0, at, q)
            qh = q.reshape(-1, HEADS, 1, hd)  # [rows, heads, 1, hd]
            keys, values = cache[0], cache[1]  # [slots, heads, CONTEXT, hd], no copy
            parts = []
            for lo, hi, offset, longest, masked in plan.groups:
                rows = slice(offset, offset + hi - lo)
                mask = step_mask[rows, :, :, :longest] if masked and step_mask is not None else None
                parts.append(
                    F.scaled_dot_product_attention(
                        qh[rows],
                        keys[lo:hi, :, :longest],  # views: nothing copied
                        values[lo:hi, :, :longest],
                        attn_mask=mask,
                    )
                )
            out = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(-1, WIDTH)
            if at is not None:
                out = out.index_select(0, at)
            x = x + block.proj(out)
            x = x + block.mlp(block.ln2(x))
        chosen = m.head(m.ln(x)).argmax(dim=1)
        for s, token in zip(order, chosen.tolist(), strict=True):
            s.position += 1
            s.slot.used = s.position
            if s.position < len(s.prompt):
                s.next_token = s.prompt[s.position]
            else:
                s.next_token = int(token)
                s.generated.append(int(token))
            if s.position >= len(s.prompt) + s.generate - 1:
                pool.release(s.slot)  # its last step: the keys and values are not read again
        if plan.holes:  # after the step: a compaction moves slots, the next step plans afresh
            pool.wasted(plan.holes, sum(where) + b)
        return list(states)

    def finish(self, state: Any) -> npt.NDArray[np.generic]:
        return np.asarray(state.generated, dtype=np.float32)

    def alone(self, sample: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        prompt, generate = self._split(sample)
        tokens = list(prompt)
        for _ in range(generate):
            logits = self.module(torch.tensor(tokens, device=self.device))
            tokens.append(int(logits[-1].argmax()))
        return np.asarray(tokens[len(prompt) :], dtype=np.float32)

    def example(self, steps: int, seed: int = 0) -> npt.NDArray[np.generic]:
        """A prompt of about half the steps, then the rest to generate."""
        rng = np.random.default_rng(seed)
        prompt = max(1, (steps + 1) // 2)
        generate = max(1, steps + 1 - prompt)
        return np.concatenate([rng.integers(1, VOCAB, prompt), np.zeros(generate, np.int64)])


# ------------------------------------------------------------------------------ CNN


def build_cnn() -> nn.Sequential:
    """A deep CNN as 10 blocks (stem, 8 residual-free conv blocks, head)."""
    c = CNN_CHANNELS

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
        )

    blocks: list[nn.Module] = [block(3, c, 1)]
    for i in range(CNN_BLOCKS):
        stride = 2 if i in (2, 5) else 1
        cin = c * (2 if i > 2 else 1) * (2 if i > 5 else 1)
        cout = c * (2 if i >= 2 else 1) * (2 if i >= 5 else 1)
        blocks.append(block(cin, cout, stride))
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, 10)))
    return nn.Sequential(*blocks)


class SequentialStaged(_TorchStaged):
    """Any ``nn.Sequential`` (or a scripted one) as stages: its children, in order.

    A request's state between stages is its activation ``[1, ...]``; a stage runs the states
    of the requests it batches stacked along the batch dimension, then splits them again."""

    ragged = False

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], datatype: str) -> None:
        self.module = module
        self.children = list(module.children())
        if not self.children:
            raise ValueError("a staged model needs a module with child modules (its stages)")
        self.stages = len(self.children)
        self.input_shape = input_shape
        self.datatype = datatype

    def steps(self, sample: npt.NDArray[np.generic]) -> int:
        return self.stages

    def state_bytes(self, sample: npt.NDArray[np.generic]) -> int:
        return int(sample.nbytes)

    def begin(self, sample: npt.NDArray[np.generic]) -> Any:
        return torch.from_numpy(np.array(sample, dtype=np.float32)).unsqueeze(0)

    def _moved(self) -> None:
        self.module.to(self.device)  # the children are the module's: moved with it

    def run(self, stage: int, states: Sequence[Any]) -> list[Any]:
        # a first stage's states are on the host (`begin`): one copy of the batch to the device
        out: torch.Tensor = self.children[stage](torch.cat(list(states)).to(self.device))
        return list(torch.split(out, 1))

    def finish(self, state: Any) -> npt.NDArray[np.generic]:
        out: npt.NDArray[np.generic] = state[0].cpu().numpy()
        return out

    def alone(self, sample: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        x = torch.from_numpy(np.array(sample, dtype=np.float32)).unsqueeze(0).to(self.device)
        out: torch.Tensor = self.module(x)[0]
        return out.cpu().numpy()

    def example(self, steps: int, seed: int = 0) -> npt.NDArray[np.generic]:
        rng = np.random.default_rng(seed)
        return rng.standard_normal(self.input_shape).astype(np.float32)


def cnn_staged(seed: int = 0) -> SequentialStaged:
    module = _seeded(seed, build_cnn)
    return SequentialStaged(module, (3, 32, 32), "FP32")


STAGED_BUILTINS: dict[str, Callable[[], StagedModel]] = {
    "gru-seq": GruStaged,
    "decoder-tiny": DecoderStaged,
    "cnn-deep": cnn_staged,
}
"""Built-in staged models by name (``builtin:NAME``)."""


def staged_model(module: nn.Module, input_shape: tuple[int, ...], datatype: str) -> StagedModel:
    """A loaded model (``nn.Sequential``, scripted or exported module) as stages: its top-level
    children."""
    return SequentialStaged(module, input_shape, datatype)
