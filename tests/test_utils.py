"""Converters and character sets: the reference's class orders and examples (spec section 2)."""
import pytest
import torch

from utils import (DEFAULT_CHARACTER, SENSITIVE_CHARACTER, AttnLabelConverter, CTCLabelConverter,
                   load_character, resolve_character)

EASYOCR_G2 = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_reference_examples():
    ctc = CTCLabelConverter(DEFAULT_CHARACTER)
    attn = AttnLabelConverter(DEFAULT_CHARACTER)
    text, length = attn.encode(["ab", "0"], batch_max_length=5)
    assert text.tolist() == [[0, 12, 13, 1, 0, 0, 0], [0, 2, 1, 0, 0, 0, 0]]
    assert length.tolist() == [3, 2]
    text, length = ctc.encode(["ab", "0"], batch_max_length=5)
    assert text.tolist() == [[11, 12, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert length.tolist() == [2, 1]
    assert ctc.decode(torch.tensor([[0, 11, 11, 0, 11, 12, 12, 0]]), [8]) == ["aab"]
    assert attn.decode(torch.tensor([[12, 13, 1, 0, 0]]), [5]) == ["ab[s][GO][GO]"]
    assert len(ctc.character) == 37 and len(attn.character) == 38
    assert len(CTCLabelConverter(SENSITIVE_CHARACTER).character) == 95


@pytest.mark.parametrize("charset", [DEFAULT_CHARACTER, SENSITIVE_CHARACTER, EASYOCR_G2])
def test_round_trip_every_character(charset):
    ctc, attn = CTCLabelConverter(charset), AttnLabelConverter(charset)
    words = [charset[i:i + 7] for i in range(0, len(charset), 7)]
    text, length = ctc.encode(words, 25)
    # Insert blanks between frames so repeated characters survive the collapse.
    frames = torch.zeros(len(words), 50, dtype=torch.long)
    frames[:, ::2] = text
    assert ctc.decode(frames, [50] * len(words)) == words
    text, _ = attn.encode(words, 25)
    assert [s[:s.find("[s]")] for s in attn.decode(text[:, 1:])] == words


def test_too_long_and_unknown_labels_are_clear_errors():
    ctc = CTCLabelConverter(DEFAULT_CHARACTER)
    with pytest.raises(ValueError, match="batch_max_length"):
        ctc.encode(["a" * 30], 25)
    with pytest.raises(ValueError, match="not in the character set"):
        AttnLabelConverter(DEFAULT_CHARACTER).encode(["A"], 25)


def test_character_from_file_one_per_line_with_space(tmp_path):
    f = tmp_path / "chars.txt"
    f.write_text("a\n \n€\n\\\n]\n", encoding="utf-8")
    assert load_character(str(f)) == "a €\\]"


def test_character_from_file_single_line(tmp_path):
    f = tmp_path / "chars.txt"
    f.write_text(EASYOCR_G2 + "\n", encoding="utf-8")
    assert load_character(str(f)) == EASYOCR_G2


def test_duplicate_and_empty_character_sets_rejected():
    with pytest.raises(ValueError, match="repeats"):
        load_character("abca")
    with pytest.raises(ValueError, match="empty"):
        load_character("")


def test_sensitive_keeps_reference_meaning():
    assert resolve_character(DEFAULT_CHARACTER, sensitive=True) == SENSITIVE_CHARACTER
    assert resolve_character(DEFAULT_CHARACTER, sensitive=False) == DEFAULT_CHARACTER
    assert len(SENSITIVE_CHARACTER) == 94
