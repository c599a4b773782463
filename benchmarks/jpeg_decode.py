"""JPEG decode + resize to 224 x 224 in one process: Pillow, pillow-simd and simplejpeg.

Decoding is what a data worker spends its time on (jestkit.data.shards decodes with Pillow, then
the model's transform resizes). This measures each library on the same JPEGs, written here
(photo-like: smooth gradients, shapes and noise, quality 90), at two source sizes (256 and 512
px square: img2dataset's usual resize targets):

    pil          Image.open -> convert('RGB') -> resize(224, bilinear) -> numpy
    pil-draft    the same, after im.draft('RGB', (224, 224)): libjpeg's DCT scaling decodes a
                 512-px JPEG at 256 px directly (a Pillow feature; no effect at 256 px)
    simplejpeg   simplejpeg.decode_jpeg (full size, as jestkit.data.shards.decode_image does)
                 -> PIL image -> resize(224, bilinear) -> numpy

pillow-simd replaces Pillow (the same `PIL` package), so it is measured by running this script
in another environment. Run it once per environment, then print the table:

    /tmp/plain/bin/python benchmarks/jpeg_decode.py run --label pillow --append  # + simplejpeg
    /tmp/simd/bin/python benchmarks/jpeg_decode.py run --label pillow-simd --append
    python benchmarks/jpeg_decode.py table          # benchmarks/results/jpeg_decode.txt

Each measurement decodes all images `--repeats` times (5) and counts images per second of this
process's CPU time (one thread decodes: a dedicated core's rate, which other jobs on a shared
machine do not change the way they change wall time; the wall rate is kept in the JSON);
`--append` adds a round to the label's file, so rounds of the environments can be interleaved.
The table gives images per CPU-second: the median and the range over every repeat of every
round, and the ratio to plain Pillow's median.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SIZE = 224


def make_jpegs(n: int, side: int, seed: int = 0) -> list[bytes]:
    """n photo-like JPEGs of side x side pixels."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:side, 0:side] / side
    for _ in range(n):
        a = rng.uniform(0, 1, (3, 3))
        base = np.stack([(a[c, 0] * xx + a[c, 1] * yy + a[c, 2] * xx * yy) for c in range(3)], -1)
        pixels = (base / base.max() * 200 + rng.normal(0, 12, (side, side, 3))).clip(0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, side, 2)
            r = int(rng.integers(side // 16, side // 4))
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def pil(data: bytes, draft: bool = False) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if draft:
            im.draft("RGB", (SIZE, SIZE))
        image = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def simplejpeg_decode(data: bytes) -> np.ndarray:
    import simplejpeg
    from PIL import Image

    array = simplejpeg.decode_jpeg(data, colorspace="RGB")
    image = Image.fromarray(array).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def methods() -> dict:
    found = {"pil": pil, "pil-draft": lambda d: pil(d, draft=True)}
    try:
        import simplejpeg  # noqa: F401

        found["simplejpeg"] = simplejpeg_decode
    except ImportError:
        pass
    return found


def run(label: str, n: int, repeats: int, append: bool) -> dict:
    import PIL

    results = {"label": label, "pillow": PIL.__version__, "python": platform.python_version(),
               "images": n, "repeats": repeats, "rows": []}  # fmt: skip
    for side in (256, 512):
        jpegs = make_jpegs(n, side)
        for name, fn in methods().items():
            fn(jpegs[0])  # warm up (imports, first allocation)
            rates, walls = [], []
            for _ in range(repeats):
                start, cpu = time.perf_counter(), time.process_time()
                for data in jpegs:
                    out = fn(data)
                rates.append(n / (time.process_time() - cpu))
                walls.append(n / (time.perf_counter() - start))
            assert out.shape == (SIZE, SIZE, 3)
            row = {"method": name, "source_px": side, "median": statistics.median(rates),
                   "min": min(rates), "max": max(rates),
                   "wall": statistics.median(walls)}  # fmt: skip
            results["rows"].append(row)
            print(f"{label:12s} {name:11s} {side:4d} px  {row['median']:7.0f} images/CPU-s "
                  f"({row['min']:.0f}-{row['max']:.0f}); wall {row['wall']:.0f}/s")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"jpeg_decode-{label}.json"
    rounds = json.loads(path.read_text()) if path.exists() and append else []
    path.write_text(json.dumps(rounds + [results], indent=2))
    return results


def table() -> str:
    """Per library, method and size: the median images/s over every repeat of every round, its
    range, and the ratio to plain Pillow's median (rounds of the environments interleaved, so
    that the machine's load falls on all of them alike)."""
    rates: dict[tuple, list[float]] = {}
    versions = {}
    for path in sorted(RESULTS.glob("jpeg_decode-*.json")):
        for rnd in json.loads(path.read_text()):
            versions[rnd["label"]] = rnd["pillow"]
            for r in rnd["rows"]:
                key = (rnd["label"], r["method"], r["source_px"])
                rates.setdefault(key, []).extend([r["median"], r["min"], r["max"]])
    base = {k[2]: statistics.median(v) for k, v in rates.items() if k[:2] == ("pillow", "pil")}
    lines = ["library      Pillow        method      source  images/CPU-s (min-max) vs Pillow",
             "------------ ------------- ----------- ------- -------------------- ---------"]
    for (label, method, side), v in sorted(rates.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        med = statistics.median(v)
        lines.append(f"{label:12s} {versions[label]:13s} {method:11s} {side:4d} px"
                     f"  {med:6.0f} ({min(v):.0f}-{max(v):.0f})  {med / base[side]:8.2f}x")
    text = "\n".join(lines)
    (RESULTS / "jpeg_decode.txt").write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--images", type=int, default=200)
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--append", action="store_true", help="add a round to the label's results")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.command == "run":
        run(args.label, args.images, args.repeats, args.append)
    else:
        print(table())


if __name__ == "__main__":
    main()
