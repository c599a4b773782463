"""The caption vocabulary: tokenizing, specials, padding, truncation, unknowns, saving."""

import json

import pytest
import torch

from jestkit.data.tokenizer import PAD, SPECIALS, UNK, Vocab, tokenize

CAPTIONS = [
    "a dark, wide T-shirt",
    "photo of an ankle boot, sparse and top-heavy",
    "IMG_0423.jpg",
    "the t-shirt is dark",
]


def test_tokenize_lowercases_splits_punctuation_and_digits():
    assert tokenize("A Dark, wide T-shirt!") == ["a", "dark", ",", "wide", "t-shirt", "!"]
    assert tokenize("IMG_0423.jpg") == ["img", "_", "0", "4", "2", "3", ".", "jpg"]
    assert tokenize("  close-up:\tbag ") == ["close-up", ":", "bag"]
    assert tokenize("") == []


def test_specials_come_first_and_vocab_is_order_independent():
    vocab = Vocab.build(CAPTIONS)
    assert vocab.words[PAD] == "<pad>" and vocab.words[UNK] == "<unk>"
    assert tuple(vocab.words[:2]) == SPECIALS
    assert len(vocab) == len(set(vocab.words)) == len(vocab.words)
    assert Vocab.build(CAPTIONS[::-1]).words == vocab.words
    # most frequent first: "t-shirt" appears twice, "jpg" once
    assert vocab.words.index("t-shirt") < vocab.words.index("jpg")


def test_encode_pads_truncates_and_maps_unknowns():
    vocab = Vocab.build(CAPTIONS)
    ids = vocab.encode(["a dark t-shirt", "a zebra", ""], max_len=5)
    assert ids.dtype == torch.long and ids.shape == (3, 5)
    assert ids[0, :3].tolist() == [vocab.words.index(w) for w in ("a", "dark", "t-shirt")]
    assert ids[0, 3:].tolist() == [PAD, PAD]
    assert ids[1, :2].tolist() == [vocab.words.index("a"), UNK]
    assert ids[2].tolist() == [PAD] * 5
    long = vocab.encode(["a dark , wide t-shirt is dark"], max_len=3)
    assert long.shape == (1, 3) and (long != PAD).all()
    assert vocab.decode(long) == ["a dark ,"]
    assert vocab.encode([], max_len=4).shape == (0, 4)
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode(["a"], max_len=0)
    with pytest.raises(TypeError):
        vocab.encode("a dark t-shirt")


def test_round_trip_and_multiword_class_names():
    vocab = Vocab.build(CAPTIONS)
    for text in CAPTIONS:
        assert vocab.decode(vocab.encode([text], max_len=32))[0] == " ".join(tokenize(text))
    # class names tokenize the same inside a caption and inside a prompt
    prompt = vocab.token_ids("a photo of an ankle boot")[-2:]
    caption = vocab.token_ids(CAPTIONS[1])
    assert UNK not in prompt and caption[3:5] == prompt
    assert vocab.token_ids("T-Shirt") == [vocab.words.index("t-shirt")]
    assert "shirt" not in vocab  # "t-shirt" stays one word, distinct from "shirt"


def test_state_dict_is_json_and_fingerprint_tracks_words():
    vocab = Vocab.build(CAPTIONS)
    state = json.loads(json.dumps(vocab.state_dict()))
    again = Vocab.from_state_dict(state)
    assert again.words == vocab.words
    assert torch.equal(again.encode(CAPTIONS), vocab.encode(CAPTIONS))
    assert again.fingerprint() == vocab.fingerprint()
    assert len(vocab.fingerprint()) == 64
    assert Vocab.build(CAPTIONS[:2]).fingerprint() != vocab.fingerprint()
    swapped = [*vocab.words[:2], vocab.words[3], vocab.words[2], *vocab.words[4:]]
    assert Vocab(swapped).fingerprint() != vocab.fingerprint()


def test_min_count_max_size_and_bad_word_lists():
    vocab = Vocab.build(CAPTIONS, min_count=2)
    assert "jpg" not in vocab and "a" not in vocab
    assert "dark" in vocab and "t-shirt" in vocab
    assert len(Vocab.build(CAPTIONS, max_size=5)) == 5
    with pytest.raises(ValueError, match="<pad>"):
        Vocab(["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        Vocab([*SPECIALS, "a", "a"])
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build(CAPTIONS, min_count=0)
