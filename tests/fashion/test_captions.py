"""The image-caption pool on a real Fashion-MNIST slice: attributes, noise, ids, captions."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from jestkit.data.tokenizer import UNK, Vocab, tokenize
from jestkit.fashion.captions import (
    ATTRIBUTE_WORDS,
    ATTRIBUTES,
    CLEAN,
    DUPLICATE,
    DUPLICATE_ID_OFFSET,
    JUNK,
    MISMATCHED,
    NOISE_TYPES,
    TEST_ID_OFFSET,
    VAGUE_KIND,
    AttributeBuckets,
    CaptionSet,
    PoolConfig,
    build_caption_data,
    class_prompts,
    measure_attributes,
    noise_summary,
)
from jestkit.fashion.fashion_mnist import CLASSES, load_fashion_mnist

N_TRAIN, N_TEST = 2000, 300
CONFIG = PoolConfig(curated_size=300)


@pytest.fixture(scope="module")
def raw():
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    return train_x[:N_TRAIN], train_y[:N_TRAIN], test_x[:N_TEST], test_y[:N_TEST]


@pytest.fixture(scope="module")
def data(raw):
    return build_caption_data(*raw, CONFIG)


def mentioned_classes(caption: str) -> set[int]:
    """Classes whose name appears as a run of whole tokens in the caption."""
    tokens = tokenize(caption)
    found = set()
    for c, name in enumerate(CLASSES):
        words = tokenize(name)
        if any(tokens[i : i + len(words)] == words for i in range(len(tokens))):
            found.add(c)
    return found


def image(fill):
    x = torch.zeros(1, 28, 28, dtype=torch.uint8)
    fill(x[0])
    return x


def test_attributes_of_hand_made_images():
    full = image(lambda x: x.fill_(255))
    left = image(lambda x: x[:, :14].fill_(255))
    top_block = image(lambda x: x[:7, 10:18].fill_(128))
    faint = image(lambda x: x.fill_(20))  # below the ink threshold everywhere
    a = measure_attributes(torch.cat([full, left, top_block, faint]))
    assert set(a) == set(ATTRIBUTES)
    expect = {
        "coverage": [1.0, 0.5, 56 / 784, 0.0],
        "brightness": [1.0, 1.0, 128 / 255, 0.0],
        "width": [28, 14, 8, 0],
        "height": [28, 28, 7, 0],
        "symmetry": [1.0, 0.0, 1.0, 1.0],
        "top_heaviness": [0.5, 0.5, 1.0, 0.5],
    }
    for name, values in expect.items():
        assert a[name].tolist() == pytest.approx(values, abs=1e-6), name
    blank = measure_attributes(torch.zeros(1, 28, 28, dtype=torch.uint8))
    assert [blank[n].item() for n in ATTRIBUTES] == [0, 0, 0, 0, 1, 0.5]
    with pytest.raises(ValueError, match="uint8"):
        measure_attributes(full.float())


def test_buckets_are_fitted_then_frozen(raw):
    train_x = raw[0]
    buckets = AttributeBuckets.fit(train_x)
    levels = buckets.levels(train_x)
    assert levels.shape == (N_TRAIN, len(ATTRIBUTES)) and levels.min() >= 0 and levels.max() <= 2
    coverage_share = torch.bincount(levels[:, 0], minlength=3) / N_TRAIN
    assert (coverage_share - 1 / 3).abs().max() < 0.02  # tertiles of a continuous attribute
    # an image's words do not depend on what else is in the batch
    assert buckets.words(train_x[5:6]) == buckets.words(train_x[:10])[5:6]
    sym, cov, wid = ATTRIBUTES.index("symmetry"), ATTRIBUTES.index("coverage"), 2
    left = image(lambda x: x[:, :14].fill_(255))
    bar = image(lambda x: x[:, 13:15].fill_(200))
    full = image(lambda x: x.fill_(255))
    words = buckets.words(torch.cat([left, bar, full]))
    assert words[0][sym] == "lopsided"
    assert words[1][cov] == "sparse" and words[1][wid] == "narrow" and words[1][sym] == "symmetric"
    assert words[2][cov] == "dense" and words[2][wid] == "wide"


def test_noise_rates_are_met_and_noise_is_what_it_says(data):
    pool, curated, test = data
    summary = noise_summary(pool.noise)
    assert sum(summary.values()) == pytest.approx(1.0)
    for name, rate in [("mismatched", 0.25), ("junk", 0.15), ("duplicate", 0.10)]:
        assert summary[name] == pytest.approx(rate, abs=0.01), name
    assert len(pool) == round((N_TRAIN - 300) / 0.9)
    for caption, label, code in zip(
        pool.captions, pool.labels.tolist(), pool.noise.tolist(), strict=True
    ):
        mentioned = mentioned_classes(caption)
        if code in (CLEAN, DUPLICATE):
            assert label in mentioned, caption
        elif code == MISMATCHED:
            assert mentioned and label not in mentioned, caption
        else:
            assert not mentioned, caption
    junk = {c for c, n in zip(pool.captions, pool.noise.tolist(), strict=True) if n == JUNK}
    assert len(junk) > 0.5 * (pool.noise == JUNK).sum()  # random numbers make most unique


def test_duplicates_are_near_copies_of_clean_pool_examples(data):
    pool = data[0]
    clean = pool.subset(pool.noise == CLEAN)
    dups = pool.subset(pool.noise == DUPLICATE)
    assert (dups.ids >= DUPLICATE_ID_OFFSET).all()
    padded = F.pad(clean.images.float(), (1, 1, 1, 1))
    shifted = torch.stack(
        [padded[:, 1 + dy : 29 + dy, 1 + dx : 29 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    ).flatten(2)  # (9 shifts, n clean, 784)
    for i in range(0, len(dups), max(1, len(dups) // 12)):
        dist = (shifted - dups.images[i].float().flatten()).abs().mean(2)
        best = dist.min(0).values
        j = int(best.argmin())
        assert best[j] < 10, "no clean pool image within a one-pixel shift and pixel noise"
        assert clean.labels[j] == dups.labels[i]
        source_words = {t for t in tokenize(clean.captions[j]) if t.isalpha() or "-" in t}
        assert source_words <= set(tokenize(dups.captions[i]))


def test_curated_and_test_are_clean_disjoint_with_unique_ids(raw, data):
    pool, curated, test = data
    assert len(curated) == 300 and len(test) == N_TEST
    for s in (curated, test):
        assert (s.noise == CLEAN).all()
        assert all(
            y in mentioned_classes(c) for c, y in zip(s.captions, s.labels.tolist(), strict=True)
        )
    assert not set(curated.ids.tolist()) & set(pool.ids.tolist())
    originals = pool.ids[pool.ids < TEST_ID_OFFSET]
    assert torch.equal(pool.images[pool.ids < TEST_ID_OFFSET], raw[0][originals])
    assert torch.equal(curated.images, raw[0][curated.ids])
    assert torch.equal(test.images, raw[2])
    assert torch.equal(test.ids, TEST_ID_OFFSET + torch.arange(N_TEST))
    all_ids = torch.cat([pool.ids, curated.ids, test.ids])
    assert len(set(all_ids.tolist())) == len(all_ids)
    for s in (pool, curated, test):
        assert s.ids.dtype == s.labels.dtype == s.noise.dtype == torch.long
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (28, 28)


def test_builds_are_deterministic_and_seeded(raw):
    raw = [t[:600] for t in raw]
    cfg = PoolConfig(curated_size=100)
    pool, curated, test = build_caption_data(*raw, cfg)
    pool2, curated2, test2 = build_caption_data(*raw, cfg)
    for a, b in ((pool, pool2), (curated, curated2), (test, test2)):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.images, b.images)
        assert a.captions == b.captions and torch.equal(a.noise, b.noise)
    pool3, curated3, test3 = build_caption_data(*raw, PoolConfig(curated_size=100, seed=1))
    assert set(curated3.ids.tolist()) != set(curated.ids.tolist())
    assert pool3.captions != pool.captions
    assert torch.equal(test3.ids, test.ids) and test3.captions == test.captions


def test_captions_are_varied(data):
    pool, curated, test = data
    clean = [c for c, n in zip(pool.captions, pool.noise.tolist(), strict=True) if n == CLEAN]
    assert len(set(pool.captions)) > 500
    assert len(set(clean)) > 300
    assert len(set(test.captions)) > 100
    # the class name alone never makes up a caption's words: attributes are always there
    assert all(
        len(tokenize(c)) > len(tokenize(CLASSES[y])) + 1
        for c, y in zip(test.captions, test.labels.tolist(), strict=True)
    )


def test_class_prompts_use_known_words(data):
    pool, curated, _ = data
    vocab = Vocab.build(pool.captions + curated.captions)
    prompts = class_prompts()
    assert len(prompts) == len(CLASSES)
    assert prompts[0] == "a photo of a t-shirt" and prompts[9] == "a photo of an ankle boot"
    for c, prompt in enumerate(prompts):
        assert UNK not in vocab.token_ids(prompt), prompt
        assert mentioned_classes(prompt) == {c} or (c == 6 and 6 in mentioned_classes(prompt))
    assert class_prompts("{}") == list(CLASSES)


def test_pool_size_and_zero_noise(raw):
    cfg = PoolConfig(curated_size=100, pool_size=400, seed=3)
    pool, curated, _ = build_caption_data(*raw, cfg)
    assert len(pool) == 400 and len(curated) == 100
    assert (pool.noise == DUPLICATE).sum() == 40 and (pool.noise == MISMATCHED).sum() == 100
    quiet = PoolConfig(curated_size=100, pool_size=200, mismatched_rate=0, junk_rate=0,
                       duplicate_rate=0)  # fmt: skip
    pool, _, _ = build_caption_data(*raw, quiet)
    assert (pool.noise == CLEAN).all() and len(pool) == 200


def test_bad_config_names_the_field(raw):
    for kwargs, field in [
        (dict(junk_rate=1.5), "junk_rate"),
        (dict(mismatched_rate=-0.1), "mismatched_rate"),
        (dict(duplicate_rate="0.1"), "duplicate_rate"),
        (dict(mismatched_rate=0.5, junk_rate=0.3, duplicate_rate=0.2), "mismatched_rate"),
        (dict(curated_size=-1), "curated_size"),
        (dict(pool_size=0), "pool_size"),
        (dict(seed=-2), "seed"),
    ]:
        with pytest.raises(ValueError, match=field):
            PoolConfig(**kwargs)
    with pytest.raises(ValueError, match="pool_size"):
        build_caption_data(*raw, PoolConfig(curated_size=300, pool_size=5000))
    with pytest.raises(ValueError, match="curated_size"):
        build_caption_data(*raw, PoolConfig(curated_size=N_TRAIN + 1))
    with pytest.raises(ValueError, match="curated_size"):
        build_caption_data(*raw, PoolConfig(curated_size=N_TRAIN))


def test_caption_set_subset_and_summary():
    s = CaptionSet(
        ids=torch.arange(4),
        images=torch.zeros(4, 28, 28, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 2, 3]),
        captions=["a", "b", "c", "d"],
        noise=torch.tensor([0, 1, 2, 3]),
    )
    assert len(s) == 4
    sub = s.subset(torch.tensor([3, 1]))
    assert sub.captions == ["d", "b"] and sub.ids.tolist() == [3, 1] and len(sub) == 2
    assert s.subset(s.noise > 1).captions == ["c", "d"]
    assert noise_summary(s.noise) == dict.fromkeys(NOISE_TYPES, 0.25)
    assert noise_summary(torch.zeros(0, dtype=torch.long)) == dict.fromkeys(NOISE_TYPES, 0.0)
    with pytest.raises(ValueError, match="captions"):
        CaptionSet(s.ids, s.images, s.labels, ["a"], s.noise)


def test_redundancy_repeats_a_few_clean_pairs(raw):
    cfg = PoolConfig(curated_size=300, duplicate_rate=0.3, duplicate_sources=20, seed=1)
    pool, _, _ = build_caption_data(*raw, cfg)
    dups = pool.subset(pool.noise == DUPLICATE)
    assert len(dups) == round(0.3 * len(pool))
    originals = pool.subset(pool.noise != DUPLICATE)
    # each near-copy's caption is a light edit of one original's clean caption: undo the edit
    def plain(c):
        for edit in (" (copy)", " - 2", "repost: ", "!", " #1", ","):
            c = c.replace(edit, "")
        return c

    by_caption = {}
    for i, c in enumerate(originals.captions):
        by_caption.setdefault(plain(c), []).append(i)
    source_of = {}
    for caption in dups.captions:
        sources = by_caption[plain(caption)]
        key = tuple(sources)  # originals with the very same caption count as one
        source_of[key] = source_of.get(key, 0) + 1
    assert len(source_of) <= 20  # a few sources...
    assert sum(source_of.values()) == len(dups)  # ...copied many times each
    assert max(source_of.values()) >= len(dups) / 20
    assert all(any(originals.noise[i] == CLEAN for i in key) for key in source_of)
    # None keeps one copy per source, as before
    pool, _, _ = build_caption_data(*raw, PoolConfig(curated_size=300, duplicate_rate=0.1))
    assert len(set(pool.subset(pool.noise == DUPLICATE).images.flatten(1).sum(1).tolist())) > 1


def test_long_tail_of_classes(raw):
    zipf = 1.0
    cfg = PoolConfig(curated_size=300, class_zipf=zipf, mismatched_rate=0, junk_rate=0,
                     duplicate_rate=0)  # fmt: skip
    pool, curated, _ = build_caption_data(*raw, cfg)
    balanced, _, _ = build_caption_data(*raw, replace(cfg, class_zipf=0.0))
    counts = torch.bincount(pool.labels, minlength=10).tolist()
    before = torch.bincount(balanced.labels, minlength=10).tolist()
    # the class of rank r keeps round(count * (r + 1) ** -zipf) of its images
    ranked = sorted(range(10), key=lambda c: -counts[c] / before[c])
    for r, c in enumerate(ranked):
        assert counts[c] == round(before[c] * (r + 1) ** -zipf)
    assert len(curated) == 300 and (curated.ids[:, None] != pool.ids[None]).all()


def test_vague_captions_are_correct_but_say_little(raw):
    cfg = PoolConfig(curated_size=300, vague_rate=0.2)
    pool, _, _ = build_caption_data(*raw, cfg)
    vague = [i for i, c in enumerate(pool.captions) if not mentioned_classes(c)
             and pool.noise[i] == CLEAN]  # fmt: skip
    assert len(vague) == round(0.2 * len(pool))
    for i in vague:
        kind = VAGUE_KIND[CLASSES[pool.labels[i]]]
        assert kind in pool.captions[i]  # correct: the image's coarse kind...
        assert not any(w in pool.captions[i] for words in ATTRIBUTE_WORDS.values() for w in words)
    with pytest.raises(ValueError, match="vague_rate"):
        PoolConfig(vague_rate=0.5, mismatched_rate=0.5)
    with pytest.raises(ValueError, match="class_zipf"):
        PoolConfig(class_zipf=-1.0)
    with pytest.raises(ValueError, match="duplicate_sources"):
        PoolConfig(duplicate_sources=0)
