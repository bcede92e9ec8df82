"""SNAIL's sequence network (Mishra et al. 2018): dilated causal temporal convolutions and causal
soft attention, densely connected (each block concatenates its output to its input).

Every block maps a pair (context [B, S, C], queries [B, Q, C]) -> ([B, S, C'], [B, Q, C']): the
context is one causal sequence of S steps; each query is an independent step S appended to it
(it sees the whole context and itself, never another query). This equals running the Q
sequences context + query_j separately, at the cost of one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pair = tuple[Tensor, Tensor]


class DenseBlock(nn.Module):
    """Causal conv (kernel 2, dilation d) with a gated activation tanh(f) * sigmoid(g); concatenated
    to the input: out_t = [x_t; tanh(W_f [x_{t-d}; x_t]) * sigmoid(W_g [x_{t-d}; x_t])] (x_{<0} = 0)."""

    def __init__(self, channels: int, dilation: int, filters: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Linear(2 * channels, 2 * filters)  # both taps of both the f and g convolutions

    def gated(self, past: Tensor, now: Tensor) -> Tensor:
        f, g = self.conv(torch.cat([past, now], -1)).chunk(2, -1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, pair: Pair) -> Pair:
        ctx, qry = pair
        S, d = ctx.shape[1], self.dilation
        past_ctx = F.pad(ctx, (0, 0, d, 0))[:, :S]
        past_qry = (ctx[:, S - d : S - d + 1] if S >= d else torch.zeros_like(qry[:, :1])).expand_as(qry)
        return torch.cat([ctx, self.gated(past_ctx, ctx)], -1), torch.cat([qry, self.gated(past_qry, qry)], -1)


class TCBlock(nn.Sequential):
    """Dense blocks with dilations 2, 4, ..., 2^layers (the paper's TC(T, D) has layers = ⌈log2 T⌉)."""

    def __init__(self, channels: int, layers: int, filters: int):
        super().__init__(*(DenseBlock(channels + i * filters, 2 ** (i + 1), filters) for i in range(layers)))
        self.out_channels = channels + layers * filters


class AttentionBlock(nn.Module):
    """Causal single-head soft attention: read_t = softmax_{j<=t}(q_t·k_j / sqrt(K)) v_j, concatenated
    to the input. key_size K, value_size V."""

    def __init__(self, channels: int, key_size: int, value_size: int):
        super().__init__()
        self.key_size = key_size
        self.qkv = nn.Linear(channels, 2 * key_size + value_size)
        self.out_channels = channels + value_size

    def forward(self, pair: Pair) -> Pair:
        ctx, qry = pair
        K, S = self.key_size, ctx.shape[1]
        cq, ck, cv = self.qkv(ctx).split([K, K, self.qkv.out_features - 2 * K], -1)
        qq, qk, qv = self.qkv(qry).split([K, K, self.qkv.out_features - 2 * K], -1)
        scale = 1.0 / math.sqrt(K)
        causal = torch.ones(S, S, dtype=torch.bool, device=ctx.device).tril()
        logits = (cq @ ck.transpose(1, 2) * scale).masked_fill(~causal, float("-inf"))
        read_ctx = logits.softmax(-1) @ cv
        # a query attends over the whole context and itself
        p = torch.cat([qq @ ck.transpose(1, 2), (qq * qk).sum(-1, keepdim=True)], -1).mul(scale).softmax(-1)
        read_qry = p[..., :S] @ cv + p[..., S:] * qv
        return torch.cat([ctx, read_ctx], -1), torch.cat([qry, read_qry], -1)


class SNAILNet(nn.Module):
    """attention(k_0, v_0), TC, attention(k_1, v_1), TC, ..., attention(k_L, v_L), then a 1x1 conv to
    ``n_outputs`` — the paper's Omniglot network is keys (64, 256, 512), values (32, 128, 256),
    filters 128. (context [B, S, C], queries [B, Q, C]) -> ([B, S, n_outputs], [B, Q, n_outputs])."""

    def __init__(self, channels: int, n_outputs: int, keys: list[int], values: list[int], tc_layers: int, filters: int):
        super().__init__()
        blocks: list[nn.Module] = []
        for i, (k, v) in enumerate(zip(keys, values)):
            if i:
                blocks.append(TCBlock(channels, tc_layers, filters))
                channels = blocks[-1].out_channels
            blocks.append(AttentionBlock(channels, k, v))
            channels = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, n_outputs)

    def forward(self, ctx: Tensor, qry: Tensor) -> Pair:
        ctx, qry = self.blocks((ctx, qry))
        return self.head(ctx), self.head(qry)
