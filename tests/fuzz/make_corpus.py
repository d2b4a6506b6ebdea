#!/usr/bin/env python3
"""Writes the IDX seed corpus for tests/fuzz/fuzz_idx.cpp into tests/fuzz/corpus/idx/.

Small valid label (rank 1) and image (rank 3) files, raw and gzip (one member and two), and
malformed ones: wrong magic, element type or rank, truncated header or data, excess data, a header
claiming billions of bytes, and corrupt, truncated or trailing-garbage gzip. Deterministic (gzip
mtime 0); every file stays under a few KB. Re-run after changing it and commit the output.
"""
import gzip
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "idx")


def idx(dims, data, type_byte=0x08, rank=None):
    rank = len(dims) if rank is None else rank
    return bytes([0, 0, type_byte, rank]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


def gz(raw):
    return gzip.compress(raw, compresslevel=9, mtime=0)


def main():
    os.makedirs(OUT, exist_ok=True)
    labels = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    image = [(i * 37) % 256 for i in range(3 * 4 * 5)]
    digit = [0 if (r - 14) ** 2 + (c - 14) ** 2 > 64 else 255 for r in range(28) for c in range(28)]
    lab = idx([len(labels)], labels)
    img = idx([3, 4, 5], image)
    files = {
        # valid
        "valid-labels-idx1": lab,
        "valid-labels-idx1.gz": gz(lab),
        "valid-images-idx3": img,
        "valid-images-idx3.gz": gz(img),
        "valid-one-28x28-idx3": idx([1, 28, 28], digit),
        "valid-one-28x28-idx3.gz": gz(idx([1, 28, 28], digit)),
        "valid-empty-idx1": idx([0], []),
        "valid-two-members-idx1.gz": gz(lab[:6]) + gz(lab[6:]),
        "valid-stored-idx3.gz": gzip.compress(img, compresslevel=0, mtime=0),
        # malformed IDX
        "bad-magic": b"\x1f\x00\x08\x01" + lab[4:],
        "bad-type-float": idx([len(labels)], labels, type_byte=0x0D),
        "bad-rank-2": idx([2, 5], labels),
        "bad-header-truncated-idx3": img[:10],
        "bad-data-truncated-idx3": img[:-7],
        "bad-data-excess-idx1": lab + b"\x00\x01\x02",
        "bad-claims-billions-idx3": idx([2000000000, 28, 28], image),
        "bad-claims-millions-idx3.gz": gz(idx([1000000, 28, 28], image)),
        "bad-only-magic": lab[:4],
        # malformed gzip
        "bad-gzip-truncated-idx3.gz": gz(img)[:-12],
        "bad-gzip-crc-idx1.gz": gz(lab)[:-8] + b"\xde\xad\xbe\xef" + gz(lab)[-4:],
        "bad-gzip-trailing-garbage-idx1.gz": gz(lab) + b"garbage",
        "bad-gzip-header-only.gz": gz(lab)[:10],
        "bad-gzip-data-truncated-idx3.gz": gz(img[:-5]),
    }
    for name, data in sorted(files.items()):
        assert len(data) < 4096, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(files)} files to {OUT}")


if __name__ == "__main__":
    main()
