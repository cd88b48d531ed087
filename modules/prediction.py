"""Stage 4: Prediction. ``CTC`` (a linear head) or ``Attn`` (an LSTM attention decoder); ``PARSeq`` registers in
modules/parseq.py."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.registry import Head, Option, record_view, register
from utils import AttnLabelConverter, CTCLabelConverter

GO_INDEX = 0  # '[GO]' in AttnLabelConverter
EOS_INDEX = 1  # '[s]'

# Shared by the heads that end a reading with a class (Attn's [s], PARSeq's and ViTSTR's [E]): one flag.
CONFIDENCE_WITH_END = Option(
    "confidence_with_end", False, "Attn, PARSeq, ViTSTR reading: the greedy confidence multiplies in the end "
    "token's probability, as baudm/parseq's tokenizer (default: the characters' probabilities only, as the "
    "reference)", input_only=True)
# CTC's loss: the reference's (torch's 'mean': each sample's loss / its label length, averaged), or OpenOCR's and
# PaddleOCR's (reduction 'none', then the mean over the batch: long labels weigh more).
CTC_REDUCTIONS = ("mean", "sum_mean")


class ReferenceHead(Head):
    """The reference's heads are built from (input width, hidden_size, num_class) alone."""

    reference = True

    @classmethod
    def from_config(cls, config, input_size: int):
        return cls(input_size, config.hidden_size, config.num_class)


@register
class CTC(ReferenceHead, nn.Linear):
    """Per-frame logits [B, T, num_class]; blank is class 0. A plain linear layer (keys ``weight``,
    ``bias``) that takes the attention decoder's call signature and ignores what it does not use."""

    name = "CTC"
    options = (Option("ctc_reduction", "mean", "CTC training: the loss's reduction: mean (the reference's: each "
                                               "sample's loss / its label length, averaged) or sum_mean (each sample's "
                                               "sum, averaged over the batch: OpenOCR's, PaddleOCR's)",
                      choices=CTC_REDUCTIONS, input_only=True),)
    converter = CTCLabelConverter
    beam = "logits"  # the prefix beam search over the frames' probabilities
    views = ("frames",)

    @classmethod
    def recognise(cls, state_dict: dict):
        return cls.read_sizes(state_dict) if set(state_dict) == {"weight", "bias"} else None

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"num_class": state_dict["weight"].shape[0]}

    @staticmethod
    def loss(preds, text, length, reduction: str = "mean"):
        """``text`` [B, batch_max_length] zero-padded, ``length`` [B]; every sample uses all T frames.
        ``reduction``: one of ``CTC_REDUCTIONS`` (``--ctc_reduction``)."""
        frames = torch.full((preds.size(0),), preds.size(1), dtype=torch.int32)
        log_probs = preds.log_softmax(2).permute(1, 0, 2)  # [T, B, C]
        if reduction == "sum_mean":
            return F.ctc_loss(log_probs, text, frames, length, reduction="none", zero_infinity=True).mean()
        return F.ctc_loss(log_probs, text, frames, length, zero_infinity=True)

    @classmethod
    def loss_options(cls, config) -> dict:
        return {"reduction": config.ctc_reduction}

    def read_every_step(self, features, num_steps: int):
        return self(features)

    def __init__(self, input_size: int, hidden_size: int, num_class: int):
        super().__init__(input_size, num_class)

    def forward(self, batch_H: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True,
                batch_max_length: int = 25, perms: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(batch_H)


@register
class Attention(ReferenceHead, nn.Module):
    """Bahdanau-style attention decoder with one-hot feedback of the previous character.

    Training uses teacher forcing; inference decodes greedily and stops once every sequence
    in the batch has emitted ``[s]`` (the remaining steps could not change any decoded string).
    Output logits: [B, num_steps, num_class], num_steps = batch_max_length + 1.
    """

    name = "Attn"
    options = (CONFIDENCE_WITH_END,)
    converter = AttnLabelConverter
    end_index, end_layer, class_rows = EOS_INDEX, "generator", ("generator",)
    beam = "decoder"  # the beam search runs attention_cell one step at a time (decoding.attention_beam_search)
    views = ("attention",)

    @classmethod
    def recognise(cls, state_dict: dict):
        return cls.read_sizes(state_dict) if "generator.weight" in state_dict else None

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"num_class": state_dict["generator.weight"].shape[0],
                "hidden_size": state_dict["generator.weight"].shape[1]}

    @staticmethod
    def loss(preds, text, length):
        """``text`` [B, batch_max_length + 2] ([GO] label [s] padding); the target is ``text`` without [GO], and
        [GO] (0) also marks padding, which the loss ignores."""
        target = text[:, 1:]
        return F.cross_entropy(preds.reshape(-1, preds.shape[-1]), target.reshape(-1), ignore_index=0)

    def read_every_step(self, batch_H: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Greedy decoding with every step computed (an exported graph's): [B, T, C] → [B, num_steps, num_class]."""
        batch_H = batch_H.contiguous()
        h = batch_H.new_zeros(batch_H.size(0), self.hidden_size)
        hidden = (h, h)
        batch_H_proj = self.attention_cell.i2h(batch_H)  # [B, T, hidden], once as in eager
        targets = torch.full_like(batch_H[:, 0, 0], GO_INDEX, dtype=torch.long)  # [B]
        steps = []
        for _ in range(num_steps):
            onehot = F.one_hot(targets, self.num_classes).to(batch_H.dtype)
            hidden, _ = self.attention_cell(hidden, batch_H, batch_H_proj, onehot)
            logits = self.generator(hidden[0])  # [B, num_class]
            steps.append(logits)
            targets = logits.argmax(1)
        return torch.stack(steps, dim=1)

    @classmethod
    def remap_inputs(cls, state: dict, old: dict, fresh: dict, src, dst, old_config, new_config) -> None:
        """The one-hot input columns of the attention LSTM (after its context columns)."""
        name = "Prediction.attention_cell.rnn.weight_ih"
        width = fresh[name].shape[1] - new_config.num_class  # context part of the LSTM input
        out = fresh[name].clone()
        out[:, :width] = old[name][:, :width]
        out[:, width + dst] = old[name][:, width + src].to(out.dtype)
        state[name] = out

    def extra_reference_flops(self, args: tuple, kwargs: dict) -> int:
        """What the reference's attention decoder computes beyond ours: it projects the encoder features
        (``i2h``, [B, T, C] → [B, T, hidden]) again at each of its batch_max_length + 1 steps, where ours
        projects them once (the same result): steps - 1 more projections, 2 * B * T * C * hidden FLOPs each."""
        B, T, C = args[0].shape
        steps = kwargs.get("batch_max_length", 25) + 1
        return (steps - 1) * 2 * B * T * C * self.hidden_size

    def explain_hooks(self, record: dict) -> list:
        """The attention cell's alpha of every step of a forward, as one pass [B, steps, T]."""
        steps = []

        def step(module, args, output):
            steps.append(output[1].squeeze(2))  # alpha [B, T, 1] → [B, T]

        def reading(module, args, output):
            if steps:
                record_view(record, "attention", torch.stack(steps, dim=1))  # [B, steps, T]
            steps.clear()

        return [self.attention_cell.register_forward_hook(step), self.register_forward_hook(reading)]

    def __init__(self, input_size: int, hidden_size: int, num_class: int):
        super().__init__()
        self.attention_cell = AttentionCell(input_size, hidden_size, num_class)
        self.hidden_size = hidden_size
        self.num_classes = num_class
        self.generator = nn.Linear(hidden_size, num_class)

    def forward(self, batch_H: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True,
                batch_max_length: int = 25, perms: torch.Tensor | None = None) -> torch.Tensor:
        batch_size = batch_H.size(0)
        num_steps = batch_max_length + 1  # +1 for [s]
        h = batch_H.new_zeros(batch_size, self.hidden_size)
        hidden = (h, h.clone())
        # The encoder projection does not depend on the step: compute it once, not 26 times.
        batch_H_proj = self.attention_cell.i2h(batch_H)  # [B, T, hidden]

        if is_train:
            onehots = F.one_hot(text[:, :num_steps], self.num_classes).to(batch_H.dtype)  # [B, steps, C]
            output_hiddens = []
            for i in range(num_steps):
                hidden, _ = self.attention_cell(hidden, batch_H, batch_H_proj, onehots[:, i])
                output_hiddens.append(hidden[0])
            return self.generator(torch.stack(output_hiddens, dim=1))  # [B, steps, C]

        targets = torch.full((batch_size,), GO_INDEX, dtype=torch.long, device=batch_H.device)
        finished = torch.zeros(batch_size, dtype=torch.bool, device=batch_H.device)
        probs = batch_H.new_zeros(batch_size, num_steps, self.num_classes)
        for i in range(num_steps):
            onehot = F.one_hot(targets, self.num_classes).to(batch_H.dtype)
            hidden, _ = self.attention_cell(hidden, batch_H, batch_H_proj, onehot)
            probs[:, i] = self.generator(hidden[0])
            targets = probs[:, i].argmax(1)
            finished |= targets == EOS_INDEX
            if bool(finished.all()):
                # Later steps only follow [s]: decoding cuts there. Mark them [s] as well.
                probs[:, i + 1:, EOS_INDEX] = 1.0
                break
        return probs


class AttentionCell(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_embeddings: int):
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.LSTMCell(input_size + num_embeddings, hidden_size)
        self.hidden_size = hidden_size

    def forward(self, prev_hidden, batch_H, batch_H_proj, char_onehots):
        # batch_H: [B, T, input_size]; batch_H_proj = i2h(batch_H): [B, T, hidden]
        prev_hidden_proj = self.h2h(prev_hidden[0]).unsqueeze(1)  # [B, 1, hidden]
        e = self.score(torch.tanh(batch_H_proj + prev_hidden_proj))  # [B, T, 1]
        alpha = F.softmax(e, dim=1)
        context = torch.bmm(alpha.transpose(1, 2), batch_H).squeeze(1)  # [B, input_size]
        concat_context = torch.cat([context, char_onehots], 1)
        cur_hidden = self.rnn(concat_context, prev_hidden)
        return cur_hidden, alpha

