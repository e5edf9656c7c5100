"""TIMAR: turn-level interleaved masked autoregression (parameter names of the public release).

One turn = 4F + 10 tokens (F = frames_per_turn):
  TURN_START, USER_SPEECH_START, user speech x F, USER_SPEECH_END, USER_MOTION_START, user motion x F,
  USER_MOTION_END, AGENT_SPEECH_START, agent speech x F, AGENT_SPEECH_END, AGENT_MOTION_START,
  agent motion x F, AGENT_MOTION_END, TURN_END
(special tokens are rows 0..9 of `sep_tok_emb` in that order). Tokens -> z_proj -> masked agent-motion
tokens replaced by mask_token -> + encoder_pos_embed_learned -> z_proj_ln -> blocks with turn-causal
attention -> encoder_norm -> + diffusion_pos_embed_learned = z, which conditions a per-token diffusion head.
The speech encoder (`speech_encoder.*`) is not part of the public state dict.
"""

from __future__ import annotations

import numpy as np
import scipy.stats as stats
import torch
import torch.nn as nn

from timar_model.model.config import NUM_SPECIAL_TOKENS, TimarConfig
from timar_model.model.diffloss import DiffLoss, MLPHead
from timar_model.model.speech import build_speech_encoder
from timar_model.model.vit import Block, BlockCausal
from timar_model.motion import HEAD_ROT

# token types inside a turn
SPECIAL, USER_SPEECH, USER_MOTION, AGENT_SPEECH, AGENT_MOTION = range(5)
USER_TYPES = (USER_SPEECH, USER_MOTION)
PUBLIC_EXCLUDED_PREFIXES = ("speech_encoder.",)


def _turn_kinds(frames: int) -> list[int]:
    seg = [SPECIAL, SPECIAL]
    for kind in (USER_SPEECH, USER_MOTION, AGENT_SPEECH, AGENT_MOTION):
        seg += [kind] * frames + [SPECIAL, SPECIAL]  # ..., <KIND_END>, <NEXT_START or TURN_END>
    assert len(seg) == 4 * frames + NUM_SPECIAL_TOKENS
    return seg


def turn_token_types(frames: int) -> torch.Tensor:
    """(4F + 10,) token type of every position of one turn."""
    return torch.tensor(_turn_kinds(frames), dtype=torch.long)


def turn_source_order(frames: int) -> torch.Tensor:
    """(4F + 10,) for each position of a turn, its row in the concatenation [special tokens (10); user speech (F);
    user motion (F); agent speech (F); agent motion (F)]: one gather builds a turn (TIMAR.interleave)."""
    kinds = (SPECIAL, USER_SPEECH, USER_MOTION, AGENT_SPEECH, AGENT_MOTION)
    start = dict(zip(kinds, (0, *(NUM_SPECIAL_TOKENS + i * frames for i in range(4)))))
    seen = dict.fromkeys(kinds, 0)
    order = []
    for kind in _turn_kinds(frames):
        order.append(start[kind] + seen[kind])
        seen[kind] += 1
    return torch.tensor(order, dtype=torch.long)


def turn_special_positions(frames: int) -> torch.Tensor:
    """(10,) positions of special tokens 0..9 inside a turn."""
    return (turn_token_types(frames) == SPECIAL).nonzero().squeeze(1)


def _sincos(positions: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """(N,) positions -> (N, dim) [sin | cos] codes with geometric frequencies down to 1 / max_period."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float64) * (np.log(max_period) / max(half - 1, 1)))
    angles = positions.double()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def frame_sincos_pos_embed(context_turns: int, frames: int, width: int, absolute_time: bool = False) -> torch.Tensor:
    """(context_turns * (4F + 10), width) structured init of the position table: channels [0, W/2) code the
    frame index inside the turn (shared by the four streams; special tokens sit at the frame they border),
    [W/2, 3W/4) the turn index, [3W/4, W) the token's kind. The START (END) tokens of a turn share one code;
    their learned rows of sep_tok_emb tell them apart.
    absolute_time ("time_sincos"): channels [0, W/2) code the frame's time in the window (turn * F + frame;
    special tokens half a frame before / after their turn) instead of the frame inside the turn, so that the
    four streams of one moment share a code and the same frame of two turns does not."""
    types = turn_token_types(frames)  # (110,)
    frame = torch.zeros(len(types))
    count = dict.fromkeys(range(5), 0)
    for i, kind in enumerate(types.tolist()):
        if kind == SPECIAL:  # START tokens sit before frame 0, END tokens after frame F-1
            nxt = types[i + 1].item() if i + 1 < len(types) else SPECIAL
            frame[i] = -1.0 if nxt != SPECIAL else float(frames)
        else:
            frame[i] = count[kind]
            count[kind] += 1
    w_frame, w_turn = width // 2, width // 4
    w_kind = width - w_frame - w_turn
    turns = torch.arange(context_turns).repeat_interleave(len(types))
    if absolute_time:
        inside = torch.where(frame < 0, -0.5, torch.where(frame >= frames, frames - 0.5, frame))
        time = _sincos(turns * frames + inside.repeat(context_turns), w_frame, 4.0 * frames * context_turns)
    else:
        time = _sincos(frame, w_frame, 4.0 * frames).repeat(context_turns, 1)
    out = torch.cat(
        [time, _sincos(types.float(), w_kind, 10.0).repeat(context_turns, 1),
         _sincos(turns.float(), w_turn, 4.0 * context_turns)], 1
    )  # (context_turns * 110, W): [time | kind | turn]
    return out[:, [*range(w_frame), *range(w_frame + w_kind, width), *range(w_frame, w_frame + w_kind)]]


def turn_causal_mask(turn_ids: torch.Tensor) -> torch.Tensor:
    """turn_ids (..., L) -> bool (..., L, L): query i may attend key j iff turn[j] <= turn[i]."""
    return turn_ids.unsqueeze(-2) <= turn_ids.unsqueeze(-1)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Bool mask -> float mask with 0 where allowed and -inf elsewhere (the public code's form)."""
    return torch.zeros(allowed.shape).masked_fill(~allowed.cpu(), float("-inf"))


class TIMAR(nn.Module):
    def __init__(self, config: TimarConfig):
        super().__init__()
        self.config = c = config
        F, D = c.frames_per_turn, c.token_dim
        self.frames_per_turn = F
        self.tokens_per_turn = c.tokens_per_turn
        self.seq_len = c.seq_len
        self.register_buffer("turn_types", turn_token_types(F), persistent=False)  # (110,)
        # index tensors, so that building turns and selecting agent positions index with integers: a boolean
        # mask index needs nonzero(), which waits for a GPU on every call
        self.register_buffer("turn_order", turn_source_order(F), persistent=False)  # (110,)
        agent_pos = [i for i, k in enumerate(_turn_kinds(F)) if k == AGENT_MOTION]
        self.register_buffer("agent_turn_pos", torch.tensor(agent_pos, dtype=torch.long), persistent=False)  # (F,)
        # motion normalisation from the config (identity when unset; not part of the state dict)
        has_norm = c.motion_std is not None
        mean = torch.tensor(c.motion_mean, dtype=torch.float32) if has_norm else torch.zeros(c.motion_dim)
        std = torch.tensor(c.motion_std, dtype=torch.float32) if has_norm else torch.ones(c.motion_dim)
        self.normalize_motion = has_norm
        self.register_buffer("motion_mean", mean, persistent=False)  # (56,)
        self.register_buffer("motion_std", std, persistent=False)  # (56,)

        # --- token embeddings ---
        self.motion_encoder = nn.Sequential(
            nn.Linear(c.motion_dim, D // 2), nn.ReLU(), nn.Linear(D // 2, D), nn.ReLU()
        )
        self.speech_encoder = build_speech_encoder(c)
        self.speech_projection = nn.Linear(c.speech_dim, D)
        self.sep_tok_emb = nn.Embedding(NUM_SPECIAL_TOKENS, D)
        self.fake_latent = nn.Parameter(torch.zeros(1, D))
        # rows: the partner's face (expression + jaw) not observed, its head rotation not observed
        self.partner_absent_emb = nn.Parameter(torch.zeros(2, D)) if c.partner_absent_embed else None
        # mask_ratio_min = 1 masks every agent-motion token, exactly what streaming with mask_history_agent sees
        self.mask_ratio_generator = (
            stats.truncnorm((c.mask_ratio_min - 1.0) / 0.25, 0, loc=1.0, scale=0.25)
            if c.mask_ratio_min < 1.0
            else None
        )

        # --- backbone ---
        W = c.width
        self.z_proj = nn.Linear(D, W)
        self.z_proj_ln = nn.LayerNorm(W, eps=1e-6)
        encdec = c.backbone == "encoder_decoder"
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width if encdec else W))
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, W))
        self.encoder_blocks = nn.ModuleList(
            [
                Block(W, c.num_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout, c.norm_eps)
                for _ in range(c.depth)
            ]
        )
        self.encoder_norm = nn.LayerNorm(W, eps=c.norm_eps)
        if encdec:  # MAE-style asymmetric ablation: encoder over visible tokens, decoder over all
            Wd = c.decoder_width
            self.decoder_embed = nn.Linear(W, Wd)
            self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, Wd))
            self.decoder_blocks = nn.ModuleList(
                [
                    Block(Wd, c.decoder_num_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout, c.norm_eps)
                    for _ in range(c.decoder_depth)
                ]
            )
            self.decoder_norm = nn.LayerNorm(Wd, eps=c.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, c.head_width))
        self.initialize_weights()

        # --- head ---
        if c.head == "diffusion":
            self.diffloss = DiffLoss(
                c.motion_dim,
                c.head_width,
                c.diffloss_depth,
                c.diffloss_width,
                c.num_sampling_steps,
                c.noise_schedule,
                clamp_variance=c.clamp_variance,
            )
        else:
            self.mlp_head = MLPHead(c.head_width, c.motion_dim)

    def initialize_weights(self) -> None:
        for p in (
            self.sep_tok_emb.weight,
            self.fake_latent,
            self.mask_token,
            self.encoder_pos_embed_learned,
            self.diffusion_pos_embed_learned,
            *([] if self.partner_absent_emb is None else [self.partner_absent_emb]),
        ):
            nn.init.normal_(p, std=0.02)
        if self.config.pos_embed_init != "random" and not self.encoder_pos_embed_learned.is_meta:
            c = self.config
            with torch.no_grad():
                self.encoder_pos_embed_learned[0] = frame_sincos_pos_embed(
                    c.context_turns, c.frames_per_turn, c.width, absolute_time=c.pos_embed_init == "time_sincos"
                )
        if self.config.backbone == "encoder_decoder":
            nn.init.normal_(self.decoder_pos_embed_learned, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("speech_encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ state dict
    def public_state_dict_keys(self) -> list[str]:
        return [k for k in self.state_dict() if not k.startswith(PUBLIC_EXCLUDED_PREFIXES)]

    def load_public_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a state dict under the public names (no speech encoder). Every public parameter must be
        present with the right shape and nothing else may be there."""
        expected = set(self.public_state_dict_keys())
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
        if missing or unexpected:
            raise KeyError(
                f"public TIMAR state dict mismatch: missing {missing[:10]}"
                f"{'...' if len(missing) > 10 else ''}"
                f", unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
            )
        own = self.state_dict()
        bad = [
            f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in sd.items()
            if v.shape != own[k].shape
        ]
        if bad:
            raise ValueError(f"public TIMAR state dict shape mismatch: {bad[:10]}")
        result = self.load_state_dict(sd, strict=False)
        assert not result.unexpected_keys
        assert all(k.startswith(PUBLIC_EXCLUDED_PREFIXES) for k in result.missing_keys)

    # ------------------------------------------------------------------ token embedding
    def encode_speech(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, n * samples_per_turn) normalised audio -> (B, n * F, token_dim); each turn encoded alone."""
        B, S = audio.shape
        spt = self.config.samples_per_turn
        if S % spt:
            raise ValueError(f"encode_speech: {S} samples is not a whole number of turns of {spt}")
        n = S // spt
        feats = self.speech_features(audio.reshape(B * n, spt))  # (B*n, F, speech_dim)
        return self.speech_projection(feats).reshape(B, n * self.frames_per_turn, -1)

    def speech_features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples_per_turn) -> (B, F, speech_dim): the speech encoder output before speech_projection."""
        return self.speech_encoder(audio)

    def motion_to_model(self, motion: torch.Tensor) -> torch.Tensor:
        """Raw FLAME motion (..., 56) -> the model's motion space ((x - mean) / std, or unchanged)."""
        if not self.normalize_motion:
            return motion
        return (motion - self.motion_mean.to(motion.dtype)) / self.motion_std.to(motion.dtype)

    def motion_from_model(self, motion: torch.Tensor) -> torch.Tensor:
        """Inverse of motion_to_model: the model's motion space (..., 56) -> raw FLAME motion."""
        if not self.normalize_motion:
            return motion
        return motion * self.motion_std.to(motion.dtype) + self.motion_mean.to(motion.dtype)

    def encode_motion(self, motion: torch.Tensor) -> torch.Tensor:
        """Raw motion (B, T, 56) -> (B, T, token_dim). With config.partner_absent_embed, a part of a frame
        (the face = expression + jaw, or the head rotation) with any NaN is unobserved: it enters as the
        training mean (0 in the model's space) and that part's row of partner_absent_emb is added."""
        x = self.motion_to_model(motion)
        if self.partner_absent_emb is None:
            return self.motion_encoder(x)
        nan = torch.isnan(x)
        face = nan[..., : HEAD_ROT.start].any(-1, keepdim=True)  # (B, T, 1)
        head = nan[..., HEAD_ROT].any(-1, keepdim=True)
        absent = torch.cat([face.expand(-1, -1, HEAD_ROT.start), head.expand(-1, -1, x.shape[-1] - HEAD_ROT.start)], -1)
        x = torch.where(absent, torch.zeros((), dtype=x.dtype, device=x.device), x)
        emb = self.partner_absent_emb.to(x.dtype)
        return self.motion_encoder(x) + face.to(x.dtype) * emb[0] + head.to(x.dtype) * emb[1]

    def interleave(
        self,
        user_speech: torch.Tensor,
        user_motion: torch.Tensor,
        agent_speech: torch.Tensor,
        agent_motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token streams (B, n*F, D) each -> interleaved sequence (B, n * (4F + 10), D).
        agent_motion None -> zeros (placeholders for positions that will be masked)."""
        B, T, D = user_speech.shape
        F = self.frames_per_turn
        n = T // F
        if agent_motion is None:
            agent_motion = user_speech.new_zeros(B, T, D)
        dt = user_speech.dtype
        special = self.sep_tok_emb.weight.to(dt).expand(B, n, NUM_SPECIAL_TOKENS, D)
        streams = (x.to(dt).reshape(B, n, F, D) for x in (user_speech, user_motion, agent_speech, agent_motion))
        src = torch.cat([special, *streams], dim=2)  # (B, n, 10 + 4F, D)
        return src[:, :, self.turn_order].reshape(B, n * self.tokens_per_turn, D)

    def window_types(self, num_tokens: int, device=None) -> torch.Tensor:
        """(T,) token types of a window of whole turns."""
        n = num_tokens // self.tokens_per_turn
        return self.turn_types.to(device or self.turn_types.device).repeat(n)

    def agent_positions(self, num_tokens: int, device=None) -> torch.Tensor:
        """(n * F,) ascending positions of the agent-motion tokens of a window of whole turns."""
        pos = self.agent_turn_pos.to(device or self.agent_turn_pos.device)
        turns = torch.arange(num_tokens // self.tokens_per_turn, device=pos.device)
        return (turns[:, None] * self.tokens_per_turn + pos[None]).reshape(-1)

    def window_turn_ids(self, num_tokens: int, device=None) -> torch.Tensor:
        """(T,) turn index of each token of a window (relative; only the order matters)."""
        return torch.arange(num_tokens, device=device) // self.tokens_per_turn

    def condition_dropout(
        self, tokens: torch.Tensor, prob: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace each user token (speech and motion) by fake_latent with probability `prob`.
        tokens (B, T, D) -> (tokens, dropped (B, T) bool)."""
        B, T, _ = tokens.shape
        types = self.window_types(T, tokens.device)
        is_user = (types == USER_TYPES[0]) | (types == USER_TYPES[1])
        r = torch.rand(B, T, device=tokens.device, generator=generator)
        dropped = (r < prob) & is_user
        return torch.where(dropped.unsqueeze(-1), self.fake_latent.to(tokens.dtype), tokens), dropped

    # ------------------------------------------------------------------ backbone
    def _attn_mask(self, turn_ids: torch.Tensor) -> torch.Tensor | None:
        if self.config.attention == "bidirectional":
            return None
        m = turn_causal_mask(turn_ids)  # (..., L, L)
        return m.unsqueeze(-3) if m.dim() == 3 else m  # (B, 1, L, L) or (L, L)

    def forward_backbone(
        self, tokens: torch.Tensor, mask: torch.Tensor, out_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z for a window. tokens (B, T, token_dim) (inputs of z_proj), mask (B, T) or (T,) bool: masked agent
        positions. Returns z (B, T, head_width), or (B, len(out_index), head_width) for the rows in out_index
        (the last block then computes only those queries; identical values)."""
        B, T, _ = tokens.shape
        if T > self.seq_len or T % self.tokens_per_turn:
            raise ValueError(
                f"forward_backbone: window of {T} tokens; need whole turns and at most {self.seq_len}"
            )
        mask = mask.expand(B, T) if mask.dim() == 1 else mask
        turn_ids = self.window_turn_ids(T, tokens.device)
        if self.config.backbone == "encoder_decoder":
            z = self._forward_encoder_decoder(tokens, mask, turn_ids)
            return z if out_index is None else z[:, out_index]
        x = self.z_proj(tokens)  # (B, T, W)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned[:, :T])
        if self.config.attention == "turn_causal" and not self.training:
            attn = BlockCausal(self.tokens_per_turn)  # same mask, evaluated turn block by turn block
        else:
            attn = self._attn_mask(turn_ids)  # (T, T) bool or None
        last = len(self.encoder_blocks) - 1
        for i, block in enumerate(self.encoder_blocks):
            if i == last and out_index is not None:
                rows = attn if attn is None or isinstance(attn, BlockCausal) else attn[out_index]
                x = block(x, rows, query_index=out_index)
            else:
                x = block(x, attn)
        x = self.encoder_norm(x)
        pos = self.diffusion_pos_embed_learned[:, :T]
        return x + (pos if out_index is None else pos[:, out_index])

    def _forward_encoder_decoder(
        self, tokens: torch.Tensor, mask: torch.Tensor, turn_ids: torch.Tensor
    ) -> torch.Tensor:
        B, T, _ = tokens.shape
        x = self.z_proj_ln(self.z_proj(tokens) + self.encoder_pos_embed_learned[:, :T])  # (B, T, W)
        keep = ~mask
        n_keep = int(keep[0].sum())
        if not bool((keep.sum(1) == n_keep).all()):
            raise ValueError("encoder_decoder backbone: every sample must keep the same number of tokens")
        x = x[keep].reshape(B, n_keep, -1)  # (B, N_keep, W)
        attn = self._attn_mask(turn_ids.expand(B, T)[keep].reshape(B, n_keep))
        for block in self.encoder_blocks:
            x = block(x, attn)
        x = self.decoder_embed(self.encoder_norm(x))  # (B, N_keep, Wd)
        out = self.mask_token.to(x.dtype).expand(B, T, -1).clone()
        out[keep] = x.reshape(-1, x.shape[-1])
        out = out + self.decoder_pos_embed_learned[:, :T]
        attn = self._attn_mask(turn_ids)
        for block in self.decoder_blocks:
            out = block(out, attn)
        return self.decoder_norm(out) + self.diffusion_pos_embed_learned[:, :T]

    # ------------------------------------------------------------------ training
    def sample_mask(
        self,
        num_tokens: int,
        batch: int,
        device=None,
        mask_rate: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T) bool: a random ceil(rate * n_agent) subset of the agent-motion positions of each sample;
        one rate per call from the truncated Gaussian (mean 1, std 0.25, in [mask_ratio_min, 1])."""
        if mask_rate is None:
            gen = self.mask_ratio_generator
            mask_rate = 1.0 if gen is None else float(gen.rvs(1)[0])
        agent_idx = self.agent_positions(num_tokens, device)  # (n_agent,)
        k = int(np.ceil(len(agent_idx) * mask_rate))
        order = torch.rand(batch, len(agent_idx), device=device, generator=generator).argsort(dim=1)
        chosen = agent_idx[order[:, :k]]  # (B, k)
        mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=device)
        return mask.scatter_(1, chosen, True)

    def training_loss(
        self,
        user_speech: torch.Tensor,
        user_motion: torch.Tensor,
        agent_speech: torch.Tensor,
        agent_motion: torch.Tensor,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """speech (B, n*samples_per_turn) normalised; motion (B, n*F, 56). Masked-diffusion loss (or MSE for
        the MLP head) averaged over masked agent-motion positions only."""
        B, T_m, C = agent_motion.shape
        F = self.frames_per_turn
        if T_m % F or user_motion.shape != agent_motion.shape or C != self.config.motion_dim:
            raise ValueError(
                f"training_loss: motion must be (B, n*{F}, {self.config.motion_dim}); got "
                f"user {tuple(user_motion.shape)}, agent {tuple(agent_motion.shape)}"
            )
        n = T_m // F
        spt = self.config.samples_per_turn
        if user_speech.shape != (B, n * spt) or agent_speech.shape != (B, n * spt):
            raise ValueError(
                f"training_loss: speech must be (B, {n * spt}); got {tuple(user_speech.shape)}, "
                f"{tuple(agent_speech.shape)}"
            )
        tokens = self.interleave(
            self.encode_speech(user_speech),
            self.encode_motion(user_motion),
            self.encode_speech(agent_speech),
            self.encode_motion(agent_motion),
        )
        T = tokens.shape[1]
        if self.training and self.config.cond_drop_prob > 0:
            tokens, _ = self.condition_dropout(tokens, self.config.cond_drop_prob, generator)
        if mask is None:
            mask = self.sample_mask(T, B, tokens.device, generator=generator)
        z = self.forward_backbone(tokens, mask)  # (B, T, Wz)
        agent = self.agent_positions(T, tokens.device)  # (n*F,) in frame order
        agent_motion = self.motion_to_model(agent_motion)  # targets in the model's motion space
        z_sel = z[:, agent]  # (B, n*F, Wz), same order as agent_motion frames
        m_sel = mask[:, agent]  # (B, n*F)
        if self.config.head == "mlp":
            return self.mlp_head.loss(
                z_sel.reshape(-1, z.shape[-1]), agent_motion.reshape(-1, C), m_sel.reshape(-1)
            )
        mul = self.config.diffusion_batch_mul
        target = agent_motion.reshape(B * n * F, C).repeat(mul, 1)
        z_rep = z_sel.reshape(B * n * F, -1).repeat(mul, 1)
        m_rep = m_sel.reshape(B * n * F).repeat(mul)
        return self.diffloss(target, z_rep, m_rep, generator=generator)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_positions(
        self,
        z: torch.Tensor,
        temperature: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        diffusion=None,
    ) -> torch.Tensor:
        """Raw motion (N, 56) for backbone outputs z (N, Wz) of selected positions.
        noise: explicit Gaussian draws (steps + 1, N, 56)."""
        if self.config.head == "mlp":
            return self.motion_from_model(self.mlp_head(z).float())
        temperature = self.config.temperature if temperature is None else temperature
        x = self.diffloss.sample(z, temperature, noise, generator, diffusion)
        return self.motion_from_model(x.float())
