"""Calibration deciles over subject buckets, without gathering the fitted values.

``diagnostics.calibration(y, fitted)`` needs every row's predicted rate at once (one
``np.partition``). Here the fitted values stay in their buckets (``.npy`` files, Dask workers) and
each bucket returns only small statistics; the driver adds them. The result is EXACTLY that of
``calibration(np.concatenate(ys), np.concatenate(mus))``: the same order statistics at the bin
edges (bit for bit), the same bin of every row (rows tied with an edge value placed by their row
order in the concatenation, buckets in order), the same integer counts; the predicted and observed
sums differ only by summation order (and not at all with one bucket).

How the order statistics are found without a sort (a distributed radix select on the keys):

1. Every float64 is mapped to a uint64 key with the same order (the sign bit flipped for positive
   values, all bits for negative ones; -0.0 shares 0.0's key, every NaN gets the largest key, as
   ``np.sort``/``np.partition`` put NaN last). Keys make the search exact: no equal-width bins
   over [min, max] whose edges round, no special case for values differing in the last bit;
   infinities are ordinary keys.
2. Pass 1 per bucket (``bucket_summary``): its row count, smallest and largest key. All values
   equal (smallest = largest) ends the search here.
3. Then refinement passes (``bucket_refine``), each one ``mapper`` call over the buckets. The
   driver keeps the key intervals ("bins") holding the positions k that ``calibration`` reads
   (at most 2 * bins + 2 of them), each with the rows below and in it. Per bin, a bucket returns
   either a histogram of the next bits of its rows' keys, from the first bit in which the bin's
   keys differ (``ROOT_BITS`` = 16 for the first, over all rows; ``STEP_BITS`` = 8 later), from
   which the driver narrows each k to one sub-bin; or, once the bin holds at most ``max_values``
   rows (all buckets together), its rows' values, from which the driver reads the k-th values and
   each bucket's count of rows equal to them. A bin whose smallest and largest keys are equal
   (heavy ties, e.g. three distinct rates) is resolved from its per-bucket counts, without values:
   a bucket also returns the smallest and largest key of a bin when the driver does not know them.
   A bin too big for values (after the first histogram) is first asked for its distinct keys
   with their counts (at most ``max_distinct`` per bucket, else a histogram): a heavy tie with
   a few other values nearby resolves in that one pass, where histograms would need a pass per
   8 bits of the gap between the tied value and its nearest neighbour.
   The bins holding some k are identical or disjoint (positions in one bin share its fate), so a
   bucket finds each row's bin with one gather from a table of 2**16 slots. Typically two
   refinement passes (a histogram, then values); with the 36.5M rows of 100,000 x 365 too (the
   16-bit histogram leaves a few thousand rows per bin); at most ceil(52 / 8) + 1 of them.
4. Last pass per bucket (``bucket_assign``): each row's bin exactly as ``calibration`` computes
   it, with the bucket's tie offsets (rows of earlier buckets equal to each edge value) so tied
   rows take their positions in concatenation order; the per-bin counts and sums.

What a bucket returns is bounded whatever the data: three numbers in pass 1; per open bin at most
2**16 (first histogram) or 2**8 (digit, count) pairs, or at most ``max_distinct`` (key, count)
pairs, or the values of a bin of at most ``max_values`` rows all buckets together (under 10 MiB
at the driver in all for 10 bins); 3 x bins numbers in the last pass. Work per pass is O(rows of
the bucket), vectorised (one sort of a big bin's rows where its distinct keys are asked for); the
Python loops are over the edges, the open bins and the buckets' small results. One difference from
``calibration``: where rows equal -0.0 and 0.0 at an edge, ``predicted_rate_min``/``max`` may be
either zero (``np.partition`` returns whichever it meets); fitted rates are positive.

The per-bucket functions are module-level and pure in (handle, arguments) so an executor can
pickle them to Dask workers; ``load(handle) -> (y, fitted)`` runs inside them (a module-level
function too; ``np.load(path, mmap_mode="r")`` reads only the columns a pass touches: passes 1-3
read the fitted values alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

N_CALIBRATION_BINS = 10
#: Key bits of the first histogram (over all rows, from the first bit in which the smallest and
#: largest keys differ): at most 65,536 (digit, count) pairs, 384 KiB, per bucket.
ROOT_BITS = 16
#: Key bits each later histogram adds within a bin holding an order statistic (256 sub-bins).
STEP_BITS = 8
#: A bin holding an order statistic is returned as values once it holds at most this many rows
#: (all buckets together): at most 2 * bins such bins, so under 10 MiB at the driver for 10 bins.
MAX_VALUES = 1 << 16
#: A bin with more rows is first asked for its distinct keys with their counts (at most this many
#: per bucket, 64 KiB): a heavy tie among a few other values resolves in one pass, where
#: histograms would take a pass per 8 bits of the gap to the nearest other value.
MAX_DISTINCT = 4096

_SIGN = np.uint64(1 << 63)
_MAX_KEY = np.uint64((1 << 64) - 1)


def _map_in_order(fn: Callable, handles: Sequence[Any], *args: Any) -> list[Any]:
    return [fn(h, *args) for h in handles]


def _load_bucket(load: Callable, handle: Any) -> tuple[np.ndarray, np.ndarray]:
    y, mu = load(handle)
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if y.ndim != 1 or y.shape != mu.shape:
        raise ValueError(f"a bucket's y and fitted values must be 1-D of one length, "
                         f"got shapes {y.shape} and {mu.shape}")
    return y, mu


def float_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 ``values``: key(a) < key(b) iff a < b; -0.0 and
    0.0 share one key (they compare equal); every NaN has the largest key (sorted last, as by
    ``np.sort`` and ``np.partition``)."""
    values = np.asarray(values, dtype=float)
    keys = np.add(values, 0.0).view(np.int64)  # a copy; + 0.0 turns -0.0 into 0.0
    flip = np.right_shift(keys, 63)  # -1 for negative values, else 0
    np.bitwise_and(flip, 0x7FFF_FFFF_FFFF_FFFF, out=flip)
    keys ^= flip  # negative values: every bit but the sign flipped
    keys = keys.view(np.uint64)
    keys ^= _SIGN
    nan = np.isnan(values)
    if nan.any():
        keys[nan] = _MAX_KEY
    return keys


def key_value(key: int) -> float:
    """The float64 of a key (``float_keys``' inverse; the largest key is a NaN)."""
    bits = key ^ (1 << 63) if key >> 63 else ~key & ((1 << 64) - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _sparse(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nonzero bins of a histogram of at most 2**16 bins, compactly (6 bytes a bin)."""
    nz = np.flatnonzero(counts)
    c = counts[nz]
    return nz.astype(np.uint16), c.astype(np.uint32) if c.size and c.max() < 2**32 else c


def bucket_summary(handle: Any, load: Callable) -> tuple[int, int | None, int | None]:
    """Pass 1 of one bucket: its row count and its smallest and largest key (None if empty)."""
    _, mu = _load_bucket(load, handle)
    if mu.shape[0] == 0:
        return 0, None, None
    keys = float_keys(mu)
    return int(mu.shape[0]), int(keys.min()), int(keys.max())


def bucket_refine(handle: Any, load: Callable, frame: tuple[int, int, int], lo: np.ndarray,
                  hi: np.ndarray, base: np.ndarray, shift: np.ndarray, width: np.ndarray,
                  as_values: np.ndarray, want_range: np.ndarray, distinct: np.ndarray,
                  max_distinct: int) -> list:
    """A refinement pass of one bucket over disjoint key bins ``[lo, hi]`` (sorted). Per bin,
    either its rows' values (``as_values``; unsorted), or the nonzero (digits, counts) of
    ``(key - base) >> (shift - width)`` (``width`` bits; ``base`` aligned to ``2**shift``)
    and, where ``want_range``, the smallest and largest key of its rows (None: no rows).
    Where ``distinct`` (a bin too big to return as values, perhaps a heavy tie), the distinct
    keys of its rows with their counts instead, as a dict, if there are at most
    ``max_distinct`` of them in this bucket.

    ``frame`` = (origin, coarse shift, slots) cuts the keys of all rows into at most 2**16
    slots: a table of the bin (or "none", or "two bins share the slot") of each slot finds each
    row's candidate bin with one gather, and only rows in a slot touching some bin are compared
    with its bounds (few once the bins are narrow)."""
    _, mu = _load_bucket(load, handle)
    keys = float_keys(mu)
    r = lo.shape[0]
    if r == 1 and not as_values[0] and not want_range[0] and keys.size \
            and lo[0] <= keys.min() and keys.max() <= hi[0]:  # the first histogram: all rows
        digit = (keys - base[0]) >> np.uint64(shift[0] - width[0])
        return [_sparse(np.bincount(digit.astype(np.intp), minlength=1 << int(width[0])))
                + (None,)]
    origin, coarse, n_slots = frame
    o, c = np.uint64(origin), np.uint64(coarse)
    first_slot = ((lo - o) >> c).astype(np.intp)
    last_slot = ((hi - o) >> c).astype(np.intp)
    table = np.full(n_slots, -1, dtype=np.int32)
    for i in range(r):  # bins are sorted and disjoint: only end slots can be shared
        table[first_slot[i]:last_slot[i] + 1] = i
    table[first_slot[1:][first_slot[1:] == last_slot[:-1]]] = -2
    rows = np.flatnonzero(table[((keys - o) >> c).astype(np.intp)] != -1)
    kr = keys[rows]
    j = table[((kr - o) >> c).astype(np.intp)].astype(np.intp)
    shared = j == -2
    if shared.any():
        j[shared] = np.searchsorted(lo, kr[shared], side="right") - 1
    jc = np.maximum(j, 0)
    inside = (j >= 0) & (kr >= lo[jc]) & (kr <= hi[jc])
    rows, j = rows[inside], j[inside]
    hist = ~as_values[j]
    jh, kh = j[hist], keys[rows[hist]]
    digit = (kh - base[jh]) >> (shift - width).astype(np.uint64)[jh]
    stride = 1 << int(width.max())
    H = np.bincount(jh * stride + digit.astype(np.intp), minlength=r * stride).reshape(r, stride)
    ranged = (want_range & ~distinct)[jh]
    kmin = np.full(r, _MAX_KEY, dtype=np.uint64)
    kmax = np.zeros(r, dtype=np.uint64)
    if ranged.any():
        np.minimum.at(kmin, jh[ranged], kh[ranged])
        np.maximum.at(kmax, jh[ranged], kh[ranged])
    vrows, vj = rows[~hist], j[~hist]
    order = np.argsort(vj, kind="stable")
    vals = np.split(mu[vrows[order]], np.cumsum(np.bincount(vj, minlength=r))[:-1])
    out: list = []
    for i in range(r):
        if as_values[i]:
            out.append(vals[i])
            continue
        digits, counts = _sparse(H[i][: 1 << int(width[i])])
        bounds = (int(kmin[i]), int(kmax[i])) if want_range[i] and counts.size else None
        if distinct[i]:
            keys_i, counts_i = np.unique(kh[jh == i], return_counts=True)
            if keys_i.size <= max_distinct:
                out.append({"keys": keys_i, "counts": counts_i})
                continue
            bounds = (int(keys_i[0]), int(keys_i[-1]))
        out.append((digits, counts, bounds))
    return out


def bucket_assign(item: tuple[Any, np.ndarray], load: Callable, bins: int, n: int,
                  edges: np.ndarray, tie_values: np.ndarray, below: np.ndarray) -> tuple:
    """Last pass of one bucket: each row's bin as ``diagnostics.calibration`` computes it, and
    the per-bin counts, predicted and observed sums. ``item`` is (handle, this bucket's tie
    offsets: rows of earlier buckets equal to each of ``tie_values``); ``below`` holds the rows
    of all buckets below each tie value."""
    handle, offsets = item
    y, mu = _load_bucket(load, handle)
    decile = np.zeros(mu.shape[0], dtype=np.uint8 if bins < 256 else np.intp)
    for edge in edges:
        decile += mu > edge
    for v, b, o in zip(tie_values.tolist(), below.tolist(), offsets.tolist()):
        tied = np.flatnonzero(mu == v)
        if tied.size:
            decile[tied] = (b + o + np.arange(tied.size)) * bins // n
    # (astype: numpy's weighted bincount of no rows is int64)
    return (np.bincount(decile, minlength=bins),
            np.bincount(decile, weights=mu, minlength=bins).astype(float, copy=False),
            np.bincount(decile, weights=y, minlength=bins).astype(float, copy=False))


def order_positions(n: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``calibration``'s positions in the sorted order: the first of each bin 1..bins-1 (below
    n), and every position whose value the table or the binning needs."""
    first = np.array([(b * n + bins - 1) // bins for b in range(1, bins)], dtype=np.int64)
    first = first[first < n]
    return first, np.unique(np.r_[0, n - 1, first, first - 1])


def _locate(ks: list[int], below: int, H: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """Bin (digit) of each sorted position k in histogram ``H`` of a bin with ``below`` rows
    under it: k -> (digit, rows under the digit's bin, rows in it)."""
    cum = np.cumsum(H)
    out = {}
    for k in ks:
        d = int(np.searchsorted(cum, k - below, side="right"))
        out[k] = (d, below + (int(cum[d - 1]) if d else 0), int(H[d]))
    return out


def _as_histogram(part: dict, base: int, shift: int, width: int) -> tuple:
    """A bucket's distinct keys of a bin (sorted) as its histogram response."""
    keys, counts = part["keys"], part["counts"]
    if keys.size == 0:
        return np.zeros(0, np.uint16), np.zeros(0, np.int64), None
    digits = ((keys - np.uint64(base)) >> np.uint64(shift - width)).astype(np.intp)
    return (*_sparse(np.bincount(digits, weights=counts, minlength=1 << width).astype(np.int64)),
            (int(keys[0]), int(keys[-1])))


def _count_at(part: tuple, digit: int) -> int:
    digits, counts = part[0], part[1]
    return int(counts[digits == digit].sum())


class _Bin:
    """A key interval holding some sorted positions: every row with a key in [lo, hi] (bounds
    on its rows' keys; ``exact`` when they are the smallest and largest) and no other."""

    def __init__(self, lo: int, hi: int, exact: bool, below: int, count: int, per_bucket):
        self.lo, self.hi, self.exact = lo, hi, exact
        self.below, self.count = below, count
        self.ks: list[int] = []
        self._per_bucket = per_bucket  # an array, or (per-bucket histograms, digit)

    def per_bucket(self) -> np.ndarray:
        """Rows of each bucket in the bin (needed only when it comes down to one key)."""
        if isinstance(self._per_bucket, tuple):
            parts, d = self._per_bucket
            self._per_bucket = np.array([_count_at(p, d) for p in parts], dtype=np.int64)
        return self._per_bucket


def calibration_by_buckets(buckets: Sequence[Any], load: Callable[[Any], tuple],
                           mapper: Callable[..., list] | None = None,
                           bins: int = N_CALIBRATION_BINS, *,
                           max_values: int = MAX_VALUES,
                           max_distinct: int = MAX_DISTINCT) -> list[dict]:
    """``diagnostics.calibration(np.concatenate(ys), np.concatenate(mus), bins)`` over buckets
    whose ``(y, fitted)`` = ``load(handle)`` are never gathered (see the module docstring).

    ``mapper(fn, handles, *args) -> list`` maps a module-level per-bucket function over the
    handles, results in order (``pipeline.execution.current().map``; default: in this thread,
    in order). ``load`` runs inside those functions, so it must be module-level too for Dask.
    Bucket order is row order: rows tied with an edge value are placed as in the concatenation.
    ``max_values`` bounds the values returned per bin holding an order statistic (all buckets
    together); smaller means more refinement passes, 0 refines every such bin to a single key.
    ``max_distinct`` bounds the distinct keys a bucket returns for a larger bin (0: never)."""
    handles = list(buckets)
    mapper = mapper or _map_in_order
    summaries = list(mapper(bucket_summary, handles, load))
    sizes = np.array([s[0] for s in summaries], dtype=np.int64)
    n = int(sizes.sum())
    if n == 0:
        return []
    first, kth = order_positions(n, bins)
    edge_positions = set(first.tolist())
    root = _Bin(min(s[1] for s in summaries if s[0]), max(s[2] for s in summaries if s[0]),
                True, 0, n, sizes)
    root.ks = kth.tolist()
    # The slots of ``bucket_refine``'s table: ROOT_BITS bits from the first bit in which the
    # smallest and largest keys differ (the root histogram's digits).
    root_shift = (root.lo ^ root.hi).bit_length()
    coarse = max(root_shift - ROOT_BITS, 0)
    origin = root.lo >> root_shift << root_shift
    frame = (origin, coarse, ((root.hi - origin) >> coarse) + 1)
    open_bins = [root]
    value_at: dict[int, float] = {}
    ties: dict[int, tuple[int, np.ndarray]] = {}  # edge position -> (rows below, per bucket ==)

    def resolve_single_key(node: _Bin) -> None:
        v = key_value(node.lo)
        tied = np.zeros(len(handles), np.int64) if np.isnan(v) else node.per_bucket()
        for k in node.ks:
            value_at[k] = v
            if k in edge_positions:
                ties[k] = (node.below, tied)

    def resolve_distinct(node: _Bin, parts: list[dict]) -> None:
        keys, where = np.unique(np.concatenate([p["keys"] for p in parts]), return_inverse=True)
        total = np.zeros(keys.size, dtype=np.int64)
        np.add.at(total, where, np.concatenate([p["counts"] for p in parts]))
        cum = np.cumsum(total)
        for k in node.ks:
            u = int(np.searchsorted(cum, k - node.below, side="right"))
            key = int(keys[u])
            value_at[k] = key_value(key)
            if k in edge_positions:
                tied = np.array([int(p["counts"][p["keys"] == key].sum()) for p in parts])
                ties[k] = (node.below + (int(cum[u - 1]) if u else 0), tied)

    while open_bins:
        requests = []
        for node in sorted(open_bins, key=lambda b: b.lo):
            if node.lo == node.hi:  # one key: every row in the bin has this value
                resolve_single_key(node)
            elif node.count <= max_values:
                requests.append((node, True, 0, 0, 0))
            else:  # histogram of the next bits after those all its keys share
                shift = (node.lo ^ node.hi).bit_length()
                requests.append((node, False, node.lo >> shift << shift, shift,
                                 min(shift, ROOT_BITS if node is root else STEP_BITS)))
        if not requests:
            break
        results = list(mapper(
            bucket_refine, handles, load, frame,
            np.array([r[0].lo for r in requests], dtype=np.uint64),
            np.array([r[0].hi for r in requests], dtype=np.uint64),
            np.array([r[2] for r in requests], dtype=np.uint64),
            np.array([r[3] for r in requests], dtype=np.int64),
            np.array([r[4] for r in requests], dtype=np.int64),
            np.array([r[1] for r in requests], dtype=bool),
            np.array([not r[0].exact for r in requests], dtype=bool),
            np.array([not r[1] and r[0] is not root for r in requests], dtype=bool),
            max_distinct))
        open_bins = []
        for i, (node, values, base, shift, w) in enumerate(requests):
            parts = [r[i] for r in results]
            if values:
                allv = np.sort(np.concatenate(parts))
                for k in node.ks:
                    v = float(allv[k - node.below])
                    value_at[k] = v
                    if k in edge_positions:
                        ties[k] = (node.below + int(np.count_nonzero(allv < v)),
                                   np.array([np.count_nonzero(x == v) for x in parts], np.int64))
                continue
            if all(isinstance(p, dict) for p in parts):  # every bucket's distinct keys
                resolve_distinct(node, parts)
                continue
            parts = [_as_histogram(p, base, shift, w) if isinstance(p, dict) else p
                     for p in parts]
            lo, hi = node.lo, node.hi
            if not node.exact:
                bounds = [p[2] for p in parts if p[2] is not None]
                lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
                if lo == hi:
                    node.lo = node.hi = lo
                    resolve_single_key(node)
                    continue
            H = np.zeros(1 << w, dtype=np.int64)
            for p in parts:
                H[p[0]] += p[1]  # (a bucket's digits are distinct)
            step = 1 << (shift - w)
            children: dict[int, _Bin] = {}
            for k, (d, below, count) in _locate(node.ks, node.below, H).items():
                if d not in children:
                    start = base + d * step
                    children[d] = _Bin(max(lo, start), min(hi, start + step - 1), False,
                                       below, count, (parts, d))
                children[d].ks.append(k)
            open_bins.extend(children.values())

    edges = np.array([value_at[k] for k in first.tolist()], dtype=float)
    tie_values = np.unique(edges)
    below = np.zeros(tie_values.shape[0], dtype=np.int64)
    tied = np.zeros((len(handles), tie_values.shape[0]), dtype=np.int64)
    for u, v in enumerate(tie_values.tolist()):
        if np.isnan(v):  # nothing equals NaN: no tied rows (as in ``calibration``)
            continue
        k = int(first[np.flatnonzero(edges == v)[0]])
        below[u], tied[:, u] = ties[k]
    offsets = np.cumsum(tied, axis=0) - tied
    items = [(h, offsets[b]) for b, h in enumerate(handles)]
    parts = list(mapper(bucket_assign, items, load, bins, n, edges, tie_values, below))
    counts, predicted, observed = (parts[0][i].copy() for i in range(3))
    for part in parts[1:]:
        counts += part[0]
        predicted += part[1]
        observed += part[2]
    return decile_table(counts, predicted, observed, value_at)


def decile_table(counts: np.ndarray, predicted: np.ndarray, observed: np.ndarray,
                 sorted_at: dict[int, float]) -> list[dict]:
    """The calibration rows of the non-empty bins: counts and sums per bin, and the predicted
    rates at each bin's first and last position of the sorted order (``sorted_at``)."""
    starts = np.r_[0, np.cumsum(counts)]
    table = []
    for b in np.flatnonzero(counts):
        table.append({
            "decile": int(b) + 1,
            "n_subject_days": int(counts[b]),
            "predicted_episodes": float(predicted[b]),
            "observed_episodes": float(observed[b]),
            "predicted_rate_min": sorted_at[int(starts[b])],
            "predicted_rate_max": sorted_at[int(starts[b + 1]) - 1],
        })
    return table
