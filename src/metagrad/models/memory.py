"""The external memory of MANN (Santoro et al. 2016): cosine-similarity reads and Least Recently
Used Access (LRUA) writes, batched over tasks. B = tasks, M = slots, D = slot width, H = heads.

One time step, given the controller's read keys k_t [B, H, D], add vectors a_t [B, H, D] and
gates σ(α_t) [B, H] (β = 1 is the paper's read; β > 1 sharpens it, like the NTM's key strength):

    M_{t-1}(argmin w_u(t-1)) ← 0                                  the least-used slot is erased
    w_w(t) = σ(α_t) · w_r(t-1) + (1 - σ(α_t)) · w_lu(t-1)          write weights      [B, H, M]
    M_t    = M_{t-1} + Σ_heads w_w(t)ᵀ a_t                          each head adds its a_t
    w_r(t) = softmax_slots(β · cos(k_t, M_t))                       read weights       [B, H, M]
    r_t    = w_r(t) M_t                                             read vectors       [B, H, D]
    w_u(t) = γ · w_u(t-1) + Σ_heads w_r(t) + Σ_heads w_w(t)         usage              [B, M]
    w_lu(t) = 1 at the H smallest entries of w_u(t), else 0         least-used weights [B, M]

That w_lu is the paper's: every head writes to all H least-used slots. With ``per_head`` (the
reimplementations' reading) head i writes only to the i-th least-used slot: w_lu [B, H, M],
one-hot rows, so the H heads fill H different slots.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class MemoryState(NamedTuple):
    memory: Tensor  # [B, M, D]
    usage: Tensor  # w_u [B, M]
    w_read: Tensor  # w_r [B, H, M]
    w_lu: Tensor  # [B, M], or [B, H, M] per head
    reads: Tensor  # r [B, H, D]

    @staticmethod
    def initial(batch: int, slots: int, width: int, heads: int, like: Tensor, per_head: bool = False) -> "MemoryState":
        """Empty memory, zero usage; the first writes go to slots 0..H-1 (head i to slot i, per head)."""
        z = like.new_zeros
        usage = z(batch, slots)
        return MemoryState(z(batch, slots, width), usage, z(batch, heads, slots), least_used(usage, heads, per_head), z(batch, heads, width))

    def repeat_interleave(self, n: int) -> "MemoryState":
        """Each task's state n times: [B, ...] -> [B*n, ...] (parallel continuations)."""
        return MemoryState(*(t.repeat_interleave(n, dim=0) for t in self))


def cosine_read_weights(keys: Tensor, memory: Tensor, sharpness: float = 1.0, eps: float = 1e-8) -> Tensor:
    """keys [B, H, D], memory [B, M, D] -> softmax over slots of β · cosine similarity [B, H, M]."""
    dots = keys @ memory.transpose(1, 2)
    norms = keys.square().sum(-1, keepdim=True).add(eps).sqrt() * memory.square().sum(-1).add(eps).sqrt().unsqueeze(1)
    return (sharpness * dots / norms).softmax(-1)


def least_used(usage: Tensor, n: int, per_head: bool = False) -> Tensor:
    """usage [B, M] -> w_lu [B, M]: 1 at the n smallest usages, 0 elsewhere; or, ``per_head``,
    [B, n, M] whose row i is 1 at the i-th smallest only. Ties (the empty slots all have one
    usage) go to the lowest slot numbers, so a task's choice never depends on the other tasks in
    its batch (topk breaks ties differently for different batch sizes)."""
    idx = usage.sort(dim=-1, stable=True).indices[..., :n]
    if per_head:
        return F.one_hot(idx, usage.shape[-1]).to(usage.dtype)
    return torch.zeros_like(usage).scatter_(-1, idx, 1.0)


def lrua_step(state: MemoryState, keys: Tensor, add: Tensor, gate: Tensor, decay: float, sharpness: float = 1.0) -> MemoryState:
    """Write then read (module docstring). keys, add [B, H, D]; gate σ(α) [B, H] in (0, 1); decay γ;
    read sharpness β. The state's w_lu shape ([B, M] or [B, H, M]) says whether heads share it."""
    slots = state.memory.shape[1]
    keep = 1.0 - F.one_hot(state.usage.argmin(-1), slots).to(state.memory.dtype)  # [B, M]
    g = gate.unsqueeze(-1)
    per_head = state.w_lu.dim() == 3
    w_write = g * state.w_read + (1.0 - g) * (state.w_lu if per_head else state.w_lu.unsqueeze(1))
    memory = state.memory * keep.unsqueeze(-1) + w_write.transpose(1, 2) @ add
    w_read = cosine_read_weights(keys, memory, sharpness)
    usage = decay * state.usage + w_read.sum(1) + w_write.sum(1)
    return MemoryState(memory, usage, w_read, least_used(usage, keys.shape[1], per_head), w_read @ memory)
