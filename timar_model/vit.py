"""Pre-norm ViT block (timm `Block` layout and parameter names), attention through
F.scaled_dot_product_attention with a boolean mask (True = may attend)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BlockCausal:
    """Block-causal attention over equal blocks of `block` tokens (a turn-causal window in inference):
    query i may attend key j iff j // block <= i // block. Evaluated block by block (exact, ~half the work of
    a dense boolean mask); `dense()` gives the equivalent boolean mask."""

    def __init__(self, block: int):
        self.block = block

    def dense(self, n: int, device=None) -> torch.Tensor:
        ids = torch.arange(n, device=device) // self.block
        return ids.unsqueeze(0) <= ids.unsqueeze(1)  # (n, n) bool


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, query_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: (B, N, C); attn_mask: bool, broadcastable to (B, H, Nq, N), or BlockCausal (no dropout);
        # query_index: (Nq,) rows to output
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        if query_index is not None:
            q = q[:, :, query_index]  # (B, H, Nq, hd)
        if isinstance(attn_mask, BlockCausal) and query_index is None:
            # exact block-causal attention: queries of block j attend to keys of blocks 0..j (no masked work)
            s = attn_mask.block
            x = torch.cat(
                [
                    F.scaled_dot_product_attention(q[:, :, j : j + s], k[:, :, : j + s], v[:, :, : j + s])
                    for j in range(0, N, s)
                ],
                dim=2,
            )  # (B, H, N, hd)
        else:
            if isinstance(attn_mask, BlockCausal):  # query rows given: build their boolean mask
                attn_mask = attn_mask.dense(N, x.device)[query_index]
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
            )  # (B, H, Nq, hd)
        x = x.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """x = x + attn(norm1(x)); x = x + mlp(norm2(x)). Dropout: attention probs and projections."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, query_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: (B, N, C) -> (B, N, C), or (B, Nq, C) for the rows in query_index only (keys/values use all N)
        h = self.attn(self.norm1(x), attn_mask, query_index)
        x = (x if query_index is None else x[:, query_index]) + h
        return x + self.mlp(self.norm2(x))
