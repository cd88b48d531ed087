"""decoding.py and lexicon.py: hand-computed CTC prefix beams, beam 1 = greedy, word lists, batching."""
import itertools
import math
import os
import random

import pytest
import torch

from decoding import (Constraint, DecodeOptions, attention_beam_search, ctc_beam_search, decode, greedy_attention,
                      greedy_ctc)
from lexicon import Lexicon, build_lexicon, load_lexicon
from model import ModelConfig, build_model
from modules.prediction import Attention
from utils import edit_distance, make_converter

CTC_AB = ["[CTCblank]", "a", "b"]


def log_probs(rows):
    """Per-frame probabilities → logits [1, T, C] whose softmax gives them back."""
    return torch.tensor(rows, dtype=torch.float64).log().unsqueeze(0)


def texts_and_probs(hyps):
    return [(h.text, round(math.exp(h.score), 6)) for h in hyps]


# ------------------------------------------------------------------------------ CTC, by hand

def test_ctc_beam_two_characters_sums_every_path():
    # "a" = aa .10 + a- .25 + -a .04; "b" = bb .09 + b- .15 + -b .06; "ab" = .15; "" = .10; "ba" = .06
    logits = log_probs([[0.2, 0.5, 0.3], [0.5, 0.2, 0.3]])
    hyps = ctc_beam_search(logits, CTC_AB, beam_size=5, topk=5)[0]
    assert texts_and_probs(hyps) == [("a", 0.39), ("b", 0.30), ("ab", 0.15), ("", 0.10), ("ba", 0.06)]


def test_ctc_beam_repeated_character_needs_a_blank_between():
    # Greedy reads a - a = "aa" (.216), but "a" collects six paths: .144+.096+.144+.096+.144+.064 = .688.
    logits = log_probs([[0.4, 0.6], [0.6, 0.4], [0.4, 0.6]])
    assert greedy_ctc(logits, CTC_AB[:2])[0].text == "aa"
    hyps = ctc_beam_search(logits, CTC_AB[:2], beam_size=3, topk=3)[0]
    assert texts_and_probs(hyps) == [("a", 0.688), ("aa", 0.216), ("", 0.096)]


def test_ctc_beam_empty_prediction():
    logits = log_probs([[0.9, 0.1], [0.9, 0.1]])  # "" = .81, "a" = .01 + .09 + .09
    hyps = ctc_beam_search(logits, CTC_AB[:2], beam_size=2, topk=2)[0]
    assert texts_and_probs(hyps) == [("", 0.81), ("a", 0.19)]
    assert hyps[0].char_confidences == []


def test_ctc_char_confidence_is_the_max_over_merged_frames():
    logits = log_probs([[0.1, 0.6, 0.3], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.1, 0.7]])  # a a - b
    greedy = greedy_ctc(logits, CTC_AB)[0]
    assert greedy.text == "ab"
    assert greedy.char_confidences == pytest.approx([0.8, 0.7])
    best = ctc_beam_search(logits, CTC_AB, beam_size=4)[0][0]
    assert best.text == "ab" and best.char_confidences == pytest.approx([0.8, 0.7])


def brute_force_ctc(probs, character):
    """Every path of T frames, collapsed: {text: probability}."""
    totals = {}
    for path in itertools.product(range(len(character)), repeat=len(probs)):
        text, previous = "", 0
        for c in path:
            if c and c != previous:
                text += character[c]
            previous = c
        totals[text] = totals.get(text, 0.0) + math.prod(probs[t][c] for t, c in enumerate(path))
    return totals


@pytest.mark.parametrize("seed", range(5))
def test_wide_ctc_beam_equals_the_sum_over_all_paths(seed):
    torch.manual_seed(seed)
    probs = torch.softmax(torch.randn(4, 3, dtype=torch.float64) * 2, dim=1)  # T=4, blank + a + b
    exact = brute_force_ctc(probs.tolist(), CTC_AB)
    hyps = ctc_beam_search(probs.log().unsqueeze(0), CTC_AB, beam_size=100, topk=100)[0]
    assert {h.text: math.exp(h.score) for h in hyps} == pytest.approx(exact)
    assert [h.text for h in hyps] == sorted(exact, key=exact.get, reverse=True)


# ---------------------------------------------------------------------------- beam 1 = greedy

def peaked_ctc_logits(generator, batch, frames, num_class):
    """A confident model's output: one class per frame well ahead (CTC beam 1 = greedy only then:
    a prefix beam sums paths, the greedy path does not)."""
    logits = torch.randn(batch, frames, num_class, generator=generator)
    winners = torch.randint(0, num_class, (batch, frames), generator=generator)
    winners[:, ::2] = 0  # blanks between characters, as trained models emit
    return logits.scatter_add(2, winners[..., None], torch.full((batch, frames, 1), 8.0))


def test_ctc_beam_width_one_equals_greedy_on_confident_frames():
    generator = torch.Generator().manual_seed(0)
    character = ["[CTCblank]", *"abcdefghij"]
    logits = peaked_ctc_logits(generator, 32, 26, len(character))
    greedy = greedy_ctc(logits, character)
    beam = ctc_beam_search(logits, character, beam_size=1)
    assert [b[0].text for b in beam] == [g.text for g in greedy]
    assert any(len(g.text) > 3 for g in greedy)  # not a degenerate all-blank case
    for b, g in zip(beam, greedy):
        assert b[0].char_confidences == pytest.approx(g.char_confidences)


def small_model(prediction, seed=0, **sizes):
    torch.manual_seed(seed)
    config = ModelConfig("None", "VGG", "BiLSTM", prediction, output_channel=32, hidden_size=32, **sizes)
    return build_model(config).eval(), config


ATTN_CHARS = ["[GO]", "[s]", *"abcdefghij"]


def lively_attention(seed, batch=8):
    """An untrained Attention decoder made to read varied strings of varied lengths (a freshly
    initialised one reads the same string for every input): a stronger LSTM and classifier, and
    random contextual features [B, 10, 16] in place of an encoder's."""
    torch.manual_seed(seed)
    attention = Attention(16, 32, len(ATTN_CHARS)).eval()
    with torch.no_grad():
        for p in attention.attention_cell.rnn.parameters():
            p.mul_(4)
        attention.generator.weight.mul_(4)
        attention.generator.bias[0] = -20  # [GO] is never read
    contextual = torch.randn(batch, 10, 16, generator=torch.Generator().manual_seed(seed)) * 2
    return attention, contextual


@pytest.mark.parametrize("seed", range(3))
def test_attention_beam_width_one_equals_greedy(seed):
    attention, contextual = lively_attention(seed)
    with torch.inference_mode():
        greedy = greedy_attention(attention(contextual, None, is_train=False, batch_max_length=8), ATTN_CHARS)
        beam = attention_beam_search(attention, contextual, ATTN_CHARS, beam_size=1, max_steps=9)
    assert [b[0].text for b in beam] == [g.text for g in greedy]
    assert len({g.text for g in greedy}) > 3
    for b, g in zip(beam, greedy):
        assert b[0].char_confidences == pytest.approx(g.char_confidences, rel=1e-4)


def test_attention_beam_width_one_equals_greedy_through_the_model():
    model, config = small_model("Attn", 0, batch_max_length=8)
    image = torch.rand(4, 1, 32, 100, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        strings = decode(model, image, config).texts
        beam = decode(model, image, config, DecodeOptions("beam", beam_size=1)).results
    assert [r.text for r in beam] == strings


def test_greedy_ctc_equals_the_converters_collapse():
    """greedy_ctc (per-character confidences) and CTCLabelConverter.decode (vectorised) read alike."""
    generator = torch.Generator().manual_seed(1)
    converter = make_converter("CTC", "abcdefghij")
    logits = peaked_ctc_logits(generator, 16, 20, 11) + torch.randn(16, 20, 11, generator=generator) * 3
    texts = converter.decode(logits.argmax(2), [20] * 16)
    assert [r.text for r in greedy_ctc(logits, converter.character)] == texts
    assert len(set(texts)) > 8


@pytest.mark.parametrize("prediction", ["CTC", "Attn"])
def test_decode_greedy_reads_as_the_reference(prediction):
    """Greedy decode = the reference's argmax read through the converter (Attn: cut at the first [s]), with the
    reference's confidence: the product of the max probabilities (Attn: of the steps before [s], at least one)."""
    model, config = small_model(prediction)
    image = torch.rand(5, 1, 32, 100, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = decode(model, image, config)
        logits = model(image, torch.zeros(5, config.batch_max_length + 1, dtype=torch.long), is_train=False)
    assert torch.equal(out.logits, logits.float())
    max_probs, index = logits.float().softmax(2).max(2)
    converter = make_converter(prediction, config.character)
    texts = converter.decode(index, [index.size(1)] * 5)
    if prediction == "CTC":
        confidences = max_probs.prod(1).tolist()
    else:
        ends = [t.find("[s]") if "[s]" in t else len(t) for t in texts]
        eos = [max(int((row == 1).nonzero()[0]), 1) if (row == 1).any() else len(row) for row in index]
        confidences = [float(p[:e].prod()) for p, e in zip(max_probs, eos)]
        texts = [t[:e] for t, e in zip(texts, ends)]
    assert out.texts == texts
    assert out.confidences == pytest.approx(confidences, rel=1e-5)
    assert all(len(r.char_confidences) == len(r.text) for r in out.results)


# ------------------------------------------------------------------------- attention batching

@pytest.mark.parametrize("with_lexicon", [False, True])
def test_attention_beam_batched_equals_one_image_at_a_time(with_lexicon):
    attention, contextual = lively_attention(3)
    lexicon = build_lexicon(["bib", "hhf", "gig", "ij", "cafe", "jade", "a"], "abcdefghij", False)
    constraint = Constraint(lexicon, ATTN_CHARS, 2) if with_lexicon else None
    with torch.inference_mode():
        batched = attention_beam_search(attention, contextual, ATTN_CHARS, 4, 9, topk=4,
                                        constraint=constraint, lexicon=lexicon)
        single = [attention_beam_search(attention, contextual[i:i + 1], ATTN_CHARS, 4, 9, topk=4,
                                        constraint=constraint, lexicon=lexicon)[0] for i in range(len(contextual))]
    for b, s in zip(batched, single):
        assert [h.text for h in b] == [h.text for h in s]
        assert [h.score for h in b] == pytest.approx([h.score for h in s], abs=1e-4)
    assert len({h[0].text for h in batched}) > 1


def test_attention_beam_nbest_is_sorted_and_distinct():
    attention, contextual = lively_attention(1)
    with torch.inference_mode():
        nbest = attention_beam_search(attention, contextual, ATTN_CHARS, beam_size=5, max_steps=9, topk=5)
    for hyps in nbest:
        scores = [h.score for h in hyps]
        assert len(hyps) == 5 and scores == sorted(scores, reverse=True)
        assert len({h.text for h in hyps}) == 5
        assert all(len(h.char_confidences) == len(h.text) for h in hyps)
        assert all(0 < p <= 1 for h in hyps for p in h.char_confidences)


def teacher_forced_log_prob(attention, contextual_row, tokens):
    """log P(tokens) by the decoder fed the tokens themselves (training mode): [GO] y1 .. y(n-1) → y1 .. yn."""
    text = torch.tensor([[0, *tokens]])
    logits = attention(contextual_row[None], text, is_train=True, batch_max_length=len(tokens) - 1)  # [1, n, C]
    return logits.log_softmax(2)[0, torch.arange(len(tokens)), torch.tensor(tokens)].sum().item()


def tokens_of(text, ended=True):
    return [ATTN_CHARS.index(c) for c in text] + ([1] if ended else [])


def test_attention_beam_scores_match_teacher_forcing():
    """Each hypothesis' log-probability is what the decoder gives its tokens: checks that the beams'
    LSTM states were carried along with the beams they belong to."""
    attention, contextual = lively_attention(2)
    with torch.inference_mode():
        nbest = attention_beam_search(attention, contextual, ATTN_CHARS, beam_size=4, max_steps=9, topk=4)
        for row, hyps in zip(contextual, nbest):
            for h in hyps:
                tokens = tokens_of(h.text, ended=len(h.text) < 9)
                assert h.log_prob == pytest.approx(teacher_forced_log_prob(attention, row, tokens), abs=1e-3)


def test_exhaustive_attention_beam_finds_the_most_probable_reading():
    attention, contextual = lively_attention(4, batch=3)
    C = len(ATTN_CHARS)
    with torch.inference_mode():
        found = attention_beam_search(attention, contextual, ATTN_CHARS, beam_size=C * C, max_steps=2,
                                      length_penalty=0.0)
        for row, hyps in zip(contextual, found):
            candidates = [[1]] + [[c, 1] for c in range(C) if c != 1] + [[a, b] for a in range(C) if a != 1
                                                                       for b in range(C) if b != 1]
            best = max(teacher_forced_log_prob(attention, row, t) for t in candidates)
            assert hyps[0].log_prob == pytest.approx(best, abs=1e-4)


# ------------------------------------------------------------------------------ word lists

def random_words(rng, count, alphabet="abcdef", max_len=5):
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, max_len))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(10))
def test_constrained_ctc_reads_only_list_words(seed):
    rng = random.Random(seed)
    character = ["[CTCblank]", *"abcdefgh"]
    lexicon = build_lexicon(random_words(rng, rng.randint(1, 30)), "abcdefgh", False)
    logits = torch.randn(4, rng.randint(3, 12), len(character), generator=torch.Generator().manual_seed(seed)) * 3
    constraint = Constraint(lexicon, character, 1)
    for hyps in ctc_beam_search(logits, character, beam_size=4, topk=4, constraint=constraint, lexicon=lexicon):
        assert hyps and all(h.text in lexicon.words for h in hyps)


@pytest.mark.parametrize("seed", range(6))
def test_constrained_attention_reads_only_list_words(seed):
    rng = random.Random(seed)
    attention, contextual = lively_attention(seed)
    lexicon = build_lexicon(random_words(rng, rng.randint(1, 30), "abcdefghij", 9), "abcdefghij", False)
    constraint = Constraint(lexicon, ATTN_CHARS, 2)
    with torch.inference_mode():
        nbest = attention_beam_search(attention, contextual, ATTN_CHARS, 3, 9, topk=3, constraint=constraint,
                                      lexicon=lexicon)
    for hyps in nbest:
        assert hyps and all(h.text in lexicon.words for h in hyps)


def test_constrained_attention_through_the_model():
    model, config = small_model("Attn", 0, batch_max_length=8)
    lexicon = build_lexicon(["street", "road", "a1"], config.character, True)
    image = torch.rand(3, 1, 32, 100, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = decode(model, image, config, DecodeOptions("beam", beam_size=3, topk=3, lexicon=lexicon))
    assert out.logits is None
    for r in out.results:
        assert r.nbest and all(h.text in lexicon.words for h in r.nbest)


def test_constraint_ignoring_case_adds_up_both_cases():
    # The model reads "Ab" (A .6, then b .6); the list says "ab". Ignoring case, reading "ab" has
    # probability (.1+.6) * (.6+.1) = .49; keeping case, only a .1 * b .6 = .06. Either way the
    # reading is written as the list writes it.
    character = ["[CTCblank]", "a", "b", "A", "B"]
    logits = log_probs([[0.1, 0.1, 0.1, 0.6, 0.1], [0.1, 0.1, 0.6, 0.1, 0.1]])
    for ignore_case, probability in [(True, 0.49), (False, 0.06)]:
        lexicon = build_lexicon(["ab"], "abAB", ignore_case=ignore_case)
        constraint = Constraint(lexicon, character, 1)
        hyps = ctc_beam_search(logits, character, 3, constraint=constraint, lexicon=lexicon)[0]
        assert [h.text for h in hyps] == ["ab"]
        assert math.exp(hyps[0].score) == pytest.approx(probability)


def test_snap_replaces_the_reading_with_the_nearest_word():
    model, config = small_model("CTC")
    lexicon = build_lexicon(["street", "avenue", "road"], config.character, True)
    image = torch.rand(3, 1, 32, 100, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        plain = decode(model, image, config).results
        snapped = decode(model, image, config, DecodeOptions(lexicon=lexicon, lexicon_mode="snap")).results
    for p, s in zip(plain, snapped):
        expected = min(lexicon.words, key=lambda w: (edit_distance(p.text, w), lexicon.words.index(w)))
        assert edit_distance(p.text, s.text) == edit_distance(p.text, expected)
        assert s.snapped_from == (p.text if s.text != p.text else None)


@pytest.mark.parametrize("seed", range(5))
def test_trie_nearest_matches_brute_force(seed):
    rng = random.Random(seed)
    words = list(dict.fromkeys(random_words(rng, 200, "abcd", 7)))
    lexicon = build_lexicon(words, "abcd", False)
    for query in random_words(rng, 20, "abcde", 8) + [""]:
        word, distance = lexicon.nearest(query)
        assert distance == min(edit_distance(query, w) for w in words)
        assert edit_distance(query, word) == distance


def test_lexicon_membership_and_dedup():
    lexicon = build_lexicon(["Door", "door", "DOOR", "do"], "abcdefghijklmnopqrstuvwxyz", ignore_case=True)
    assert lexicon.words == ["Door", "do"]
    assert "dOoR" in lexicon and "doo" not in lexicon and "d" not in lexicon


# ------------------------------------------------------------------------------ bad input

def test_missing_lexicon_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--lexicon .*no such file"):
        load_lexicon(tmp_path / "nope.txt", "abc", True)


def test_empty_lexicon_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no words"):
        load_lexicon(path, "abc", True)


def test_out_of_set_words_are_reported_and_dropped(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("cab\nca-b\nbad\ncafé\n", encoding="utf-8")
    lexicon = load_lexicon(path, "abcd", ignore_case=True)
    assert lexicon.words == ["cab", "bad"]
    assert lexicon.dropped == ["ca-b", "café"]
    message = lexicon.describe_dropped()
    assert "dropped 2" in message and "'ca-b'" in message and "kept 2" in message


def test_lexicon_with_no_writable_word_is_an_error(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("xyz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="none of its 1 word"):
        load_lexicon(path, "abc", True)


def test_lexicon_is_cached_per_file_and_reloaded_when_it_changes(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("ab\n", encoding="utf-8")
    first = load_lexicon(path, "abc", True)
    assert load_lexicon(path, "abc", True) is first
    path.write_text("ab\nabc\n", encoding="utf-8")
    os.utime(path, ns=(first_ns := path.stat().st_mtime_ns + 10**9, first_ns))
    again = load_lexicon(path, "abc", True)
    assert again is not first and again.words == ["ab", "abc"]


@pytest.mark.parametrize("options, flag", [
    (dict(decoder="beam", beam_size=0), "--beam_size 0"),
    (dict(decoder="beam", beam_size=-3), "--beam_size -3"),
    (dict(decoder="beam", beam_size=2, topk=3), "--topk 3"),
    (dict(decoder="viterbi"), "--decoder 'viterbi'"),
    (dict(decoder="greedy", topk=2), "--topk 2"),
    (dict(decoder="beam", lexicon_mode="fuzzy"), "--lexicon_mode 'fuzzy'"),
])
def test_bad_options_name_the_flag(options, flag):
    with pytest.raises(ValueError, match=flag):
        DecodeOptions(**options)


def test_constrain_needs_beam():
    lexicon = build_lexicon(["ab"], "ab", True)
    with pytest.raises(ValueError, match="--lexicon_mode constrain needs --decoder beam"):
        DecodeOptions("greedy", lexicon=lexicon, lexicon_mode="constrain")
    assert isinstance(DecodeOptions("greedy", lexicon=lexicon, lexicon_mode="snap").lexicon, Lexicon)


def test_case_variants_are_one_hypothesis():
    """Ignoring case, "ab", "Ab", "aB", "AB" are one reading of the word: one hypothesis whose
    probability is their sum, (a|A .7) * (b|B .75) = .525, not four hypotheses filling the beam."""
    character = ["[CTCblank]", "a", "b", "A", "B"]
    lexicon = build_lexicon(["ab", "ba"], "abAB", ignore_case=True)
    logits = log_probs([[0.05, 0.4, 0.1, 0.3, 0.15], [0.05, 0.1, 0.35, 0.1, 0.4]])
    hyps = ctc_beam_search(logits, character, 4, topk=4, constraint=Constraint(lexicon, character, 1),
                           lexicon=lexicon)[0]
    assert texts_and_probs(hyps) == [("ab", 0.525), ("ba", 0.05)]  # b|B .25 * a|A .2


def test_constrained_attention_with_case_groups_reads_list_spellings():
    attention, contextual = lively_attention(5)
    character = ["[GO]", "[s]", *"abcdeABCDE"]
    lexicon = build_lexicon(["Bad", "cab", "DEAD", "ace", "bee"], "abcdeABCDE", ignore_case=True)
    constraint = Constraint(lexicon, character, 2)
    assert constraint.folds
    with torch.inference_mode():
        nbest = attention_beam_search(attention, contextual, character, 3, 9, topk=3, constraint=constraint,
                                      lexicon=lexicon)
    for hyps in nbest:
        texts = [h.text for h in hyps]
        assert hyps and set(texts) <= set(lexicon.words) and len(set(texts)) == len(texts)
