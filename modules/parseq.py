"""Stage 4 (transformer): ``PARSeq``, permuted autoregressive sequence models (Bautista & Atienza, ECCV 2022).

A pre-norm transformer decoder with two streams (XLNet): position queries ask for a character,
the content stream holds the context ([B] and the characters so far, as the permutation allows),
and both attend to the encoder's tokens. Trained with permutation language modelling: K
permutations of the label's positions per batch (left-to-right and its mirror among them), each
giving the attention masks of one factorisation (``permutation_masks``). Reads autoregressively
(left to right, ``decode="ar"``) or all positions at once (``"nar"``), then ``refine_iters``
rounds of cloze refinement.

Classes follow baudm/parseq's tokenizer: the head predicts [E] (0) and the characters (1..N);
the token embedding also has [B] (N + 1) and [P] (N + 2), which are inputs only.
``from_parseq_state_dict`` maps the reference's weights (``PARSeq.model.state_dict()``) to ours.
"""
from __future__ import annotations

import math
from itertools import permutations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.prediction import CONFIDENCE_WITH_END
from modules.registry import Head, Option, record_view, register
from runtime import UsageError
from utils import PARSeqLabelConverter

EOS_INDEX = 0  # [E]: also where a reading stops
# --parseq_refine_iters: each round runs the decoder once more over every position; past a few rounds the
# reading no longer changes (the reference uses 1), and an unbounded count runs for minutes.
MAX_REFINE_ITERS = 10


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer applied to the query stream and (except in the last layer) the content stream."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_c = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward_stream(self, tgt, tgt_norm, tgt_kv, memory, tgt_mask, tgt_key_padding_mask):
        tgt = tgt + self.dropout1(self.self_attn(tgt_norm, tgt_kv, tgt_kv, attn_mask=tgt_mask,
                                                 key_padding_mask=tgt_key_padding_mask, need_weights=False)[0])
        tgt = tgt + self.dropout2(self.cross_attn(self.norm1(tgt), memory, memory, need_weights=False)[0])
        return tgt + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(tgt))))))

    def forward(self, query, content, memory, query_mask=None, content_mask=None, content_key_padding_mask=None,
                update_content: bool = True):
        query_norm, content_norm = self.norm_q(query), self.norm_c(content)
        query = self.forward_stream(query, query_norm, content_norm, memory, query_mask, content_key_padding_mask)
        if update_content:
            content = self.forward_stream(content, content_norm, content_norm, memory, content_mask,
                                          content_key_padding_mask)
        return query, content


class Decoder(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, num_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, content, memory, query_mask=None, content_mask=None, content_key_padding_mask=None):
        for i, layer in enumerate(self.layers):
            query, content = layer(query, content, memory, query_mask, content_mask, content_key_padding_mask,
                                   update_content=i < len(self.layers) - 1)
        return self.norm(query)


class TokenEmbedding(nn.Module):
    def __init__(self, num_tokens: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return math.sqrt(self.embed_dim) * self.embedding(tokens)


@register
class PARSeq(Head, nn.Module):
    """PARSeq's decoder and head over the encoder's tokens [B, T, input_size].

    Training (``is_train``): ``text`` is [B] label [E] [P]... without its last column ([B, L + 1]);
    returns [B, L + 1, num_class] for the left-to-right factorisation, or [K, B, L + 1, num_class]
    for ``perms`` [K, L + 2] (``permutations``). Inference: [B, batch_max_length + 1, num_class].
    """

    name = "PARSeq"
    options = (
        Option("parseq_dec_depth", 1, "PARSeq: decoder layers (1)", low=1),
        Option("parseq_dec_heads", 0, "PARSeq: decoder heads (default 0: the decoder width / 32, PARSeq's 12 for "
                                      "384); must divide the decoder width", low=0),
        Option("parseq_dec_mlp_ratio", 4, "PARSeq: decoder feed-forward width / its width (4)", low=1),
        Option("parseq_perm_num", 6, "PARSeq training: permutations per batch, an even number (6: left-to-right, "
                                     "its mirror, 2 random and their mirrors)", low=2, input_only=True),
        Option("parseq_refine_iters", 1, f"PARSeq reading: cloze refinement rounds after decoding (1; at most "
                                         f"{MAX_REFINE_ITERS})", low=0, high=MAX_REFINE_ITERS, input_only=True),
        Option("parseq_decode", "ar", "PARSeq reading: ar (autoregressive, default) or nar (all positions at once)",
               choices=("ar", "nar"), input_only=True),
        CONFIDENCE_WITH_END,
    )
    fixed_input = ("batch_max_length",)  # its position queries
    has_own_init = True  # model.init_weights leaves it alone (trunc-normal 0.02, as the reference)
    converter = PARSeqLabelConverter
    end_index, end_layer, class_rows = EOS_INDEX, "head", ("head",)
    views = ("attention",)
    beam_hint = ("PARSeq reads with --parseq_decode ar|nar and --parseq_refine_iters N; use --decoder greedy, with "
                 "--lexicon_mode snap for a word list")

    def __init__(self, input_size: int, num_class: int, max_label_length: int, num_heads: int, depth: int = 1,
                 mlp_ratio: int = 4, dropout: float = 0.1, decode: str = "ar", refine_iters: int = 1):
        super().__init__()
        self.decoder = Decoder(input_size, num_heads, input_size * mlp_ratio, depth, dropout)
        self.head = nn.Linear(input_size, num_class)  # [E] and the characters
        self.text_embed = TokenEmbedding(num_class + 2, input_size)  # ... and [B], [P]
        self.pos_queries = nn.Parameter(torch.empty(1, max_label_length + 1, input_size))  # +1 for [E]
        self.dropout = nn.Dropout(dropout)
        self.bos_index, self.pad_index = num_class, num_class + 1
        self.max_label_length = max_label_length
        self.decode_mode = decode
        self.refine_iters = refine_iters
        self.reset_parameters()

    def explain_hooks(self, record: dict) -> list:
        """The last decoder layer's cross-attention over the encoder's tokens (the mean over its heads), one
        [B, steps, T] per pass: the autoregressive steps (one query each) joined, each refinement (or NAR) pass
        whole. The weights are computed again from the attention's inputs: the reading itself asks for none."""
        calls = []
        cross = self.decoder.layers[-1].cross_attn

        def weights(module, args):
            query, key = args[0], args[1]  # [B, Q, D], [B, T, D]
            calls.append(cross_attention_weights(module, query, key))  # [B, Q, T]

        def reading(module, args, output):
            passes, steps = [], []
            for w in calls:
                if w.size(1) == 1 and self.decode_mode == "ar" and len(passes) == 0:
                    steps.append(w)  # one autoregressive step
                    continue
                if steps:
                    passes.append(torch.cat(steps, dim=1))
                    steps = []
                passes.append(w)
            if steps:
                passes.append(torch.cat(steps, dim=1))
            for p in passes:
                record_view(record, "attention", p)
            calls.clear()

        return [cross.register_forward_pre_hook(weights), self.register_forward_hook(reading)]

    @staticmethod
    def heads_for(config, input_size: int) -> int:
        return config.parseq_dec_heads or max(1, input_size // 32)  # PARSeq: 12 for width 384, 6 for 192

    @classmethod
    def from_config(cls, config, input_size: int) -> "PARSeq":
        return cls(input_size, config.num_class, config.batch_max_length, cls.heads_for(config, input_size),
                   config.parseq_dec_depth, config.parseq_dec_mlp_ratio, decode=config.parseq_decode,
                   refine_iters=config.parseq_refine_iters)

    @classmethod
    def check(cls, config, input_size: int) -> None:
        if config.parseq_perm_num % 2:
            raise UsageError(f"--parseq_perm_num {config.parseq_perm_num} must be even: each order is trained "
                             "with its mirror")
        heads = cls.heads_for(config, input_size)
        if input_size % heads:
            given = (f"--parseq_dec_heads {heads}" if config.parseq_dec_heads else
                     f"the default --parseq_dec_heads ({heads} = the width / 32)")
            raise UsageError(f"{given} does not divide the decoder's width {input_size} (the width of the stage "
                             f"before it: --vit_embed_dim, or --hidden_size after BiLSTM): give --parseq_dec_heads "
                             f"a divisor of {input_size}")

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        layers = {k.split(".")[2] for k in state_dict if k.startswith("decoder.layers.")}
        width = state_dict["head.weight"].shape[1]
        return {"num_class": state_dict["head.weight"].shape[0], "parseq_dec_depth": len(layers),
                "batch_max_length": state_dict["pos_queries"].shape[1] - 1,
                "parseq_dec_mlp_ratio": state_dict["decoder.layers.0.linear1.weight"].shape[0] // width}

    @classmethod
    def recognise(cls, state_dict: dict):
        return cls.read_sizes(state_dict) if "head.weight" in state_dict and "pos_queries" in state_dict else None

    @classmethod
    def training_batch(cls, text, length, config) -> tuple:
        """[B] label [E], padded to the batch's longest as the reference, and the K orders of this batch
        (drawn from torch's global generator, whose state a training checkpoint keeps)."""
        text = text[:, :int(length.max()) + 1]
        return text, {"perms": permutations_for(text.size(1) - 2, config.parseq_perm_num).to(text.device)}

    @staticmethod
    def loss(preds, text, length):
        orders = preds if preds.dim() == 4 else preds[None]
        return permutation_loss(orders, text[:, 1:], pad_index=preds.size(-1) + 1)  # [P] = num_class + 1

    def read_every_step(self, features, num_steps: int):
        return self.read(features.contiguous(), num_steps - 1, early_stop=False)

    @classmethod
    def remap_inputs(cls, state: dict, old: dict, fresh: dict, src, dst, old_config, new_config) -> None:
        """Its token embedding: the head's classes, then [B] and [P]."""
        name = "Prediction.text_embed.embedding.weight"
        old_n, new_n = old_config.num_class, new_config.num_class
        out = fresh[name].clone()
        out[torch.cat([dst, torch.tensor([new_n, new_n + 1])])] = \
            old[name][torch.cat([src, torch.tensor([old_n, old_n + 1])])].to(out.dtype)
        state[name] = out

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    def decode(self, tgt, memory, tgt_mask=None, tgt_padding_mask=None, tgt_query=None, tgt_query_mask=None):
        """tgt [B, L] tokens ([B] first) → decoder output [B, queries, C]."""
        N, L = tgt.shape
        null_ctx = self.text_embed(tgt[:, :1])  # [B] is the null context: no position
        tgt_emb = self.pos_queries[:, :L - 1] + self.text_embed(tgt[:, 1:])
        tgt_emb = self.dropout(torch.cat([null_ctx, tgt_emb], dim=1))
        if tgt_query is None:
            tgt_query = self.pos_queries[:, :L].expand(N, -1, -1)
        return self.decoder(self.dropout(tgt_query), tgt_emb, memory, tgt_query_mask, tgt_mask, tgt_padding_mask)

    def forward(self, batch_H: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True,
                batch_max_length: int = 25, perms: torch.Tensor | None = None) -> torch.Tensor:
        if is_train:
            return self.teacher_forced(batch_H, text, perms)
        return self.read(batch_H, min(batch_max_length, self.max_label_length))

    def teacher_forced(self, memory: torch.Tensor, tgt_in: torch.Tensor, perms: torch.Tensor | None) -> torch.Tensor:
        # [E] is not depended upon by any other token in any factorisation, nor is padding.
        padding = (tgt_in == self.pad_index) | (tgt_in == EOS_INDEX)
        if perms is None:
            content_mask, query_mask = causal_masks(tgt_in.size(1), tgt_in.device)
            return self.head(self.decode(tgt_in, memory, content_mask, padding, tgt_query_mask=query_mask))
        outputs = []
        for perm in perms:
            content_mask, query_mask = permutation_masks(perm)
            outputs.append(self.head(self.decode(tgt_in, memory, content_mask, padding, tgt_query_mask=query_mask)))
        return torch.stack(outputs)  # [K, B, L + 1, num_class]

    def read(self, memory: torch.Tensor, max_length: int, early_stop: bool = True) -> torch.Tensor:
        """Inference: AR (or NAR) decoding, then ``refine_iters`` cloze refinements → [B, max_length + 1, C].

        ``early_stop``: AR stops once every row has read [E] (an export runs every step instead: the
        stop is data-dependent control flow; the readings are the same, as they are cut at [E]).
        """
        B, num_steps = memory.size(0), max_length + 1
        pos_queries = self.pos_queries[:, :num_steps].expand(B, -1, -1)
        tgt_mask, query_mask = causal_masks(num_steps, memory.device)
        if self.decode_mode == "ar":
            logits = self.read_autoregressive(memory, pos_queries, tgt_mask, query_mask, early_stop)
        else:  # only [B] as context: every position is queried at once
            tgt_in = memory.new_full((B, 1), self.bos_index, dtype=torch.long)
            logits = self.head(self.decode(tgt_in, memory, tgt_query=pos_queries))
        if self.refine_iters:
            # Cloze mask: the AR query mask with the context to the right unmasked too. The reference's AR
            # content and query masks are one tensor, so its content stream (decoder layers before the
            # last) reads with the cloze mask as well.
            query_mask = tgt_mask = query_mask & ~torch.ones_like(query_mask).triu(2)
            bos = memory.new_full((B, 1), self.bos_index, dtype=torch.long)
            for _ in range(self.refine_iters):
                tgt_in = torch.cat([bos, logits[:, :-1].argmax(-1)], dim=1)
                padding = (tgt_in == EOS_INDEX).int().cumsum(-1) > 0  # tokens from the first [E] on
                L = tgt_in.size(1)
                logits = self.head(self.decode(tgt_in, memory, tgt_mask[:L, :L], padding, pos_queries,
                                               query_mask[:, :L]))
        if logits.size(1) < num_steps:  # AR stopped early: the later steps only follow [E]
            rest = logits.new_zeros(B, num_steps - logits.size(1), logits.size(2))
            rest[:, :, EOS_INDEX] = 1.0
            logits = torch.cat([logits, rest], dim=1)
        return logits

    def read_autoregressive(self, memory, pos_queries, tgt_mask, query_mask, early_stop: bool) -> torch.Tensor:
        """One query at a time (position i sees [B] and the i characters read so far) → [B, steps run, C]."""
        B, num_steps = memory.size(0), pos_queries.size(1)
        tgt_in = memory.new_full((B, num_steps), self.pad_index, dtype=torch.long)
        tgt_in[:, 0] = self.bos_index
        logits = []
        for i in range(num_steps):
            j = i + 1
            out = self.decode(tgt_in[:, :j], memory, tgt_mask[:j, :j], tgt_query=pos_queries[:, i:j],
                              tgt_query_mask=query_mask[i:j, :j])
            logits.append(self.head(out))  # [B, 1, C]
            if j < num_steps:
                tgt_in[:, j] = logits[-1][:, 0].argmax(-1)
                if early_stop and bool((tgt_in == EOS_INDEX).any(dim=-1).all()):
                    break
        return torch.cat(logits, dim=1)


def cross_attention_weights(attention: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """What ``attention(query, key, key, need_weights=True)`` returns as weights (unmasked, averaged over the
    heads, batch first): query [B, Q, D], key [B, T, D] → [B, Q, T], each row summing to one."""
    D, H = attention.embed_dim, attention.num_heads
    w_q, w_k, _ = attention.in_proj_weight.split(D)
    b_q, b_k, _ = attention.in_proj_bias.split(D)
    q = F.linear(query, w_q, b_q).unflatten(-1, (H, D // H)).transpose(1, 2)  # [B, H, Q, d]
    k = F.linear(key, w_k, b_k).unflatten(-1, (H, D // H)).transpose(1, 2)  # [B, H, T, d]
    return torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, dim=-1).mean(dim=1)


def causal_masks(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The left-to-right factorisation's (content, query) masks [size, size] (True = may not attend)."""
    mask = torch.ones(size, size, dtype=torch.bool, device=device).triu(1)
    return mask, mask


def permutation_masks(perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention masks of one factorisation order (True = may not attend), as the reference's
    ``generate_attn_masks``: ``perm`` [L + 2] lists positions in reading order ([B] first, [E] last).

    A position may see the positions read before it: the content stream also sees itself, the query
    stream does not. → (content mask [L + 1, L + 1], query mask [L + 1, L + 1]).
    """
    size = perm.size(0)
    order = torch.empty_like(perm)
    order[perm] = torch.arange(size, device=perm.device)  # position → when it is read
    mask = order[None, :] > order[:, None]  # [query position, key position]: key read later
    content_mask = mask[:-1, :-1]
    query_mask = (mask | torch.eye(size, dtype=torch.bool, device=perm.device))[1:, :-1]
    return content_mask, query_mask


def permutations_for(max_num_chars: int, perm_num: int = 6, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """The reference's ``gen_tgt_perms`` (forward and mirrored on): ``perm_num`` orders of the label
    positions shared by the batch → [K, max_num_chars + 2] with [B] (0) first and [E] last.

    Left-to-right is the first; the second reads right-to-left with [E] given no context (which NAR
    decoding needs); the rest are random, each followed by its mirror. Sampled with ``generator`` (the
    global one by default, whose state train.py saves, so that a resumed run draws the same orders).
    """
    if max_num_chars == 1:
        return torch.arange(3).unsqueeze(0)
    max_gen = perm_num // 2
    num_gen = min(max_gen, math.factorial(max_num_chars) // 2)
    perms = [torch.arange(max_num_chars)]
    if max_num_chars < 5:
        # Few orders exist: draw without replacement from the first half of all of them (the other
        # half are their mirrors; for 4 characters this selector splits the list into mirrored halves).
        selector = [0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21] if max_num_chars == 4 else \
            list(range(math.factorial(max_num_chars) // 2))
        pool = torch.as_tensor(list(permutations(range(max_num_chars))))[selector][1:]
        if len(pool):
            chosen = torch.randperm(len(pool), generator=generator)[:num_gen - 1]
            perms = torch.cat([torch.stack(perms), pool[chosen]])
        else:
            perms = torch.stack(perms)
    else:
        perms = torch.stack(perms + [torch.randperm(max_num_chars, generator=generator)
                                     for _ in range(num_gen - 1)])
    perms = torch.stack([perms, perms.flip(-1)]).transpose(0, 1).reshape(-1, max_num_chars)  # each with its mirror
    bos = perms.new_zeros(len(perms), 1)
    eos = perms.new_full((len(perms), 1), max_num_chars + 1)
    perms = torch.cat([bos, perms + 1, eos], dim=1)
    if len(perms) > 1:  # right-to-left, and [E] read right after [B] (null context)
        perms[1, 1:] = max_num_chars + 1 - torch.arange(max_num_chars + 1)
    return perms


def permutation_loss(logits: torch.Tensor, target: torch.Tensor, pad_index: int) -> torch.Tensor:
    """PLM loss: logits [K, B, L + 1, C] for the K orders, target [B, L + 1] (label [E] [P]...).

    The mean cross-entropy over every order's predicted tokens; after the first two orders
    (left-to-right and right-to-left) [E] is not a target, as in the reference.
    """
    total, count = logits.new_zeros(()), 0
    for i, order_logits in enumerate(logits):
        if i == 2:
            target = target.masked_fill(target == EOS_INDEX, pad_index)
        n = int((target != pad_index).sum())
        total = total + n * F.cross_entropy(order_logits.flatten(end_dim=1), target.flatten(), ignore_index=pad_index)
        count += n
    return total / max(count, 1)


def from_parseq_state_dict(state_dict: dict) -> dict:
    """baudm/parseq's ``PARSeq.model.state_dict()`` (keys ``encoder.*``, ``decoder.*``, ``head.*``,
    ``text_embed.*``, ``pos_queries``; ``model.`` prefixed in its Lightning checkpoints) → this
    toolkit's keys for ``None-ViT-None-PARSeq`` (same class order: [E], the characters, [B], [P])."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("model.")
        if key.startswith("encoder."):
            out["FeatureExtraction." + key.removeprefix("encoder.")] = value
        else:
            out["Prediction." + key] = value
    return out
