"""MinHash signatures and LSH banding as pure numpy functions, compatible with datasketch.

Text → words (:func:`shingle_words`) → word n-gram shingles hashed without building a string per
shingle (:func:`shingle_hashes`) → signature under datasketch's ``affine32`` scheme (its default
since 2.0): each 32-bit shingle hash is pre-mixed with the MurmurHash3 finaliser, then permutation
k maps it to ``a_k * h + b_k mod 2^32``; the signature is the per-permutation minimum. For the same
seed, ``num_perm`` and shingle hash function (:func:`shingle_hash_bytes`, given to datasketch as
``hashfunc``), :func:`signature` equals ``datasketch.MinHash(...).hashvalues`` exactly.

Shingle hashing: the words' hashes come from one vectorised pass over the code points (no Python
object per word), and the n word hashes of a shingle are combined with a polynomial in uint64
arithmetic plus a final avalanche: a handful of numpy operations per document instead of a
Python call per shingle.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np
import xxhash

SCHEME = "affine32"  # datasketch's permutation scheme; recorded in indexes so refreshes can check it

_U32 = np.uint32
_U64 = np.uint64
_FMIX32 = (_U32(16), _U32(0x85EBCA6B), _U32(13), _U32(0xC2B2AE35), _U32(16))
_FMIX64 = (_U64(33), _U64(0xFF51AFD7ED558CCD), _U64(33), _U64(0xC4CEB9FE1A85EC53), _U64(33))
_POLY = _U64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio), order-sensitive combination
EMPTY = np.iinfo(np.uint32).max


def normalize_for_shingles(text: str) -> str:
    """NFKC, then casefold: "Straße", "STRASSE" and "strasse" shingle alike."""
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return text.casefold()


@lru_cache(maxsize=1)
def _word_char_table() -> np.ndarray:
    """Word characters: alphanumeric (str.isalnum) or a combining mark (Mn, Mc, Me), so that
    Devanagari, Bengali, Myanmar ... words are not cut at their vowel signs."""
    table = np.zeros(0x110000, dtype=bool)
    table[[i for i in range(0x110000) if chr(i).isalnum() or unicodedata.category(chr(i)) in ("Mn", "Mc", "Me")]] = True
    return table


def _word_spans(normalized: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points, word starts, word ends) of already normalised text."""
    cps = np.frombuffer(normalized.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    if cps.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return cps, empty, empty
    edges = np.diff(_word_char_table()[cps].view(np.int8), prepend=np.int8(0), append=np.int8(0))
    return cps, np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def shingle_words(text: str) -> list[str]:
    """The words shingles are made of: maximal runs of word characters (alphanumeric or combining
    marks) of the normalised text; punctuation, symbols, '_' and whitespace separate words.
    "Hello, World!" and "hello world" give the same words. (Reference path; :func:`word_hashes`
    is the fast one.)"""
    normalized = normalize_for_shingles(text)
    _, starts, ends = _word_spans(normalized)
    return [normalized[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


# Word hashing without a Python call per word: a polynomial hash of each word's code points,
# computed for all words at once from one prefix sum. With P odd, Q = P^-1 (mod 2^64) and
# G[i] = sum_{j<=i} c_j Q^j, the word [s, e) hashes to (G[e-1] - G[s-1]) P^(e-1)
# = sum_j c_j P^(e-1-j): uint64 wraparound is exactly the arithmetic mod 2^64 this needs.
_P = _U64(0x100000001B3)
_Q = _U64(pow(int(_P), -1, 1 << 64))
_LEN_MIX = _U64(0x9E3779B97F4A7C15)
_powers: dict[str, np.ndarray] = {"q": np.empty(0, dtype=_U64), "p": np.empty(0, dtype=_U64)}


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    if _powers["q"].size < n:
        m = max(n, 2 * _powers["q"].size, 1 << 14)
        with np.errstate(over="ignore"):
            _powers["q"] = np.cumprod(np.concatenate([[_U64(1)], np.full(m - 1, _Q, dtype=_U64)]), dtype=_U64)
            _powers["p"] = np.cumprod(np.concatenate([[_U64(1)], np.full(m - 1, _P, dtype=_U64)]), dtype=_U64)
    return _powers["q"][:n], _powers["p"][:n]


def _hash_words(normalized: str) -> np.ndarray:
    """uint64 hash of each word of already normalised text, in order."""
    cps, starts, ends = _word_spans(normalized)
    if starts.size == 0:
        return np.empty(0, dtype=_U64)
    qp, pp = _power_tables(cps.size)
    with np.errstate(over="ignore"):
        prefix = np.cumsum(cps.astype(_U64) * qp, dtype=_U64)
        before = np.where(starts > 0, prefix[starts - 1], _U64(0))
        h = (prefix[ends - 1] - before) * pp[ends - 1]
        h += (ends - starts).astype(_U64) * _LEN_MIX
        return _fmix(h, _FMIX64)


def word_hashes(text: str) -> np.ndarray:
    """uint64 hash of each word of :func:`shingle_words` (same words, same order)."""
    return _hash_words(normalize_for_shingles(text))


def _fmix(h: np.ndarray, consts) -> np.ndarray:
    s1, m1, s2, m2, s3 = consts
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def combine_shingles(wh: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of every word n-gram from the words' hashes (order-sensitive); empty if fewer
    than n words."""
    count = wh.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=_U64)
    with np.errstate(over="ignore"):
        h = wh[:count].copy()
        for k in range(1, n):
            h *= _POLY
            h += wh[k : k + count]
        return _fmix(h, _FMIX64)


def shingle_hashes64(text: str, n: int) -> np.ndarray:
    """64-bit hashes of the document's word n-gram shingles (repeats included)."""
    return combine_shingles(word_hashes(text), n)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit shingle hashes (the low half of :func:`shingle_hashes64`), as datasketch expects."""
    return shingle_hashes64(text, n).astype(_U32)


def shingle_hash_bytes(shingle: bytes) -> int:
    """The 32-bit hash of one shingle given as its words (from :func:`shingle_words`) joined by
    single spaces: pass this to ``datasketch.MinHash(hashfunc=...)`` to get the signatures
    :func:`signature` computes."""
    wh = _hash_words(shingle.decode("utf-8"))
    return int(combine_shingles(wh, wh.size)[0].astype(_U32))


def shingles_as_bytes(words: list[str], n: int) -> list[bytes]:
    """The shingles as datasketch is fed them (reference and tests only: slow by design)."""
    return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of datasketch's affine32 scheme: the same random draws from ``RandomState(seed)``."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=_U32) * _U32(2) + _U32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=_U32)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def signature(hashes: np.ndarray, num_perm: int = 256, seed: int = 1, chunk: int = 2048) -> np.ndarray:
    """MinHash signature (uint32[num_perm]) of a set of 32-bit shingle hashes.

    Repeated hashes do not change a minimum, so they are not removed first. Work is chunked so a
    giant document costs ``chunk × num_perm × 4`` bytes of scratch at most.
    """
    a, b = permutations(num_perm, seed)
    sig = np.full(num_perm, EMPTY, dtype=_U32)
    if hashes.size == 0:
        return sig
    with np.errstate(over="ignore"):
        mixed = _fmix(hashes.astype(_U32, copy=False), _FMIX32)
        for start in range(0, mixed.size, chunk):
            part = mixed[start : start + chunk]
            phv = np.multiply.outer(part, a)  # (chunk, num_perm), wraps mod 2^32
            phv += b
            np.minimum(sig, phv.min(axis=0), out=sig)
    return sig


def text_signature(text: str, n: int = 5, num_perm: int = 256, seed: int = 1) -> np.ndarray | None:
    """Signature of a document, or None when it is shorter than one shingle (such documents are
    deduplicated by exact hash only)."""
    hashes = shingle_hashes(text, n)
    if hashes.size == 0:
        return None
    return signature(hashes, num_perm, seed)


def jaccard(a: np.ndarray, b: np.ndarray, sorted_unique: bool = False) -> float:
    """Exact Jaccard similarity of two shingle sets given as hash arrays (64-bit hashes make a
    collision between distinct shingles a 2^-64 event). ``sorted_unique``: both arrays are already
    sorted and free of repeats (``np.unique``'s output, as verification keeps them): no sort here,
    one binary search per element of the smaller set."""
    if not sorted_unique:
        a, b = np.unique(a), np.unique(b)
    if a.size == 0 and b.size == 0:
        return 1.0
    if a.size == 0 or b.size == 0:
        return 0.0
    if a.size > b.size:
        a, b = b, a
    at = np.searchsorted(b, a)
    at[at == b.size] = 0
    inter = int(np.count_nonzero(b[at] == a))
    return inter / (a.size + b.size - inter)


# ---------------------------------------------------------------------------------------------
# LSH banding
# ---------------------------------------------------------------------------------------------


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int):
    """Probability that two documents of this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


@lru_cache(maxsize=64)
def optimal_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive and negative areas under the S-curve,
    the way ``datasketch.MinHashLSH`` chooses them (same integrals, same search order)."""
    from scipy.integrate import quad

    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp, _ = quad(lambda s, r=r, b=b: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)
            fn, _ = quad(lambda s, r=r, b=b: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def lsh_params(cfg) -> tuple[int, int]:
    """(bands, rows) of a :class:`~gristmill.config.NearDedupConfig`: as set, or chosen from its
    threshold and weights the way datasketch does."""
    if cfg.bands:
        return cfg.bands, cfg.rows
    return optimal_params(cfg.threshold, cfg.num_perm, *cfg.weights())


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 64-bit key per band: xxh64 of the band's values (little-endian uint32) seeded by the
    band index, so equal values in different bands never collide."""
    data = sig[: bands * rows].astype("<u4", copy=False)
    return [xxhash.xxh64_intdigest(data[i * rows : (i + 1) * rows].tobytes(), seed=i) for i in range(bands)]
