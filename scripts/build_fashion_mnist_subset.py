"""Rebuild the embedded Fashion-MNIST data in ``data/fashion_mnist/`` from Debian's ``dataset-fashion-mnist``.

Writes a class-balanced subset of the training set (``--n-train`` images, the same number per class,
chosen with ``numpy.random.default_rng(--seed)`` and kept in their original order), the full 10,000-image
test set, the licence and a README with checksums. The IDX files are gzip-compressed with mtime 0 and no
file name, so a rebuild with the same arguments gives byte-identical files (for a given zlib version).

Usage (from the repository root, after ``apt-get install dataset-fashion-mnist``)::

    python scripts/build_fashion_mnist_subset.py            # --n-train 30000 --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import zlib
from pathlib import Path

import numpy as np

from crossformer_vision.data.fashion_mnist import CLASS_NAMES, SPLIT_FILES, read_idx, write_idx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOC_DIR = Path("/usr/share/doc/dataset-fashion-mnist")
DEFAULT_OUT = REPO_ROOT / "data" / "fashion_mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
UPSTREAM = "https://github.com/zalandoresearch/fashion-mnist"
NUM_CLASSES = len(CLASS_NAMES)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_version(package: str) -> str:
    """The installed Debian package version, or ``"unknown"`` where dpkg cannot tell."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def licence_text(doc_dir: Path) -> str:
    """Upstream's licence, verbatim: the ``## License`` section that ends the package's README.md.gz."""
    readme = doc_dir / "README.md.gz"
    text = gzip.decompress(readme.read_bytes()).decode("utf-8")
    heading = "\n## License\n"
    if heading not in text:
        raise SystemExit(f"{readme}: no '## License' section; cannot copy the licence text")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    if "Zalando SE" not in section or "Permission is hereby granted" not in section:
        raise SystemExit(f"{readme}: the '## License' section is not the expected MIT text with Zalando's copyright")
    return section.strip() + "\n"


def select_balanced(labels: np.ndarray, n_train: int, seed: int) -> np.ndarray:
    """``n_train // 10`` random indices per class (``default_rng(seed)``, classes in label order), sorted."""
    rng = np.random.default_rng(seed)
    per_class = n_train // NUM_CLASSES
    chosen = []
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise SystemExit(f"class {label} has {len(members)} training images, fewer than {per_class}")
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def readme_text(
    *, n_train: int, seed: int, version: str, source: Path, out: Path, counts: dict[str, int], indices_sha: str
) -> str:
    files = [*SPLIT_FILES["train"], *SPLIT_FILES["test"], "LICENSE"]
    source_files = [*SPLIT_FILES["train"], *SPLIT_FILES["test"]]
    total = sum((out / name).stat().st_size for name in files)
    rows = "\n".join(f"| `{name}` | {(out / name).stat().st_size:,} | `{sha256(out / name)}` |" for name in files)
    source_rows = "\n".join(f"| `{name}` | `{sha256(source / name)}` |" for name in source_files)
    class_rows = "\n".join(f"| {label} | {name} |" for label, name in enumerate(CLASS_NAMES))
    per_class = n_train // NUM_CLASSES
    return f"""# Fashion-MNIST (embedded subset)

A copy of [Fashion-MNIST]({UPSTREAM}) (Zalando's article images: 28x28 greyscale,
10 classes) that ships in the repository so the demo and the tests run offline. Load it with
`crossformer_vision.data.FashionMNIST(split="train" | "test")`.

| Split | Images | Per class | Content |
| --- | --- | --- | --- |
| train | {counts["train"]:,} | {per_class:,} | class-balanced subset of the 60,000 training images |
| test | {counts["test"]:,} | 1,000 | the full test set |

The files use the original IDX format, gzip-compressed, under the original names, so MNIST readers
(e.g. Zalando's `utils/mnist_reader.py`) read them.

## Source

Debian package `{DEBIAN_PACKAGE}` version `{version}` (the upstream files, from
`{source}`). Source files' sha256:

| File | sha256 |
| --- | --- |
{source_rows}

## How it was built

From the repository root:

```bash
apt-get install {DEBIAN_PACKAGE}
python scripts/build_fashion_mnist_subset.py --n-train {n_train} --seed {seed}
```

For each class in label order, `numpy.random.default_rng({seed}).permutation` shuffles that class's
training indices and the first {per_class:,} are kept; the kept images stay in their original order.
The sha256 of the kept indices (int64, little-endian) is
`{indices_sha}`.
The test set's content is copied unchanged. The IDX files are recompressed with gzip level 9, mtime 0
and no file name, so a rebuild gives byte-identical files (with the same zlib; this build used
zlib {zlib.ZLIB_RUNTIME_VERSION}).

## Files

Total {total:,} bytes ({total / 2**20:.1f} MiB).

| File | Bytes | sha256 |
| --- | --- | --- |
{rows}

## Classes

| Label | Name |
| --- | --- |
{class_rows}

## Licence

MIT, Copyright (c) 2017 Zalando SE: see `LICENSE` (copied from the package's upstream README).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=30000, help="training images to keep (multiple of 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng for the subset")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="directory of the package's IDX files")
    parser.add_argument("--doc-dir", type=Path, default=DEFAULT_DOC_DIR, help="the package's doc directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()

    if not 0 < args.n_train <= 60000 or args.n_train % NUM_CLASSES:
        parser.error(f"--n-train {args.n_train} must be a multiple of {NUM_CLASSES} in [10, 60000]")
    if not args.source.is_dir():
        raise SystemExit(f"{args.source} not found: apt-get install {DEBIAN_PACKAGE}")

    train_images = read_idx(args.source / SPLIT_FILES["train"][0])
    train_labels = read_idx(args.source / SPLIT_FILES["train"][1])
    test_images = read_idx(args.source / SPLIT_FILES["test"][0])
    test_labels = read_idx(args.source / SPLIT_FILES["test"][1])
    assert train_images.shape == (60000, 28, 28) and train_labels.shape == (60000,), "unexpected training set"
    assert test_images.shape == (10000, 28, 28) and test_labels.shape == (10000,), "unexpected test set"

    keep = select_balanced(train_labels, args.n_train, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = {
        SPLIT_FILES["train"][0]: train_images[keep],
        SPLIT_FILES["train"][1]: train_labels[keep],
        SPLIT_FILES["test"][0]: test_images,
        SPLIT_FILES["test"][1]: test_labels,
    }
    for name, array in arrays.items():
        write_idx(args.out / name, array)
        if not np.array_equal(read_idx(args.out / name), array):
            raise SystemExit(f"{args.out / name}: read-back differs from what was written")
    (args.out / "LICENSE").write_text(licence_text(args.doc_dir), encoding="utf-8")

    readme = readme_text(
        n_train=args.n_train,
        seed=args.seed,
        version=package_version(DEBIAN_PACKAGE),
        source=args.source,
        out=args.out,
        counts={"train": len(keep), "test": len(test_labels)},
        indices_sha=hashlib.sha256(keep.astype("<i8").tobytes()).hexdigest(),
    )
    (args.out / "README.md").write_text(readme, encoding="utf-8")
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>12,}  {sha256(path)}  {path}")


if __name__ == "__main__":
    main()
