"""Condition encoder: caption states, lyric embeddings and reference audio -> one packed sequence.

The DiT cross-attends to a single sequence built from three sources:

    caption   Qwen3 last hidden states [B, Lt, Dt] --text_projector (no bias)--> [B, Lt, W]
    lyrics    Qwen3 token embeddings   [B, Ll, Dt] --lyric encoder stack-----> [B, Ll, W]
    timbre    reference latents    [N, Tr, 64] (packed over the batch) --timbre encoder-->
              one vector per reference [N, W] --unpack--> [B, R, W], R = most references per item

They are packed as official ACE-Step 1.5 does: first lyrics + timbre, then that + caption, each time
moving the valid tokens to the front (stable, so their order is kept) and the padding to the back.
The result is [B, Ll + R + Lt, W] with a mask that is 1 on a prefix of each row.

Official quirks kept on purpose:
- The lyric and timbre stacks run only `layers[:active_layer_limit]`; the official code slices by the
  DiT's layer count, which is larger than both stacks on the released models, so all layers run there.
- The timbre encoder gets no padding mask (references are fixed-length): full-attention layers see
  every frame, sliding layers only the window.
- Turbo/base: the learned `special_token` exists but is NOT prepended (the line is commented out in the
  official code); the timbre vector is the normed state of frame 0. XL variants prepend it, so the
  vector is the normed state of that CLS token.

`null_condition_emb` [1, 1, W] is stored here because it has the encoder width; the guidance sampler
broadcasts it over the packed sequence for the unconditional branch.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import check_tensor, check_values
from .config import ConditionConfig
from .layers import EncoderStack, Linear


def pack_sequences(h1: torch.Tensor, m1: torch.Tensor, h2: torch.Tensor,
                   m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate two masked sequences and move every valid token to the front of its row.

    h1 [B, L1, D], m1 [B, L1], h2 [B, L2, D], m2 [B, L2] (masks: nonzero = valid) ->
    (packed [B, L1 + L2, D], mask [B, L1 + L2] bool, True on a prefix of each row).
    The sort is stable, so valid tokens keep their order (h1's before h2's), and so do padded ones.
    """
    h = torch.cat([h1, h2], dim=1)  # [B, L, D]
    keep = torch.cat([m1 != 0, m2 != 0], dim=1)  # [B, L]
    # argsort of 1/0 descending = valid first; the padded rows still carry their (unused) values.
    order = keep.long().argsort(dim=1, descending=True, stable=True)  # [B, L]
    packed = torch.gather(h, 1, order.unsqueeze(-1).expand_as(h))  # [B, L, D]
    length = keep.sum(dim=1)  # [B]
    mask = torch.arange(h.shape[1], device=h.device)[None, :] < length[:, None]  # [B, L]
    return packed, mask


def unpack_references(embs: torch.Tensor, order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter packed per-reference vectors back to their batch items.

    embs [N, W], order [N] (batch index of each reference) -> (timbre [B, R, W], mask [B, R] bool) with
    R the largest number of references of any item. References of one item keep their packed order;
    unused slots are zero and masked out.
    """
    n, width = embs.shape
    one_hot = torch.nn.functional.one_hot(order, batch_size)  # [N, B]
    counts = one_hot.sum(dim=0)  # [B]
    # Slot of reference i inside its item = how many earlier references went to the same item.
    slot = (one_hot.cumsum(dim=0) - 1).gather(1, order[:, None]).squeeze(1)  # [N]
    max_refs = int(counts.max())
    timbre = embs.new_zeros(batch_size, max_refs, width)
    timbre[order, slot] = embs
    mask = torch.arange(max_refs, device=embs.device)[None, :] < counts[:, None]  # [B, R]
    return timbre, mask


class LyricEncoder(EncoderStack):
    """Qwen3 lyric token embeddings [B, Ll, Dt] -> [B, Ll, W], padded keys blocked."""

    def __init__(self, cfg: ConditionConfig):
        super().__init__(cfg.encoder, cfg.text_hidden_dim, cfg.num_lyric_layers)
        self.active_layer_limit = cfg.active_layer_limit

    def forward(self, lyric_embeds: torch.Tensor, lyric_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(lyric_embeds)  # [B, Ll, W]
        return self.run_layers(h, key_padding=lyric_mask, limit=self.active_layer_limit)


class TimbreEncoder(EncoderStack):
    """Packed reference latents [N, Tr, 64] -> one timbre vector per reference [N, W]."""

    def __init__(self, cfg: ConditionConfig):
        super().__init__(cfg.encoder, cfg.timbre_hidden_dim, cfg.num_timbre_layers)
        self.active_layer_limit = cfg.active_layer_limit
        self.prepend_cls = cfg.timbre_prepend_cls
        self.special_token = nn.Parameter(torch.randn(1, 1, cfg.encoder.hidden_size))

    def forward(self, refer_latents_packed: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(refer_latents_packed)  # [N, Tr, W]
        if self.prepend_cls:
            cls = self.special_token.expand(h.shape[0], 1, -1)  # [1, 1, W] -> [N, 1, W]
            h = torch.cat([cls, h], dim=1)  # [N, 1 + Tr, W]
        # No key padding: the official encoder is called without a mask.
        h = self.run_layers(h, limit=self.active_layer_limit)
        return h[:, 0]  # [N, W]: the CLS token on XL, the first frame otherwise


class ConditionEncoder(nn.Module):
    """Caption + lyrics + reference audio -> the packed sequence the DiT cross-attends to."""

    def __init__(self, cfg: ConditionConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.encoder.hidden_size
        self.text_projector = Linear(cfg.text_hidden_dim, width, bias=False)
        self.lyric_encoder = LyricEncoder(cfg)
        self.timbre_encoder = TimbreEncoder(cfg)
        self.null_condition_emb = nn.Parameter(torch.randn(1, 1, width))

    def encode_timbre(self, refer_latents_packed: torch.Tensor | None, refer_order: torch.Tensor,
                      batch_size: int, timbre_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """refer_latents_packed [N, Tr, 64], refer_order [N] -> (timbre [B, R, W], mask [B, R] bool).

        timbre_embeds [N, W]: the timbre encoder's output already computed (the silence reference is a constant
        of the model, so a pipeline encodes it once); refer_latents_packed must then be None."""
        if timbre_embeds is None:
            _check_references(refer_latents_packed, refer_order, batch_size, self.cfg.timbre_hidden_dim)
            timbre_embeds = self.timbre_encoder(refer_latents_packed)  # [N, W]
        else:
            if refer_latents_packed is not None:
                raise ValueError("pass refer_latents_packed or timbre_embeds (already encoded), not both")
            width = self.cfg.encoder.hidden_size
            check_tensor("timbre_embeds", timbre_embeds, (None, width), f"[N, {width}] with N >= 1")
            _check_order(timbre_embeds.shape[0], refer_order, batch_size)
        return unpack_references(timbre_embeds, refer_order.long(), batch_size)

    def forward(
        self,
        text_hidden_states: torch.Tensor,
        text_mask: torch.Tensor,
        lyric_embeds: torch.Tensor,
        lyric_mask: torch.Tensor,
        refer_latents_packed: torch.Tensor | None,
        refer_order: torch.Tensor,
        *,
        timbre_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (states [B, Ll + R + Lt, W], mask [B, Ll + R + Lt] bool, valid tokens first).

        text_hidden_states [B, Lt, Dt] and text_mask [B, Lt]: caption states and padding mask.
        lyric_embeds [B, Ll, Dt] and lyric_mask [B, Ll]: lyric token embeddings and padding mask.
        refer_latents_packed [N, Tr, 64] and refer_order [N]: reference latents of the whole batch;
        reference i belongs to item refer_order[i], and every item needs at least one (the official
        pipeline gives an item without reference audio a slice of the silence latent). timbre_embeds [N, W]
        replaces refer_latents_packed with their encoding when it is already known (see encode_timbre).
        """
        cfg = self.cfg
        _check_sequence("text_hidden_states", text_hidden_states, "text_mask", text_mask, cfg.text_hidden_dim)
        _check_sequence("lyric_embeds", lyric_embeds, "lyric_mask", lyric_mask, cfg.text_hidden_dim)
        batch_size = text_hidden_states.shape[0]
        if lyric_embeds.shape[0] != batch_size:
            raise ValueError(f"lyric_embeds: batch size {lyric_embeds.shape[0]} differs from "
                             f"text_hidden_states' {batch_size}")

        # In the state dtype of the other parts (fp32 in mixed precision, where the projection runs in bf16).
        text = self.text_projector(text_hidden_states).to(self.null_condition_emb.dtype)  # [B, Lt, W]
        lyrics = self.lyric_encoder(lyric_embeds, lyric_mask)  # [B, Ll, W]
        timbre, timbre_mask = self.encode_timbre(refer_latents_packed, refer_order, batch_size,
                                                 timbre_embeds)  # [B, R, W]
        states, mask = pack_sequences(lyrics, lyric_mask, timbre, timbre_mask)
        return pack_sequences(states, mask, text, text_mask)


def _check_sequence(name: str, x: torch.Tensor, mask_name: str, mask: torch.Tensor, dim: int) -> None:
    check_tensor(name, x, (None, range(0, 2**31), dim), f"[B, L, {dim}]")
    check_tensor(mask_name, mask, tuple(x.shape[:2]), f"{list(x.shape[:2])} (1 = real token)", kind="any")


def _check_references(latents: torch.Tensor, order: torch.Tensor, batch_size: int, dim: int) -> None:
    check_tensor("refer_latents_packed", latents, (None, None, dim), f"[N, Tr, {dim}] with N, Tr >= 1")
    _check_order(latents.shape[0], order, batch_size)


def _check_order(n: int, order: torch.Tensor, batch_size: int) -> None:
    check_tensor("refer_order", order, (n,), f"[{n}] (one batch index per reference)", kind="int")
    check_values("refer_order", order, 0, batch_size)
    missing = (torch.bincount(order.long(), minlength=batch_size) == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"refer_order: every batch item needs at least one reference; items {missing} have none")
