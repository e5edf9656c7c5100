"""Pre-norm ViT block (timm `Block` layout and parameter names), attention through
F.scaled_dot_product_attention with a boolean mask (True = may attend), or, for turn-causal inference,
BlockCausal (query block by query block: flash SDPA in float32, bf16 batched matmuls in bfloat16)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BlockCausal:
    """Block-causal attention over equal blocks of `block` tokens (a turn-causal window in inference):
    query i may attend key j iff j // block <= i // block. Evaluated block by block (exact, ~half the work of
    a dense boolean mask); `dense()` gives the equivalent boolean mask.

    impl: how the blocks are evaluated; None picks per dtype (AUTO_IMPL, the fastest measured on a CPU):
      "sdpa": one F.scaled_dot_product_attention call per query block (CPU flash kernel; fastest in float32)
      "math": (q * scale) @ k^T -> softmax -> @ v per query block with batched matmuls, which use the CPU's
              bf16 GEMM (~1.7x faster than the flash kernel in bf16); the scores are rounded to the
              compute dtype before the softmax, which adds no error beyond that of bf16 linears"""

    IMPLS = ("sdpa", "math")
    AUTO_IMPL = {torch.float32: "sdpa", torch.bfloat16: "math"}

    def __init__(self, block: int, impl: str | None = None):
        if impl is not None and impl not in self.IMPLS:
            raise ValueError(f"BlockCausal: impl {impl!r}; expected one of {self.IMPLS} or None")
        self.block = block
        self.impl = impl

    def dense(self, n: int, device=None) -> torch.Tensor:
        ids = torch.arange(n, device=device) // self.block
        return ids.unsqueeze(0) <= ids.unsqueeze(1)  # (n, n) bool

    def rows(self, query_index: torch.Tensor, n: int) -> torch.Tensor:
        """The rows query_index (Nq,) of dense(n), without building the (n, n) mask -> (Nq, n) bool."""
        ids = torch.arange(n, device=query_index.device) // self.block
        return ids.unsqueeze(0) <= (query_index // self.block).unsqueeze(1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, H, N, hd), N a multiple of block -> (B, H, N, hd): queries of block j attend to keys of
        blocks 0..j (no masked work)."""
        B, H, N, hd = q.shape
        s = self.block
        if (self.impl or self.AUTO_IMPL.get(q.dtype, "sdpa")) == "sdpa":
            return torch.cat(
                [
                    F.scaled_dot_product_attention(q[:, :, j : j + s], k[:, :, : j + s], v[:, :, : j + s])
                    for j in range(0, N, s)
                ],
                dim=2,
            )  # (B, H, N, hd)
        q = (q * hd**-0.5).reshape(B * H, N, hd)
        kt = k.transpose(-1, -2).reshape(B * H, hd, N).contiguous()  # (BH, hd, N)
        v = v.reshape(B * H, N, hd).contiguous()
        out = []
        for j in range(0, N, s):
            a = torch.bmm(q[:, j : j + s], kt[..., : j + s])  # (BH, s, j + s) scores
            out.append(torch.bmm(a.softmax(-1), v[:, : j + s]))  # (BH, s, hd)
        return torch.cat(out, dim=1).reshape(B, H, N, hd)


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
        H, hd = self.num_heads, self.head_dim
        if query_index is None:
            qkv = self.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        else:  # queries only for the rows asked for: the q third of the fused qkv weight on those rows
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, query_index], w[:C], b[:C]).reshape(B, -1, H, hd).transpose(1, 2)  # (B, H, Nq, hd)
            k, v = F.linear(x, w[C:], b[C:]).reshape(B, N, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        if isinstance(attn_mask, BlockCausal) and query_index is None:
            x = attn_mask.attend(q, k, v)  # (B, H, N, hd), exact block-causal attention
        else:
            if isinstance(attn_mask, BlockCausal):  # query rows given: build their boolean mask
                attn_mask = attn_mask.rows(query_index, N)
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
    """x = x + attn(norm1(x)); x = x + mlp(norm2(x)). Dropout: attention probs and projections.

    Mixed precision without autocast: when the Linear weights are in a lower precision than x (see
    `cast_linears`), the norm outputs are cast to the weights' dtype, and the residual stream x keeps its
    own dtype (x + h promotes back), so only the matmuls, attention and GELU run in the low precision."""

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
        cd = self.attn.qkv.weight.dtype  # compute dtype of the matmuls
        h = self.attn(self.norm1(x).to(cd), attn_mask, query_index)
        x = (x if query_index is None else x[:, query_index]) + h
        return x + self.mlp(self.norm2(x).to(cd))


def cast_linears(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the weights and biases of every nn.Linear inside `module` to `dtype`, in place (LayerNorms,
    embeddings and everything else keep their dtype). Used once for bf16 inference: no per-call casts."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.to(dtype)
    return module
