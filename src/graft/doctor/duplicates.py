"""Duplicates: the same input twice, within a split or across splits (leakage), and copies that differ a little.

Kinds, from the surest to the loosest: `exact` (the same text, or the same image bytes), `normalized` (texts equal
once case and spacing are ignored), `near` (texts whose character 5-gram sets overlap by a Jaccard similarity of at
least NEAR_JACCARD: a word or two changed), `image` (perceptual hashes within IMAGE_BITS bits: a copy resized or
re-encoded) and `semantic` (frozen features with cosine similarity of at least COSINE). Pairs are found without
comparing all of them: texts through MinHash LSH (datasketch), image hashes through exact matches on hash chunks,
features through normalised matrix products in blocks; each candidate pair is then checked exactly.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.checks import normalize_text

NEAR_JACCARD = 0.7
"""A one-word edit of a 12-word sentence keeps about 0.75 of its 5-grams; unrelated sentences share under 0.3."""
SHINGLE = 5
IMAGE_BITS = 6
"""Of the 64 bits of a perceptual hash; a resized or re-encoded copy differs in 0 to 4, unrelated images in ~32."""
COSINE = 0.97
"""Frozen-feature cosine similarity above which two inputs are reported as saying the same thing."""
SAME_INPUT = ("exact", "normalized", "image")
"""Kinds whose members are one input: different labels on them are a conflict, not two examples."""


@dataclass
class Group:
    kind: str
    members: list[int]
    """Flat example positions, ascending."""
    similarity: float
    """The lowest similarity of the pairs that joined the group (1 for exact copies)."""


class Clusters:
    """Union-find over positions 0..n-1, remembering each union's similarity."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.low: dict[int, float] = {}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int, similarity: float) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.low[a] = min(similarity, self.low.pop(a, 1.0), self.low.pop(b, 1.0))
            self.parent[b] = a

    def groups(self) -> list[tuple[list[int], float]]:
        members: defaultdict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            members[self.find(i)].append(i)
        return [(m, self.low.get(root, 1.0)) for root, m in members.items() if len(m) > 1]


def text_duplicates(texts: Sequence[str], near: float = NEAR_JACCARD) -> list[Group]:
    """Exact, normalised and near-duplicate groups of `texts`."""
    by_form: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        by_form[normalize_text(text)].append(i)
    groups = [Group("exact" if len({texts[i] for i in m}) == 1 else "normalized", m, 1.0)
              for m in by_form.values() if len(m) > 1]
    forms = list(by_form)
    for members, similarity in near_texts(forms, near):
        groups.append(Group("near", sorted(i for f in members for i in by_form[forms[f]]), similarity))
    return groups


def near_texts(forms: Sequence[str], threshold: float, num_perm: int = 64) -> list[tuple[list[int], float]]:
    """Groups of distinct (normalised) texts whose 5-gram sets have a Jaccard similarity of at least `threshold`."""
    from datasketch import MinHashLSH

    if len(forms) < 2:
        return []
    shingles = [shingles_of(form) for form in forms]
    hashes = signatures(shingles, num_perm)
    # Candidates at a lower estimate, so that MinHash's error does not lose a pair the exact check would keep.
    lsh = MinHashLSH(threshold=max(0.1, threshold - 0.15), num_perm=num_perm)
    clusters = Clusters(len(forms))
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            similarity = jaccard(shingles[i], shingles[j])
            if similarity >= threshold:
                clusters.join(j, i, similarity)
        lsh.insert(i, h)
    return clusters.groups()


def signatures(shingles: list[set[str]], num_perm: int = 64) -> list[Any]:
    """Each shingle set's MinHash. CRC-32 hashes the shingles: several times faster than datasketch's SHA-1, and the
    same in every process (Python's own hash() is salted per process: the signatures, and so which pairs LSH
    offered, changed from run to run, and about one run in forty lost a near copy)."""
    from datasketch import MinHash

    return MinHash.bulk(shingles, num_perm=num_perm, hashfunc=lambda s: zlib.crc32(s.encode()))


def shingles_of(text: str) -> set[str]:
    return {text[i: i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def file_digests(paths: Sequence[str]) -> list[str]:
    """A content hash of each file: the same bytes under two names are one image."""
    out = []
    for path in paths:
        digest = hashlib.blake2b(digest_size=16)
        with Path(path).open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
        out.append(digest.hexdigest())
    return out


def image_duplicates(digests: Sequence[str], hashes: Sequence[int | None], bits: int = IMAGE_BITS) -> list[Group]:
    """Exact (same bytes) and perceptual (phash within `bits` bits) groups; `hashes[i]` None: unreadable."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        by_digest[digest].append(i)
    groups = [Group("exact", m, 1.0) for m in by_digest.values() if len(m) > 1]
    readable = [m for m in by_digest.values() if hashes[m[0]] is not None]
    for found, similarity in close_hashes([hashes[m[0]] for m in readable], bits):  # type: ignore[misc]
        groups.append(Group("image", sorted(i for f in found for i in readable[f]), similarity))
    return groups


def close_hashes(hashes: Sequence[int], bits: int) -> list[tuple[list[int], float]]:
    """Groups of 64-bit hashes within `bits` differing bits. Two such hashes agree exactly on at least one of
    `bits + 1` chunks (pigeonhole), so only hashes sharing a chunk are compared."""
    clusters = Clusters(len(hashes))
    width = -(-64 // (bits + 1))
    for start in range(0, 64, width):
        buckets: defaultdict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> start) & ((1 << width) - 1)].append(i)
        for bucket in buckets.values():
            for a, i in enumerate(bucket):
                for j in bucket[a + 1:]:
                    distance = (hashes[i] ^ hashes[j]).bit_count()
                    if distance <= bits and clusters.find(i) != clusters.find(j):
                        clusters.join(i, j, 1 - distance / 64)
    return clusters.groups()


@dataclass
class Neighbours:
    pairs: list[tuple[int, int, float]]
    """(i, j, cosine) with i < j and cosine at least the threshold."""
    isolation: np.ndarray
    """1 - the mean cosine to each example's `k` nearest others: high for an input unlike any other."""
    crowded: bool
    """More than MAX_PAIRS_PER_EXAMPLE close pairs per example: the features cannot tell inputs apart (a random or
    unsuited backbone), so `pairs` is cut short and means nothing."""


MAX_PAIRS_PER_EXAMPLE = 2


def neighbours(features: np.ndarray, threshold: float = COSINE, k: int = 5, budget: int = 1 << 24) -> Neighbours:
    """Close pairs and isolation by cosine similarity, in blocks of rows so that memory stays near `budget`
    floats."""
    x = features.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = min(k, n - 1)
    isolation = np.zeros(n, dtype=np.float32)
    pairs: list[tuple[int, int, float]] = []
    step = max(1, budget // max(n, 1))
    for start in range(0, n, step):
        sims = x[start: start + step] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        if k > 0:
            isolation[start: start + len(sims)] = 1 - np.partition(sims, -k, axis=1)[:, -k:].mean(1)
        i, j = np.nonzero(sims >= threshold)
        if len(pairs) <= MAX_PAIRS_PER_EXAMPLE * n:
            pairs += [(start + a, b, float(sims[a, b])) for a, b in zip(i.tolist(), j.tolist(), strict=True)
                      if b > start + a]
    crowded = len(pairs) > MAX_PAIRS_PER_EXAMPLE * n
    return Neighbours([] if crowded else pairs, isolation, crowded)


def semantic_duplicates(pairs: Iterable[tuple[int, int, float]], n: int, groups: Sequence[Group]) -> list[Group]:
    """Groups joined by close features, leaving out pairs already in one group of another kind."""
    known = Clusters(n)
    for group in groups:
        for other in group.members[1:]:
            known.join(group.members[0], other, 1.0)
    clusters = Clusters(n)
    for i, j, similarity in pairs:
        if known.find(i) != known.find(j):
            clusters.join(i, j, similarity)
    return [Group("semantic", members, similarity) for members, similarity in clusters.groups()]
