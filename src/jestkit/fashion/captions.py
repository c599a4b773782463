"""The image-caption data built from Fashion-MNIST: a noisy web-like pool, a clean curated set,
and a clean test set (docs/demo.md).

A clean caption names the image's class and 1-3 words for attributes measured from its pixels
(ink coverage, ink brightness, width, height, left-right symmetry, top-heaviness), in one of
several templates. Each attribute is cut into three levels at the 1/3 and 2/3 quantiles of the
curated + pool images (`AttributeBuckets.fit`); the cut points are then frozen and used for the
pool, curated and test captions alike.

Noise on the pool, as fractions of the final pool (duplicates included):
* mismatched: the clean caption of another pool image of a different class;
* junk: a caption about nothing ("IMG_0423.jpg", "click here", ...), with random numbers;
* duplicate: a new example, copied from a clean pool example with a shift of at most one pixel
  and Gaussian pixel noise, with a lightly edited copy of that example's caption.

Web data's other structure, off by default (PoolConfig): redundancy (duplicate_sources: the
near-copies concentrate on a few clean pairs, many copies each, as LAION's near-duplicates do),
a long tail of classes (class_zipf) and correct but vague captions (vague_rate: the class's
coarse kind only, "my new shoe").

Ids: train examples keep their train index (curated and pool are disjoint), test examples are
100_000 + test index, duplicates are 200_000 + k. Everything is deterministic given the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from jestkit.fashion.fashion_mnist import CLASSES

NOISE_TYPES = ("clean", "mismatched", "junk", "duplicate")
CLEAN, MISMATCHED, JUNK, DUPLICATE = range(4)
TEST_ID_OFFSET = 100_000
DUPLICATE_ID_OFFSET = 200_000
INK_THRESHOLD = 32  # a pixel is ink when its value (0..255) is above this

# attribute -> words for its levels (low, middle, high); the attributes' order is the columns'.
ATTRIBUTE_WORDS = {
    "coverage": ("sparse", "moderate", "dense"),
    "brightness": ("dark", "grey", "light"),
    "width": ("narrow", "regular", "wide"),
    "height": ("short", "medium", "tall"),
    "symmetry": ("lopsided", "uneven", "symmetric"),
    "top_heaviness": ("bottom-heavy", "balanced", "top-heavy"),
}
ATTRIBUTES = tuple(ATTRIBUTE_WORDS)

# {c}: class name; {0}, {1}, {2}: attribute words. "a" becomes "an" before a vowel afterwards.
TEMPLATES = (
    "a {0} {c}",
    "a photo of a {0} {c}",
    "a {0}, {1} {c}",
    "a photo of a {0}, {1} {c}",
    "photo of a {0} {c}, {1} and {2}",
    "{c}: {0}, {1}",
    "this {c} looks {0}",
    "a {0} {1} {c} on a black background",
    "product shot of a {0} {c}",
    "{0} and {1} {c}",
    "a picture of a {c} that is {0}, {1} and {2}",
    "the {c} is {0} and {1}",
    "close-up of a {0}, {1}, {2} {c}",
)
# {n}: 0..9999, {k}: 1..999, {p}: 1..99, {m}: 1..12, {d}: 1..28, {y}: 1990..2024.
JUNK_TEMPLATES = (
    "IMG_{n:04d}.jpg",
    "DSC_{n:04d}.JPG",
    "image{k}.png",
    "photo_{n}_{k}.jpeg",
    "click here",
    "click here for more",
    "free shipping",
    "free shipping on orders over ${k}",
    "buy now",
    "{p}% off today only",
    "sale ends {m}/{d}",
    "home | shop | contact",
    "untitled-{n}",
    "screenshot {y}-{m:02d}-{d:02d}",
    "no description available",
    "item #{n}",
    "copyright {y} all rights reserved",
    "download full size",
    "thumbnail_{k}",
    "page {p} of {k}",
)
# correct but vague captions: the class's coarse kind only, no attributes (alt-text that says
# little: "my new shoes"); {g} is the coarse kind of the image's class
VAGUE_KIND = {
    "t-shirt": "top", "pullover": "top", "coat": "top", "shirt": "top",
    "trouser": "clothes", "dress": "clothes",
    "sandal": "shoe", "sneaker": "shoe", "ankle boot": "shoe", "bag": "accessory",
}  # fmt: skip
VAGUE_TEMPLATES = (
    "a {g}",
    "a photo of a {g}",
    "my new {g}",
    "{g} for sale",
    "a nice {g}",
    "look at this {g}",
)
# light edits that turn a caption into a near-copy of itself
_NEAR_COPY = (
    lambda s: s + " (copy)",
    lambda s: s + " - 2",
    lambda s: "repost: " + s,
    lambda s: s + "!",
    lambda s: s.replace(",", ""),
    lambda s: s + " #1",
)
_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _fix_articles(text: str) -> str:
    return _ARTICLE.sub("an ", text)


def _generator(seed: int, stage: int) -> torch.Generator:
    """An independent stream per build stage, so one stage's draws don't shift another's."""
    return torch.Generator().manual_seed(seed * 1000 + stage)


# ---------------------------------------------------------------------------------------------
# attributes measured from pixels


def _extent(mask: torch.Tensor) -> torch.Tensor:
    """Length of the span from the first to the last True along dim 1 (0 if none)."""
    idx = torch.arange(mask.shape[1])
    first = torch.where(mask, idx, mask.shape[1]).amin(1)
    last = torch.where(mask, idx, -1).amax(1)
    return (last - first + 1).clamp(min=0).float()


def measure_attributes(
    images: torch.Tensor, ink_threshold: int = INK_THRESHOLD
) -> dict[str, torch.Tensor]:
    """Per-image float attributes of uint8 (N, H, W) images, keyed as in ATTRIBUTES:
    coverage (share of ink pixels), brightness (mean ink value / 255), width and height (pixels
    spanned by the bounding box of ink), symmetry (1 - sum|x - mirror(x)| / (2 sum x), about the
    image's vertical centre line: 1 mirror-symmetric, 0 no overlap with its mirror image) and
    top_heaviness (share of intensity in the top half). Blank images: 0, 0, 0, 0, 1, 0.5."""
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    out = {name: [] for name in ATTRIBUTES}
    for chunk in images.split(8192):
        x = chunk.float()
        ink = chunk > ink_threshold
        n_ink = ink.flatten(1).sum(1).float()
        mass = x.flatten(1).sum(1)
        out["coverage"].append(n_ink / ink[0].numel())
        out["brightness"].append((x * ink).flatten(1).sum(1) / n_ink.clamp(min=1) / 255.0)
        out["width"].append(_extent(ink.any(1)))
        out["height"].append(_extent(ink.any(2)))
        mismatch = (x - x.flip(2)).abs_().flatten(1).sum(1)
        out["symmetry"].append(torch.where(mass > 0, 1 - mismatch / (2 * mass).clamp(min=1), 1.0))
        top = x[:, : x.shape[1] // 2].flatten(1).sum(1)
        out["top_heaviness"].append(torch.where(mass > 0, top / mass.clamp(min=1), 0.5))
    return {name: torch.cat(parts) if parts else torch.zeros(0) for name, parts in out.items()}


@dataclass(frozen=True)
class AttributeBuckets:
    """Frozen cut points (low, high) per attribute: level = how many cut points a value reaches
    (value >= cut), 0..2, named by ATTRIBUTE_WORDS."""

    cuts: dict[str, tuple[float, float]]
    ink_threshold: int = INK_THRESHOLD

    @classmethod
    def fit(
        cls,
        images: torch.Tensor,
        quantiles: tuple[float, float] = (1 / 3, 2 / 3),
        ink_threshold: int = INK_THRESHOLD,
    ) -> AttributeBuckets:
        """Cut points at the given quantiles of each attribute over `images`."""
        if len(images) == 0:
            raise ValueError("cannot fit attribute buckets on zero images")
        return cls.fit_attributes(
            measure_attributes(images, ink_threshold), quantiles, ink_threshold
        )

    @classmethod
    def fit_attributes(
        cls,
        attributes: dict[str, torch.Tensor],
        quantiles: tuple[float, float] = (1 / 3, 2 / 3),
        ink_threshold: int = INK_THRESHOLD,
    ) -> AttributeBuckets:
        """Like `fit`, from attributes already measured (with the same ink_threshold)."""
        q = torch.tensor(quantiles)
        cuts = {n: tuple(torch.quantile(attributes[n], q).tolist()) for n in ATTRIBUTES}
        return cls(cuts=cuts, ink_threshold=ink_threshold)

    def levels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, len(ATTRIBUTES)) int64 levels in 0..2."""
        return self.attribute_levels(measure_attributes(images, self.ink_threshold))

    def attribute_levels(self, attributes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Like `levels`, from attributes already measured (with this ink_threshold)."""
        cuts = {n: torch.tensor(self.cuts[n]) for n in ATTRIBUTES}
        return torch.stack([(attributes[n][:, None] >= cuts[n]).sum(1) for n in ATTRIBUTES], 1)

    def words(self, images: torch.Tensor) -> list[list[str]]:
        """Each image's attribute words, one per attribute in ATTRIBUTES order."""
        return _level_words(self.levels(images))


def _level_words(levels: torch.Tensor) -> list[list[str]]:
    vocab = [ATTRIBUTE_WORDS[n] for n in ATTRIBUTES]
    return [[vocab[a][lv] for a, lv in enumerate(row)] for row in levels.tolist()]


# ---------------------------------------------------------------------------------------------
# captions


def make_captions(
    labels: torch.Tensor, levels: torch.Tensor, generator: torch.Generator
) -> list[str]:
    """Clean captions: per image a random template filled with its class name and a random
    choice (and order) of its attribute words."""
    n = len(labels)
    template = torch.randint(len(TEMPLATES), (n,), generator=generator).tolist()
    order = torch.rand(n, len(ATTRIBUTES), generator=generator).argsort(1).tolist()
    words = _level_words(levels)
    captions = []
    for i, label in enumerate(labels.tolist()):
        chosen = [words[i][a] for a in order[i]]
        captions.append(_fix_articles(TEMPLATES[template[i]].format(*chosen, c=CLASSES[label])))
    return captions


def vague_captions(labels: torch.Tensor, generator: torch.Generator) -> list[str]:
    """Correct but vague captions: a random VAGUE_TEMPLATES filled with the class's coarse kind."""
    template = torch.randint(len(VAGUE_TEMPLATES), (len(labels),), generator=generator).tolist()
    return [
        _fix_articles(VAGUE_TEMPLATES[t].format(g=VAGUE_KIND[CLASSES[c]]))
        for t, c in zip(template, labels.tolist(), strict=True)
    ]


def long_tail(
    candidates: torch.Tensor, labels: torch.Tensor, zipf: float, generator: torch.Generator
) -> torch.Tensor:
    """The candidates (train indices) kept so that class frequencies fall off as a power law:
    the classes are ranked in a random order and the class of rank r (0 first) keeps the first
    round(share * (r + 1) ** -zipf) of its candidates, in the candidates' order."""
    rank = torch.randperm(len(CLASSES), generator=generator)
    keep = torch.zeros(len(candidates), dtype=torch.bool)
    for r, c in enumerate(rank.tolist()):
        rows = (labels[candidates] == c).nonzero().flatten()
        keep[rows[: round(len(rows) * (r + 1) ** -zipf)]] = True
    return candidates[keep]


def junk_captions(n: int, generator: torch.Generator) -> list[str]:
    """`n` captions about nothing: file names and web boilerplate with random numbers."""
    kind = torch.randint(len(JUNK_TEMPLATES), (n,), generator=generator).tolist()
    nums = torch.randint(0, 10_000, (n, 6), generator=generator).tolist()
    out = []
    for k, (a, b, c, d, e, f) in zip(kind, nums, strict=True):
        values = dict(n=a, k=1 + b % 999, p=1 + c % 99, m=1 + d % 12, d=1 + e % 28, y=1990 + f % 35)
        out.append(JUNK_TEMPLATES[k].format(**values))
    return out


def near_copy_images(images: torch.Tensor, generator: torch.Generator, noise_std: float = 8.0):
    """Copies shifted by -1..1 pixels each way (zero fill) with Gaussian pixel noise, uint8."""
    n, h, w = images.shape
    shift = torch.randint(-1, 2, (n, 2), generator=generator)
    padded = F.pad(images.float(), (1, 1, 1, 1))
    rows = (torch.arange(h)[None, :] + 1 - shift[:, :1])[:, :, None]  # (n, h, 1)
    cols = (torch.arange(w)[None, :] + 1 - shift[:, 1:])[:, None, :]  # (n, 1, w)
    out = padded[torch.arange(n)[:, None, None], rows, cols]
    out = out + noise_std * torch.randn(out.shape, generator=generator)
    return out.round().clamp(0, 255).to(torch.uint8)


def class_prompts(template: str = "a photo of a {}", classes=CLASSES) -> list[str]:
    """One zero-shot prompt per class, in class order ("a photo of an ankle boot")."""
    return [_fix_articles(template.format(name)) for name in classes]


def noise_summary(noise: torch.Tensor) -> dict[str, float]:
    """Fraction of each noise type (NOISE_TYPES order) among the codes in `noise`."""
    counts = torch.bincount(noise.long().flatten(), minlength=len(NOISE_TYPES))
    total = max(int(noise.numel()), 1)
    return {name: counts[i].item() / total for i, name in enumerate(NOISE_TYPES)}


# ---------------------------------------------------------------------------------------------
# the data sets


@dataclass
class CaptionSet:
    """Image-caption examples; row i of every field belongs to example `ids[i]`."""

    ids: torch.Tensor  # int64 (N,), stable example ids
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,), true class of the image
    captions: list[str]
    noise: torch.Tensor  # int64 (N,), index into NOISE_TYPES
    levels: torch.Tensor | None = None  # int64 (N, 6): the image's attribute levels, 0..2

    def __post_init__(self):
        n = len(self.ids)
        for f in fields(self):
            if getattr(self, f.name) is not None and len(getattr(self, f.name)) != n:
                raise ValueError(
                    f"CaptionSet.{f.name} has {len(getattr(self, f.name))} rows, ids {n}"
                )

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: torch.Tensor) -> CaptionSet:
        """The examples at `index` (int positions or a bool mask), in that order."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long()
        return CaptionSet(
            ids=self.ids[index],
            images=self.images[index],
            labels=self.labels[index],
            captions=[self.captions[i] for i in index.tolist()],
            noise=self.noise[index],
            levels=None if self.levels is None else self.levels[index],
        )


@dataclass
class PoolConfig:
    """Where the images come from and how to build the pool, curated and test sets.

    Attributes:
        data_dir: folder with the four Fashion-MNIST IDX files (None: $JESTKIT_FASHION_MNIST or
            the Debian package's /usr/share/datasets/fashion-mnist)
        limit: use only the first LIMIT train and test images (quick runs); None: all
        curated_size: clean image-caption pairs kept apart for the reference
        pool_size: pairs in the noisy pool (None: every train image not curated, plus the
            duplicates)
        mismatched_rate: share of the pool whose caption belongs to an image of another class
        junk_rate: share of the pool with captions about nothing ("IMG_0423.jpg")
        duplicate_rate: share of the pool that is near-copies of other pool pairs
        duplicate_sources: how many clean pairs the near-copies copy. None: each near-copy
            copies a different clean pair (one copy each, where there are enough). N: every
            near-copy copies one of N clean pairs drawn at random, so each of them recurs
            about duplicate_rate * pool / N times: web data's redundancy, many near-copies of
            a few (easy, well-captioned) pairs
        class_zipf: a long tail of classes: the pool's originals keep class frequencies
            falling off as (rank + 1) ** -class_zipf over a random ranking of the classes (the
            most frequent keeps all its images); 0: balanced, as Fashion-MNIST is
        vague_rate: share of the pool whose caption is correct but vague: the clean caption
            replaced by the class's coarse kind alone ("my new shoe"), no attributes
        seed: seed of the pool's noise and captions
    """

    data_dir: str | None = None
    limit: int | None = None
    curated_size: int = 3000
    pool_size: int | None = None
    mismatched_rate: float = 0.25
    junk_rate: float = 0.15
    duplicate_rate: float = 0.10
    duplicate_sources: int | None = None
    class_zipf: float = 0.0
    vague_rate: float = 0.0
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.curated_size, int) or self.curated_size < 0:
            raise ValueError(f"curated_size must be an int >= 0, got {self.curated_size!r}")
        if self.pool_size is not None and (
            not isinstance(self.pool_size, int) or self.pool_size < 1
        ):
            raise ValueError(f"pool_size must be None or an int >= 1, got {self.pool_size!r}")
        rates = ("mismatched_rate", "junk_rate", "duplicate_rate", "vague_rate")
        for name in rates:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        total = sum(getattr(self, name) for name in rates)
        if total >= 1.0:
            raise ValueError(
                f"mismatched_rate + junk_rate + duplicate_rate + vague_rate must be < 1 (some of "
                f"the pool must be clean and informative), got {total:g}"
            )
        if not isinstance(self.class_zipf, int | float) or not 0.0 <= self.class_zipf <= 10.0:
            raise ValueError(f"class_zipf must be in [0, 10], got {self.class_zipf!r}")
        if self.duplicate_sources is not None and (
            not isinstance(self.duplicate_sources, int) or self.duplicate_sources < 1
        ):
            raise ValueError(
                f"duplicate_sources must be None or an int >= 1, got {self.duplicate_sources!r}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be None or an int >= 1, got {self.limit!r}")


def _different_class_donors(labels: torch.Tensor, n: int, generator: torch.Generator):
    """For each of the first n examples, a random other example with a different label."""
    donors = torch.randint(len(labels), (n,), generator=generator)
    for _ in range(100):
        clash = labels[donors] == labels[:n]
        if not clash.any():
            return donors
        donors[clash] = torch.randint(len(labels), (int(clash.sum()),), generator=generator)
    raise ValueError("mismatched captions need pool images of at least two classes")


def build_caption_data(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    config: PoolConfig | None = None,
) -> tuple[CaptionSet, CaptionSet, CaptionSet]:
    """(pool, curated, test). Curated and test are clean; curated is disjoint from the pool; the
    pool is in random order. Test captions do not depend on config.seed, only on the buckets."""
    config = config or PoolConfig()
    config.validate()
    n_train = len(train_images)
    if len(train_labels) != n_train or len(test_labels) != len(test_images):
        raise ValueError("images and labels must have the same length")
    if n_train > TEST_ID_OFFSET or len(test_images) > DUPLICATE_ID_OFFSET - TEST_ID_OFFSET:
        raise ValueError("too many images for the id ranges (train < 100,000, test < 100,000)")
    if config.curated_size > n_train:
        raise ValueError(f"curated_size={config.curated_size} exceeds the {n_train} train images")
    # split: curated first, then the candidates for the pool's originals
    perm = torch.randperm(n_train, generator=_generator(config.seed, 0))
    curated_idx, candidates = perm[: config.curated_size], perm[config.curated_size :]
    if config.class_zipf > 0:
        candidates = long_tail(candidates, train_labels, config.class_zipf,
                               _generator(config.seed, 3))  # fmt: skip
    left = len(candidates)
    if config.pool_size is None:
        n_originals = left
        n_total = round(n_originals / (1 - config.duplicate_rate))
    else:
        n_total = config.pool_size
        n_originals = n_total - round(config.duplicate_rate * n_total)
        if n_originals > left:
            raise ValueError(
                f"pool_size={n_total} needs {n_originals} train images, only {left} remain after "
                f"curated_size={config.curated_size}"
            )
    if n_originals < 1:
        raise ValueError(
            f"no train images left for the pool: lower curated_size={config.curated_size} "
            f"(there are {n_train} train images)"
        )
    n_dup = n_total - n_originals
    n_mis = min(round(config.mismatched_rate * n_total), n_originals)
    n_junk = min(round(config.junk_rate * n_total), n_originals - n_mis)

    pool_idx = candidates[:n_originals]
    attributes = measure_attributes(train_images[torch.cat([curated_idx, pool_idx])])
    buckets = AttributeBuckets.fit_attributes(attributes)
    curated_levels, pool_levels = buckets.attribute_levels(attributes).split(
        [len(curated_idx), len(pool_idx)]
    )

    g = _generator(config.seed, 1)
    curated = CaptionSet(
        ids=curated_idx.clone(),
        images=train_images[curated_idx],
        labels=train_labels[curated_idx].long(),
        captions=make_captions(train_labels[curated_idx], curated_levels, g),
        noise=torch.full((len(curated_idx),), CLEAN, dtype=torch.long),
        levels=curated_levels,
    )

    images, labels = train_images[pool_idx], train_labels[pool_idx].long()
    clean = make_captions(labels, pool_levels, g)
    captions = list(clean)
    noise = torch.full((n_originals,), CLEAN, dtype=torch.long)
    order = torch.randperm(n_originals, generator=g)
    mis, junk, kept = order[:n_mis], order[n_mis : n_mis + n_junk], order[n_mis + n_junk :]
    if n_mis:
        # order[:n_mis] is `mis`; donors are drawn from every pool original
        donors = order[_different_class_donors(labels[order], n_mis, g)]
        for i, j in zip(mis.tolist(), donors.tolist(), strict=True):
            captions[i] = clean[j]
        noise[mis] = MISMATCHED
    for i, text in zip(junk.tolist(), junk_captions(n_junk, g), strict=True):
        captions[i] = text
    noise[junk] = JUNK
    n_vague = min(round(config.vague_rate * n_total), len(kept))
    if n_vague:  # correct but vague: still clean, but a few words say little
        vague = kept[:n_vague]
        for i, text in zip(vague.tolist(), vague_captions(labels[vague], g), strict=True):
            captions[i] = text

    # duplicates: near-copies of clean pool examples (of any example if none is clean)
    sources = kept if len(kept) else order
    if config.duplicate_sources is not None:  # redundancy: many copies of a few pairs
        few = sources[torch.randperm(len(sources), generator=g)[: config.duplicate_sources]]
        src = few[torch.randint(len(few), (n_dup,), generator=g)]
    elif n_dup <= len(sources):
        src = sources[torch.randperm(len(sources), generator=g)[:n_dup]]
    else:
        src = sources[torch.randint(len(sources), (n_dup,), generator=g)]
    edit = torch.randint(len(_NEAR_COPY), (n_dup,), generator=g).tolist()
    dup_captions = [_NEAR_COPY[e](captions[s]) for e, s in zip(edit, src.tolist(), strict=True)]

    pool = CaptionSet(
        ids=torch.cat([pool_idx, DUPLICATE_ID_OFFSET + torch.arange(n_dup)]),
        images=torch.cat([images, near_copy_images(images[src], g)]),
        labels=torch.cat([labels, labels[src]]),
        captions=captions + dup_captions,
        noise=torch.cat([noise, torch.full((n_dup,), DUPLICATE, dtype=torch.long)]),
        levels=torch.cat([pool_levels, pool_levels[src]]),
    ).subset(torch.randperm(n_total, generator=g))

    test_levels = buckets.levels(test_images)
    test = CaptionSet(
        ids=TEST_ID_OFFSET + torch.arange(len(test_images)),
        images=test_images,
        labels=test_labels.long(),
        captions=make_captions(test_labels, test_levels, _generator(0, 2)),
        noise=torch.full((len(test_images),), CLEAN, dtype=torch.long),
        levels=test_levels,
    )
    return pool, curated, test
