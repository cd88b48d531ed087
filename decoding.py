"""Turning the model's outputs into strings: greedy, CTC prefix beam search, attention beam search,
word lists (constrained decoding or "snap" to the nearest word), N-best with scores and
per-character confidences.

From Python::

    from decoding import DecodeOptions, decode
    from lexicon import load_lexicon
    options = DecodeOptions("beam", beam_size=5, topk=3,
                            lexicon=load_lexicon("words.txt", config.character, ignore_case=not config.sensitive))
    out = decode(model, image, config, options)        # image [B, C, H, W] on the model's device
    out.results[0].text, out.results[0].char_confidences, out.results[0].nbest

Greedy (the default) is what test.py and train.py's validation run. The beam searches work in log space;
CTC runs one sample at a time over the frames (prefixes must be merged, which is bookkeeping, not
arithmetic) with the vocabulary pruned to the best characters per frame, computed for the whole
batch at once; the attention search runs the decoder once per step on B x K rows (the K beams of
every image as one batch).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lexicon import Lexicon, fold_char, load_lexicon
from modules.prediction import EOS_INDEX, GO_INDEX
from modules.registry import head
from runtime import UsageError

DECODERS = ("greedy", "beam")
LEXICON_MODES = ("constrain", "snap")
NEG_INF = float("-inf")
# A beam's cost grows with its width (CTC: beam x characters per frame, per frame; Attn: B x beam decoder
# rows per step); past ~20 accuracy stops improving. 100 keeps the worst case to seconds per image.
MAX_BEAM_SIZE = 100


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode. ``topk`` hypotheses are returned (at most ``beam_size``; greedy has one)."""

    decoder: str = "greedy"
    beam_size: int = 5
    topk: int = 1
    lexicon: Lexicon | None = None
    lexicon_mode: str = "constrain"
    length_penalty: float = 1.0  # Attn beam ranks by sum(log p) / length ** length_penalty
    prune_chars: int = 8  # CTC beam: characters tried per frame (the most probable ones)

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise UsageError(f"--decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")
        if self.lexicon_mode not in LEXICON_MODES:
            raise UsageError(f"--lexicon_mode {self.lexicon_mode!r} is not one of {', '.join(LEXICON_MODES)}")
        if not isinstance(self.beam_size, int) or not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise UsageError(f"--beam_size {self.beam_size}: must be an integer from 1 (greedy-like) to "
                             f"{MAX_BEAM_SIZE} (wider beams cost time and memory without reading better)")
        if not isinstance(self.topk, int) or self.topk < 1:
            raise UsageError(f"--topk {self.topk}: must be an integer of at least 1")
        if self.decoder == "beam" and self.topk > self.beam_size:
            raise UsageError(f"--topk {self.topk} is more than --beam_size {self.beam_size}: a beam search keeps "
                             f"only beam_size hypotheses; use --topk 1..{self.beam_size} or a wider beam")
        if self.decoder == "greedy" and self.topk > 1:
            raise UsageError(f"--topk {self.topk} needs --decoder beam (greedy reads one string)")
        if self.decoder == "greedy" and self.lexicon is not None and self.lexicon_mode == "constrain":
            raise UsageError("--lexicon_mode constrain needs --decoder beam (greedy cannot follow a word list); "
                             "use --decoder beam, or --lexicon_mode snap")
        if self.prune_chars < 1:
            raise UsageError(f"prune_chars {self.prune_chars}: must be at least 1")

    @property
    def plain_greedy(self) -> bool:
        """Greedy without a word list: the reference's reading."""
        return self.decoder == "greedy" and self.lexicon is None

    def describe(self) -> str:
        text = "greedy" if self.decoder == "greedy" else f"beam {self.beam_size}"
        if self.lexicon is not None:
            text += (f", lexicon {self.lexicon.source or ''} ({len(self.lexicon.words)} words, "
                     f"{self.lexicon_mode}{', ignoring case' if self.lexicon.ignore_case else ''})")
        return text


@dataclass
class Hypothesis:
    """One reading. ``score`` ranks (Attn: length-normalised); ``log_prob`` is its log-probability."""

    text: str
    score: float
    log_prob: float
    char_confidences: list[float] = field(default_factory=list)  # max prob of each emitted character


@dataclass
class Decoded:
    """The reading of one image: the best text, its confidence, per-character confidences, the N best."""

    text: str
    confidence: float
    char_confidences: list[float]
    nbest: list[Hypothesis]
    snapped_from: str | None = None  # the model's reading when snapped to a different list word


@dataclass
class BatchDecoding:
    logits: torch.Tensor | None  # the greedy forward's logits (None when the attention beam ran instead)
    results: list[Decoded]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.results]

    @property
    def confidences(self) -> list[float]:
        return [r.confidence for r in self.results]


# ----------------------------------------------------------------------------------------- greedy

def greedy_ctc(logits: torch.Tensor, character: list[str]) -> list[Decoded]:
    """Best path: argmax per frame, merge repeats, drop blanks (``character[0]`` is the blank).

    Confidence as the reference's: product of every frame's max probability, blanks included. A
    character's confidence is the max probability over the frames merged into it.
    """
    max_probs, index = F.softmax(logits.float(), dim=2).max(dim=2)  # [B, T]
    confidences = max_probs.prod(dim=1).tolist()
    results = []
    for row, probs, confidence in zip(index.tolist(), max_probs.tolist(), confidences):
        chars, char_conf, previous = [], [], 0
        for i, p in zip(row, probs):
            if i != 0 and i == previous:
                char_conf[-1] = max(char_conf[-1], p)  # same character, frames merged
            elif i != 0:
                chars.append(character[i])
                char_conf.append(p)
            previous = i
        text = "".join(chars)
        log_conf = math.log(confidence) if confidence > 0 else NEG_INF
        results.append(Decoded(text, confidence, char_conf, [Hypothesis(text, log_conf, log_conf, char_conf)]))
    return results


def greedy_attention(logits: torch.Tensor, character: list[str], eos_index: int = EOS_INDEX,
                     with_end: bool = False) -> list[Decoded]:
    """Argmax per step, cut at the first [s] (all steps when there is none); PARSeq's [E] is ``eos_index`` 0.

    Confidence: the product of the kept steps' max probabilities (an empty reading: its [s]'s); ``with_end``
    (``--confidence_with_end``): the [s] step's too, as baudm/parseq's tokenizer (``probs[:eos_idx + 1]``).
    """
    max_probs, index = F.softmax(logits.float(), dim=2).max(dim=2)  # [B, steps]
    is_eos = index == eos_index
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), index.size(1))  # [B]
    kept = first_eos + 1 if with_end else first_eos.clamp(min=1)  # steps in the confidence
    within = torch.arange(index.size(1), device=index.device) < kept[:, None]
    confidences = max_probs.masked_fill(~within, 1.0).prod(dim=1).tolist()
    results = []
    for row, probs, n, confidence in zip(index.tolist(), max_probs.tolist(), first_eos.tolist(), confidences):
        text, char_conf = "".join(character[i] for i in row[:n]), probs[:n]
        log_conf = math.log(confidence) if confidence > 0 else NEG_INF
        results.append(Decoded(text, confidence, char_conf, [Hypothesis(text, log_conf, log_conf, char_conf)]))
    return results


def greedy(logits: torch.Tensor, config) -> list[Decoded]:
    """The head's greedy reading: one class per frame (``end_index`` None: CTC's best path), or the steps up to
    its end class (Attn's [s], PARSeq's [E]: PARSeq's logits are already decoded by the model, AR/NAR and
    refinement); a head with a reading of its own declares ``greedy(logits, character)``."""
    prediction, character = head(config.Prediction), _classes(config)
    if hasattr(prediction, "greedy"):
        return prediction.greedy(logits, character)
    if prediction.end_index is None:
        return greedy_ctc(logits, character)
    return greedy_attention(logits, character, eos_index=prediction.end_index,
                            with_end=config.confidence_with_end)


# ----------------------------------------------------------------------------- word-list constraint

class Constraint:
    """A lexicon's trie seen in a model's class indices: which classes continue a word from a node.

    When the list is matched ignoring case and the model writes both cases, the classes of one
    letter ('a', 'A') form a group: the searches add up a group's probability and follow the
    group, so that case variants of one word do not fill the beam (``fold_log_probs``). A
    constrained reading is returned as the list writes the word.
    """

    def __init__(self, lexicon: Lexicon, character: list[str], num_special: int):
        self.lexicon = lexicon
        self.trie = lexicon.trie
        self.num_special = num_special
        self.class_key = [None] * num_special + [fold_char(c, lexicon.ignore_case) for c in character[num_special:]]
        self.classes_of: dict[str, list[int]] = {}
        for index, key in enumerate(self.class_key):
            if key is not None:
                self.classes_of.setdefault(key, []).append(index)
        self.folds = any(len(classes) > 1 for classes in self.classes_of.values())
        # class → group: specials are groups of their own, then one group per key.
        group_of = list(range(num_special)) + [0] * (len(character) - num_special)
        for g, classes in enumerate(self.classes_of.values(), num_special):
            for c in classes:
                group_of[c] = g
        self.group_of = torch.tensor(group_of, dtype=torch.long)  # [C]
        self.group_character = list(character[:num_special]) + list(self.classes_of)
        self._allowed: dict[int, np.ndarray] = {}

    def fold_log_probs(self, log_p: torch.Tensor) -> torch.Tensor:
        """log_p [..., C] → [..., G]: each group's summed probability (G = specials + distinct keys)."""
        group = self.group_of.to(log_p.device)
        summed = log_p.new_zeros(*log_p.shape[:-1], len(self.group_character))
        return summed.index_add_(-1, group, log_p.exp()).clamp_min(1e-30).log()

    def word(self, node: int) -> str:
        """The list's spelling of the word ending at ``node``."""
        return self.lexicon.words[self.trie.word_index[node]]

    def allowed(self, node: int) -> np.ndarray:
        """Class indices (int64) that lead from ``node`` towards some word."""
        classes = self._allowed.get(node)
        if classes is None:
            found = [c for key in self.trie.children(node) for c in self.classes_of.get(key, ())]
            classes = self._allowed[node] = np.array(sorted(found), dtype=np.int64)
        return classes

    def advance(self, node: int, class_index: int) -> int:
        key = self.class_key[class_index]
        return -1 if key is None else self.trie.child(node, key)

    def is_word(self, node: int) -> bool:
        return self.trie.is_word(node)


def _no_word_fallback(text: str, lexicon: Lexicon) -> Hypothesis:
    """No hypothesis completed a word inside the beam: the list word nearest the unconstrained
    reading, i.e. "snap" (score and log-probability -inf: the model did not read it)."""
    word, _ = lexicon.nearest(text)
    return Hypothesis(word, NEG_INF, NEG_INF, [])


# ----------------------------------------------------------------------------- CTC prefix beam search

def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


class _Prefix:
    """One prefix's state within a frame: log P(ending in blank), log P(ending in its last character)."""

    __slots__ = ("blank", "char", "confs", "node", "best")

    def __init__(self, confs: tuple, node: int):
        self.blank = self.char = self.best = NEG_INF
        self.confs, self.node = confs, node  # confs: from the best-scoring path into this prefix

    def add(self, blank: float, char: float, confs: tuple) -> None:
        self.blank = _logaddexp(self.blank, blank)
        self.char = _logaddexp(self.char, char)
        if max(blank, char) > self.best:
            self.best, self.confs = max(blank, char), confs

    @property
    def total(self) -> float:
        return _logaddexp(self.blank, self.char)


def ctc_beam_search(logits: torch.Tensor, character: list[str], beam_size: int, topk: int = 1,
                    constraint: Constraint | None = None, prune_chars: int = 8,
                    lexicon: Lexicon | None = None) -> list[list[Hypothesis]]:
    """CTC prefix beam search for a batch: logits [B, T, C], class 0 the blank → ``topk`` hypotheses per row.

    Log-softmax and each frame's most probable characters are computed for the whole batch at
    once; the search itself runs per row (merging prefixes is dictionary work). With a
    ``constraint`` only characters continuing a list word are tried, and only complete words end.
    """
    log_probs = F.log_softmax(logits.float(), dim=2)  # [B, T, C]
    greedy = [r.text for r in greedy_ctc(logits, character)] if constraint else [""] * len(logits)
    if constraint is not None and constraint.folds:
        # Search over letter groups ('a' + 'A'): the reading is the list's spelling anyway.
        log_probs = constraint.fold_log_probs(log_probs)  # [B, T, G]
        character = constraint.group_character
        constraint = Constraint(constraint.lexicon, character, 1)
    k = min(prune_chars, log_probs.size(2) - 1)
    top_chars = (log_probs[:, :, 1:].topk(k, dim=2).indices + 1).cpu().numpy()  # [B, T, k]
    log_probs = log_probs.cpu().numpy()
    out = []
    for lp, chars, reading in zip(log_probs, top_chars, greedy):
        beams = _ctc_search_row(lp, chars, beam_size, constraint, k)
        out.append(_ctc_hypotheses(beams, character, topk, constraint, lexicon, reading))
    return out


def _ctc_search_row(lp: np.ndarray, top_chars: np.ndarray, beam_size: int, constraint: Constraint | None,
                    k: int) -> list[tuple[tuple, _Prefix]]:
    """lp [T, C] log-probabilities, top_chars [T, k] → the final beams, best first."""
    start = _Prefix((), 0)
    start.blank = start.best = 0.0
    beams = [((), start)]
    for t in range(lp.shape[0]):
        row = lp[t]
        row_list = row.tolist()
        following: dict[tuple, _Prefix] = {}
        for prefix, state in beams:
            total = state.total
            here = following.get(prefix) or following.setdefault(prefix, _Prefix(state.confs, state.node))
            here.add(total + row_list[0], NEG_INF, state.confs)  # a blank: the prefix stays
            last = prefix[-1] if prefix else -1
            if last >= 0 and state.char > NEG_INF:  # the last character again: merged into it
                p = row_list[last]
                confs = state.confs[:-1] + (max(state.confs[-1], math.exp(p)),)
                here.add(NEG_INF, state.char + p, confs)
            for c in _candidates(row, top_chars[t], state.node, constraint, k):
                # After the same character, a new one needs a blank in between.
                score = (state.blank if c == last else total) + row_list[c]
                if score == NEG_INF:
                    continue
                new = prefix + (c,)
                nxt = following.get(new)
                if nxt is None:
                    node = constraint.advance(state.node, c) if constraint else 0
                    nxt = following[new] = _Prefix((), node)
                nxt.add(NEG_INF, score, state.confs + (math.exp(row_list[c]),))
        beams = sorted(following.items(), key=lambda item: item[1].total, reverse=True)[:beam_size]
    return beams


def _candidates(row: np.ndarray, top_chars: np.ndarray, node: int, constraint: Constraint | None,
                k: int) -> list[int]:
    """The characters to try after a prefix: the frame's k best, or the k best of those continuing a word."""
    if constraint is None:
        return top_chars.tolist()
    allowed = constraint.allowed(node)
    if len(allowed) > k:
        allowed = allowed[np.argpartition(-row[allowed], k - 1)[:k]]
    return allowed.tolist()


def _ctc_hypotheses(beams, character: list[str], topk: int, constraint: Constraint | None,
                    lexicon: Lexicon | None, greedy_reading: str) -> list[Hypothesis]:
    hyps = []
    for prefix, state in beams:
        if constraint is not None and not constraint.is_word(state.node):
            continue  # the frames ended inside a word
        score = state.total
        text = constraint.word(state.node) if constraint else "".join(character[i] for i in prefix)
        hyps.append(Hypothesis(text, score, score, list(state.confs)))
    if not hyps and constraint is not None:
        hyps = [_no_word_fallback(greedy_reading, lexicon)]
    return hyps[:topk]


# ----------------------------------------------------------------------------- attention beam search

@dataclass
class _Beams:
    """The state of B x K beams; every tensor is [B, K, ...]."""

    scores: torch.Tensor  # [B, K] summed log-probabilities (finished beams frozen)
    lengths: torch.Tensor  # [B, K] tokens emitted, [s] included
    finished: torch.Tensor  # [B, K] bool
    tokens: torch.Tensor  # [B, K, steps so far] class indices
    token_probs: torch.Tensor  # [B, K, steps so far] probability of each token
    nodes: np.ndarray  # [B, K] trie node per beam (0 without a word list)


def attention_beam_search(attention, contextual: torch.Tensor, character: list[str], beam_size: int,
                          max_steps: int, topk: int = 1, constraint: Constraint | None = None,
                          length_penalty: float = 1.0, lexicon: Lexicon | None = None) -> list[list[Hypothesis]]:
    """Beam search through an ``Attention`` decoder for a batch: contextual [B, T, C] → ``topk`` per image.

    The K beams of every image run as one batch of B*K rows through ``attention_cell`` and
    ``generator``. Candidates are ranked by sum(log p) / length ** length_penalty; a beam that
    emits [s] is frozen (it keeps its score and can only be displaced by better ones).
    """
    B, K, C = contextual.size(0), beam_size, attention.num_classes
    batch_H = contextual.repeat_interleave(K, dim=0).contiguous()  # [B*K, T, C_in]
    batch_H_proj = attention.attention_cell.i2h(batch_H)  # [B*K, T, hidden], once for every step
    h = batch_H.new_zeros(B * K, attention.hidden_size)
    hidden = (h, h.clone())
    device = contextual.device
    beams = _Beams(
        scores=torch.full((B, K), NEG_INF, device=device).index_fill_(1, torch.tensor([0], device=device), 0.0),
        lengths=torch.zeros(B, K, dtype=torch.long, device=device),
        finished=torch.zeros(B, K, dtype=torch.bool, device=device),
        tokens=torch.zeros(B, K, 0, dtype=torch.long, device=device),
        token_probs=torch.zeros(B, K, 0, device=device),
        nodes=np.zeros((B, K), dtype=np.int64))
    last = torch.full((B * K,), GO_INDEX, dtype=torch.long, device=device)
    for _ in range(max_steps):
        onehot = F.one_hot(last, C).to(batch_H.dtype)
        hidden, _ = attention.attention_cell(hidden, batch_H, batch_H_proj, onehot)
        log_p = F.log_softmax(attention.generator(hidden[0]).float(), dim=1).view(B, K, C)
        if constraint is not None:
            if constraint.folds:
                log_p = _fold_to_representatives(log_p, constraint)
            log_p = log_p + _constraint_mask(constraint, beams.nodes, C, device)
        origin = _beam_step(beams, log_p, K, length_penalty, constraint)  # [B, K] beam each new one came from
        rows = (origin + torch.arange(B, device=device)[:, None] * K).view(-1)  # [B*K] rows to carry on
        hidden = (hidden[0][rows], hidden[1][rows])
        last = beams.tokens[:, :, -1].reshape(-1)
        if bool((beams.finished | (beams.scores == NEG_INF)).all()):
            break  # every beam ended (or died under the word list)
    return [_attention_hypotheses(beams, b, character, topk, length_penalty, constraint, lexicon) for b in range(B)]


def _fold_to_representatives(log_p: torch.Tensor, constraint: Constraint) -> torch.Tensor:
    """log_p [B, K, C]: a letter group's summed probability on its most probable class (the one fed
    back to the decoder), -inf on the group's other classes."""
    group = constraint.group_of.to(log_p.device).expand_as(log_p)  # [B, K, C]
    folded = constraint.fold_log_probs(log_p)  # [B, K, G]
    best = torch.full_like(folded, NEG_INF).scatter_reduce(2, group, log_p, "amax")  # [B, K, G]
    representative = log_p >= best.gather(2, group)
    return torch.where(representative, folded.gather(2, group), NEG_INF)


def _constraint_mask(constraint: Constraint, nodes: np.ndarray, num_class: int, device) -> torch.Tensor:
    """[B, K, C]: 0 where a class continues a list word from the beam's node ([s] where one ends), else -inf."""
    mask = np.full((*nodes.shape, num_class), NEG_INF, dtype=np.float32)
    for (b, k), node in np.ndenumerate(nodes):
        if node < 0:
            continue  # a dead beam (score -inf already)
        mask[b, k, constraint.allowed(node)] = 0.0
        if constraint.is_word(node):
            mask[b, k, EOS_INDEX] = 0.0
    return torch.from_numpy(mask).to(device)


def _beam_step(beams: _Beams, log_p: torch.Tensor, K: int, length_penalty: float,
               constraint: Constraint | None) -> torch.Tensor:
    """Extend every beam by every class, keep the K best per image; updates ``beams``, returns [B, K] origins."""
    B, _, C = log_p.shape
    # A finished beam continues only with [s], at no cost and without growing.
    frozen = torch.full_like(log_p[0, 0], NEG_INF).index_fill_(0, torch.tensor([EOS_INDEX], device=log_p.device), 0.)
    log_p = torch.where(beams.finished[..., None], frozen, log_p)  # [B, K, C]
    total = beams.scores[..., None] + log_p  # [B, K, C]
    new_lengths = beams.lengths + (~beams.finished).long()  # [B, K]
    ranked = total / new_lengths[..., None].clamp(min=1).float() ** length_penalty
    best = ranked.view(B, K * C).topk(K, dim=1).indices  # [B, K]
    origin, cls = best // C, best % C
    beams.scores = total.view(B, K * C).gather(1, best)
    beams.lengths = new_lengths.gather(1, origin)
    was_finished = beams.finished.gather(1, origin)
    beams.finished = was_finished | (cls == EOS_INDEX)
    beams.tokens = torch.cat([_reorder(beams.tokens, origin), cls[..., None]], dim=2)
    probs = log_p.view(B, K * C).gather(1, best).exp()
    beams.token_probs = torch.cat([_reorder(beams.token_probs, origin), probs[..., None]], dim=2)
    if constraint is not None:
        beams.nodes = _advance_nodes(constraint, beams.nodes, origin.cpu().numpy(), cls.cpu().numpy(),
                                     was_finished.cpu().numpy(), beams.scores.cpu().numpy())
    return origin


def _reorder(history: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """history [B, K, S] re-indexed by the beams' origins [B, K]."""
    return history.gather(1, origin[..., None].expand(-1, -1, history.size(2)))


def _advance_nodes(constraint: Constraint, nodes: np.ndarray, origin: np.ndarray, cls: np.ndarray,
                   was_finished: np.ndarray, scores: np.ndarray) -> np.ndarray:
    new = np.empty_like(nodes)
    for (b, k), o in np.ndenumerate(origin):
        node = nodes[b, o]
        if scores[b, k] == NEG_INF or node < 0:
            new[b, k] = -1
        elif was_finished[b, k] or cls[b, k] == EOS_INDEX:
            new[b, k] = node
        else:
            new[b, k] = constraint.advance(node, int(cls[b, k]))
    return new


def _attention_hypotheses(beams: _Beams, b: int, character: list[str], topk: int, length_penalty: float,
                          constraint: Constraint | None, lexicon: Lexicon | None) -> list[Hypothesis]:
    """Image b's beams as hypotheses, best first; cut at [s] (a beam that never ended keeps every step)."""
    hyps = []
    scores, lengths = beams.scores[b].tolist(), beams.lengths[b].tolist()
    finished = beams.finished[b].tolist()
    for k, (tokens, probs) in enumerate(zip(beams.tokens[b].tolist(), beams.token_probs[b].tolist())):
        if scores[k] == NEG_INF:
            continue
        if constraint is not None and not (finished[k] or constraint.is_word(int(beams.nodes[b, k]))):
            continue  # ran out of steps inside a word
        n = tokens.index(EOS_INDEX) if EOS_INDEX in tokens else len(tokens)
        text = constraint.word(int(beams.nodes[b, k])) if constraint else "".join(character[i] for i in tokens[:n])
        hyps.append(Hypothesis(text, scores[k] / max(lengths[k], 1) ** length_penalty, scores[k], probs[:n]))
    hyps.sort(key=lambda h: h.score, reverse=True)
    if not hyps and constraint is not None:
        tokens = beams.tokens[b, 0].tolist()
        n = tokens.index(EOS_INDEX) if EOS_INDEX in tokens else len(tokens)
        hyps = [_no_word_fallback("".join(character[i] for i in tokens[:n] if i > EOS_INDEX), lexicon)]
    return hyps[:topk]


# ----------------------------------------------------------------------------------------- entry

def decode(model, image: torch.Tensor, config, options: DecodeOptions = DecodeOptions(),
           amp_dtype: torch.dtype | None = None) -> BatchDecoding:
    """Read a batch: image [B, C, H, W] on the model's device → one ``Decoded`` per image.

    ``config`` is the model's ``ModelConfig``; the default options read greedily, as the reference
    does. ``logits`` is the greedy forward's output, for a loss (``None`` after an attention beam
    search, which runs the decoder itself). The one way every script reads a batch.
    """
    check_supported(options, config)
    if options.decoder == "beam" and head(config.Prediction).beam == "decoder":
        if not hasattr(model, "encode"):  # an ONNX Runtime model: a fixed greedy loop, no decoder step to search
            raise UsageError("--decoder beam with an attention model runs the decoder one step at a time, which an "
                             "exported .onnx (a fixed greedy loop) cannot do: use the PyTorch checkpoint for beam "
                             "search, or --decoder greedy with the .onnx (CTC models beam-search .onnx outputs)")
        with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            contextual = model.encode(image)  # [B, T, C]
        return BatchDecoding(None, decode_attention(model.Prediction, contextual.float(), config, options))
    logits = forward_logits(model, image, config, amp_dtype)  # [B, T or steps, C]
    return BatchDecoding(logits, decode_logits(logits, config, options))


def decode_logits(logits: torch.Tensor, config, options: DecodeOptions) -> list[Decoded]:
    """Decode the model's output logits [B, T or steps, C]: greedy (either head) or the CTC beam."""
    character, lexicon = _classes(config), options.lexicon
    check_supported(options, config)
    if options.decoder == "greedy":
        results = greedy(logits, config)
    elif head(config.Prediction).beam == "logits":
        nbest = ctc_beam_search(logits, character, options.beam_size, options.topk,
                                _constraint(options, config, character), options.prune_chars, lexicon)
        results = [_from_nbest(hyps) for hyps in nbest]
    else:
        raise ValueError("the attention beam search runs the decoder: call decode() or decode_attention()")
    return _maybe_snap(results, options)


def decode_attention(attention, contextual: torch.Tensor, config, options: DecodeOptions) -> list[Decoded]:
    """Attention beam search from the encoder's contextual features [B, T, C]."""
    character = _classes(config)
    nbest = attention_beam_search(attention, contextual, character, options.beam_size, config.batch_max_length + 1,
                                  options.topk, _constraint(options, config, character), options.length_penalty,
                                  options.lexicon)
    return _maybe_snap([_from_nbest(hyps) for hyps in nbest], options)


def check_supported(options: DecodeOptions, config) -> None:
    """A beam search where the head has one (its ``beam``: PARSeq reads with its own decoder, greedy)."""
    prediction = head(config.Prediction)
    if options.decoder == "beam" and not prediction.beam:
        raise UsageError(f"--decoder beam is not supported for --Prediction {prediction.name}: use --decoder greedy"
                         + (f" ({prediction.beam_hint})" if prediction.beam_hint else ""))


def _classes(config) -> list[str]:
    return head(config.Prediction).converter(config.character).character


def _constraint(options: DecodeOptions, config, character: list[str]) -> Constraint | None:
    if options.lexicon is None or options.lexicon_mode != "constrain":
        return None
    return Constraint(options.lexicon, character, head(config.Prediction).converter.num_special)


def _maybe_snap(results: list[Decoded], options: DecodeOptions) -> list[Decoded]:
    if options.lexicon is None or options.lexicon_mode != "snap":
        return results
    return [snap(r, options.lexicon) for r in results]


def add_decoding_arguments(parser, readout: bool = False) -> None:
    """``--decoder --beam_size --lexicon --lexicon_mode --lexicon_ignore_case`` (test.py and demo.py);
    with ``readout`` also ``--topk`` and ``--char_conf`` (demo.py prints them)."""
    g = parser.add_argument_group("decoding")
    g.add_argument("--decoder", choices=DECODERS, default="greedy",
                   help="greedy (default, the reference's) or beam (CTC prefix / attention beam search)")
    g.add_argument("--beam_size", type=int, default=5, help=f"hypotheses kept by --decoder beam (1 to {MAX_BEAM_SIZE})")
    g.add_argument("--lexicon", default=None,
                   help="word list (UTF-8, one word per line): readings are restricted to it (--lexicon_mode)")
    g.add_argument("--lexicon_mode", choices=LEXICON_MODES, default="constrain",
                   help="constrain: the beam follows the list (needs --decoder beam); snap: the reading is "
                        "replaced by the nearest list word by edit distance")
    g.add_argument("--lexicon_ignore_case", action="store_true",
                   help="match the list case-insensitively (always so for a lower-case model, and with "
                        "test.py --case_insensitive)")
    if readout:
        g.add_argument("--topk", type=int, default=1, help="print the K best readings with scores (--decoder beam)")
        g.add_argument("--char_conf", action="store_true", help="print each character's confidence")


def check_decoding_flags(opt, topk: int = 1) -> DecodeOptions:
    """The flags of ``add_decoding_arguments`` checked before anything is loaded (the word list is added by
    ``options_from_args``); ``topk`` is demo.py's ``--topk`` (the readout flags)."""
    return DecodeOptions(opt.decoder, opt.beam_size, topk, lexicon_mode=opt.lexicon_mode)


def options_from_args(opt, config, log=print, topk: int = 1, case_insensitive: bool = False) -> DecodeOptions:
    """The decoding flags checked and the lexicon loaded for ``config``'s model (dropped words logged);
    ``case_insensitive`` is test.py's scoring flag, which matches the word list ignoring case too."""
    options = check_decoding_flags(opt, topk)
    check_supported(options, config)
    if opt.lexicon:
        ignore_case = not config.sensitive or case_insensitive or opt.lexicon_ignore_case
        lexicon = load_lexicon(opt.lexicon, config.character, ignore_case)
        log(f"lexicon {opt.lexicon}: {len(lexicon.words)} words, matched "
            f"{'ignoring' if ignore_case else 'keeping'} case")
        if lexicon.dropped:
            log(lexicon.describe_dropped())
        options = dataclasses.replace(options, lexicon=lexicon)
    return options


def _from_nbest(hyps: list[Hypothesis]) -> Decoded:
    best = hyps[0]
    return Decoded(best.text, math.exp(best.log_prob), best.char_confidences, hyps)


def snap(result: Decoded, lexicon: Lexicon) -> Decoded:
    """Each reading replaced by its nearest list word (edit distance); duplicates merged, order kept."""
    nbest, seen = [], set()
    for h in result.nbest:
        word, _ = lexicon.nearest(h.text)
        if word in seen:
            continue
        seen.add(word)
        same = lexicon.fold(word) == lexicon.fold(h.text)
        nbest.append(Hypothesis(word, h.score, h.log_prob, h.char_confidences if same else []))
    best = nbest[0]
    changed = lexicon.fold(best.text) != lexicon.fold(result.text)
    return Decoded(best.text, result.confidence, best.char_confidences, nbest,
                   snapped_from=result.text if changed else None)


def forward_logits(model, image: torch.Tensor, config, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The model's inference forward → float logits [B, T or steps, num_class]."""
    text_for_pred = torch.zeros(image.size(0), config.batch_max_length + 1, dtype=torch.long, device=image.device)
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model(image, text_for_pred, is_train=False)
    return preds.float()
