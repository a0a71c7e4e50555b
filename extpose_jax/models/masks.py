"""Token layout and attention masks: which query token may see which key token.

ExtPose adds no parameters; everything it adds is in the mask. The mask has two factors:

- a STATIC structure (numpy bool (N_tok, N_tok), True = may attend), a function of the token
  layout and a declarative `MaskSpec` (optionally per layer). It is known while tracing, so
  kernels can skip whole blocks it rules out (`block_pattern`);
- a DYNAMIC per-sample key validity (jax bool (B, N_tok)): modality dropout makes a modality's
  keys vanish, padded frames (and missing views) vanish. It only ever removes keys.

Token layout
------------
Tokens are laid out [T, V, M, N] (frames, views, modalities, patches per stream), flattened
row-major, so the S = T*V*M streams come in (t, v, m) order and token = stream*N + patch.
A "view" is any separately cropped stream of the same frame: a camera view, or a body part
crop (body + hand crops) labelled by an optional part index per view.

Mask semantics (our concrete reading of the paper)
------------------------------------------------------------------
Within one view (same view index), by `strategy`:
  'frame'       same frame and same modality (each stream alone: the original image ViT)
  'multimodal'  same frame, any modality
  'extpose'     same frame OR same modality: cross-modal only within a frame, cross-frame only
                within a modality (paper's Eq. 11 reconstruction)
  'full'        every pair
Across views (different view index), only when switched on:
  `cross_view`  pairs of views with the SAME part (camera views of one crop): allowed when
                same frame and same modality (our rule: the paper gives no mechanism)
  `cross_part`  pairs of views with DIFFERENT parts (body crop <-> hand crop): allowed when
                same frame and same modality (likewise our rule)
  Under 'full' a switched-on cross-view/part pair allows every frame and modality.
  Without part labels every view has part 0, so only `cross_view` applies. A layout with
  both several cameras and several parts needs the view index to enumerate (camera, part);
  camera identity itself is not modelled (two different parts never count as "cross-view").
Then ANDed over every pair:
  `window=w`    |t - t'| <= w
  `causal`      t' <= t (streaming)
The diagonal is always allowed (no rule above can forbid a token seeing itself), so a query
row is empty only through the dynamic key validity.

Note that masks compose across blocks: under 'extpose' RGB of frame t never sees the skeleton
of frame t' != t in ONE block, but after two blocks it does (S_t' -> R_t' -> R_t). Only
'frame', 'multimodal', windows of 0 and causality are closed under composition.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np

STRATEGIES = ('frame', 'multimodal', 'extpose', 'full')


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """The token sequence [T, V, M, N], flattened row-major. Hashable: a static jit argument.

    frames: T; views: V; modalities: M names in stream order (e.g. ('rgb', 'skeleton'));
    patches: N tokens per stream (192 for a 256x192 ViTPose input);
    parts: optional part index per view (e.g. (0, 1, 2) for body, left hand, right hand).
    """

    frames: int = 1
    views: int = 1
    modalities: tuple[str, ...] = ('rgb',)
    patches: int = 192
    parts: tuple[int, ...] | None = None

    def __post_init__(self):
        # Lists would make the layout unhashable (and so unusable as a static argument).
        object.__setattr__(self, 'modalities', tuple(self.modalities))
        if self.parts is not None:
            object.__setattr__(self, 'parts', tuple(int(p) for p in self.parts))
        for name in ('frames', 'views', 'patches'):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f'TokenLayout.{name} must be a positive int, got {value!r}')
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f'TokenLayout.modalities must be non-empty and unique, got {self.modalities!r}'
            )
        if self.parts is not None and len(self.parts) != self.views:
            raise ValueError(
                f'TokenLayout.parts has {len(self.parts)} entries for {self.views} views; '
                'give one part index per view'
            )

    @property
    def streams(self) -> int:
        """Number of images (T * V * M): the S axis of the ViT input."""
        return self.frames * self.views * len(self.modalities)

    @property
    def n_tokens(self) -> int:
        return self.streams * self.patches

    def modality_index(self, name: str) -> int:
        if name not in self.modalities:
            raise ValueError(f'unknown modality {name!r}; this layout has {self.modalities}')
        return self.modalities.index(name)

    # Per-stream attributes, (S,) int arrays in stream order.
    @functools.cached_property
    def _stream_attrs(self):
        t, v, m = np.indices((self.frames, self.views, len(self.modalities))).reshape(3, -1)
        p = np.asarray(self.parts or (0,) * self.views)[v]
        return {'frame': t, 'view': v, 'modality': m, 'part': p}

    def stream_attr(self, name: str) -> np.ndarray:
        return self._stream_attrs[name]

    # Per-token attributes, (N_tok,) int arrays.
    @property
    def frame(self) -> np.ndarray:
        return np.repeat(self._stream_attrs['frame'], self.patches)

    @property
    def view(self) -> np.ndarray:
        return np.repeat(self._stream_attrs['view'], self.patches)

    @property
    def modality(self) -> np.ndarray:
        return np.repeat(self._stream_attrs['modality'], self.patches)

    @property
    def part(self) -> np.ndarray:
        return np.repeat(self._stream_attrs['part'], self.patches)

    def select(self, frame=None, view=None, modality=None) -> np.ndarray:
        """Token indices of the matching streams (None = all); modality by index or name."""
        if isinstance(modality, str):
            modality = self.modality_index(modality)
        keep = np.ones(self.n_tokens, bool)
        for attr, want in (('frame', frame), ('view', view), ('modality', modality)):
            if want is not None:
                keep &= np.isin(getattr(self, attr), np.atleast_1d(want))
        return np.flatnonzero(keep)


def check_tokens(layout: TokenLayout, n_tokens: int) -> None:
    """Raises if a sequence of n_tokens cannot be this layout."""
    if n_tokens != layout.n_tokens:
        raise ValueError(
            f'{n_tokens} tokens do not match the layout: {layout.frames} frames x {layout.views} views x '
            f'{len(layout.modalities)} modalities {layout.modalities} x {layout.patches} patches = '
            f'{layout.n_tokens} tokens'
        )


# ----------------------------------------------------------------------------- mask spec


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Declarative mask (see the module docstring). Hashable: a static jit argument.

    layers: optional per-layer schedule, one entry per ViT block: a strategy name (inheriting
      window / causal / cross_* from this spec) or a full MaskSpec (without its own layers).
      E.g. first half per-frame, second half ExtPose on ViT-H:
        MaskSpec(layers=('frame',) * 16 + ('extpose',) * 16)
      Empty: every layer uses `strategy`.
    """

    strategy: str = 'extpose'
    window: int | None = None
    causal: bool = False
    cross_view: bool = False
    cross_part: bool = False
    layers: tuple[str | MaskSpec, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, 'layers', tuple(self.layers))
        _check_strategy(self.strategy, 'MaskSpec.strategy')
        if self.window is not None and (
            not isinstance(self.window, (int, np.integer)) or self.window < 0
        ):
            raise ValueError(
                f'MaskSpec.window must be None or an int >= 0 (frames either side), '
                f'got {self.window!r}'
            )
        for i, entry in enumerate(self.layers):
            if isinstance(entry, MaskSpec):
                if entry.layers:
                    raise ValueError(
                        f'MaskSpec.layers[{i}] has its own layers; schedules do not nest'
                    )
            else:
                _check_strategy(entry, f'MaskSpec.layers[{i}]')

    def at_layer(self, layer: int) -> MaskSpec:
        """The (schedule-free) spec that applies in block `layer`."""
        if not self.layers:
            return self
        if not 0 <= layer < len(self.layers):
            raise ValueError(
                f'layer {layer} is outside the MaskSpec schedule of {len(self.layers)} layers'
            )
        entry = self.layers[layer]
        if isinstance(entry, MaskSpec):
            return entry
        return dataclasses.replace(self, strategy=entry, layers=())


def _check_strategy(value, field):
    if not isinstance(value, str) or value not in STRATEGIES:
        raise ValueError(
            f'{field}: unknown strategy {value!r}; allowed: {", ".join(map(repr, STRATEGIES))}'
        )


# ----------------------------------------------------------------------------- static structure


def stream_structure(layout: TokenLayout, spec: MaskSpec, layer: int = 0) -> np.ndarray:
    """(S, S) bool: may a query of stream i attend to keys of stream j. Read-only, cached."""
    return _stream_structure(layout, spec.at_layer(layer))


# Cached on the RESOLVED spec: the 32 layers of a one-strategy ViT-H share one array.
@functools.lru_cache(maxsize=64)
def _stream_structure(layout: TokenLayout, s: MaskSpec) -> np.ndarray:
    a = layout._stream_attrs
    t, v, m, p = (a[k] for k in ('frame', 'view', 'modality', 'part'))
    same_t = t[:, None] == t[None, :]
    same_v = v[:, None] == v[None, :]
    same_m = m[:, None] == m[None, :]
    same_p = p[:, None] == p[None, :]
    within = {
        'frame': same_t & same_m,
        'multimodal': same_t,
        'extpose': same_t | same_m,
        'full': np.ones_like(same_t),
    }[s.strategy]
    across = np.ones_like(same_t) if s.strategy == 'full' else same_t & same_m
    switch = np.where(same_p, s.cross_view, s.cross_part)
    allowed = (same_v & within) | (~same_v & switch & across)
    if s.window is not None:
        allowed &= np.abs(t[:, None] - t[None, :]) <= s.window
    if s.causal:
        allowed &= t[None, :] <= t[:, None]
    allowed.setflags(write=False)
    return allowed


def structure(layout: TokenLayout, spec: MaskSpec, layer: int = 0) -> np.ndarray:
    """(N_tok, N_tok) bool, True = query row may attend to key column. Read-only, cached.

    Layers with the same effective spec get the same array object, which lets the attention
    kernels cache what they derive from it (block schedules, factorisations).
    """
    return _structure(layout, spec.at_layer(layer))


@functools.lru_cache(maxsize=16)
def _structure(layout: TokenLayout, s: MaskSpec) -> np.ndarray:
    n = layout.patches
    out = np.repeat(np.repeat(_stream_structure(layout, s), n, axis=0), n, axis=1)
    out.setflags(write=False)
    return out


def block_pattern(structure: np.ndarray, block_q: int, block_k: int | None = None) -> np.ndarray:
    """(nq, nk) bool: a (query block, key block) pair is computed iff any entry is allowed."""
    structure = np.asarray(structure, bool)
    block_k = block_q if block_k is None else block_k
    nq, nk = structure.shape
    for name, n, b in (('query', nq, block_q), ('key', nk, block_k)):
        if b < 1 or n % b:
            raise ValueError(
                f'block_pattern: {n} {name} tokens are not a multiple of block size {b}'
            )
    return structure.reshape(nq // block_q, block_q, nk // block_k, block_k).any(axis=(1, 3))


def cache_by_identity(fn):
    """Memoises fn(array, *hashable_args) on the identity of a READ-ONLY numpy array.

    `structure` hands out one read-only array per (layout, spec, layer); whatever a kernel
    derives from it (block schedules, factorisations) is then computed once, not per block
    and per trace. Writeable arrays are not cached (they could change under the cache).
    """
    cache = {}

    @functools.wraps(fn)
    def wrapper(array, *args):
        if not isinstance(array, np.ndarray) or array.flags.writeable:
            return fn(array, *args)
        key = (id(array),) + args
        hit = cache.get(key)
        if hit is not None and hit[0]() is array:
            return hit[1]
        value = fn(array, *args)
        cache[key] = (weakref.ref(array, lambda _, key=key: cache.pop(key, None)), value)
        return value

    return wrapper


@cache_by_identity
def factorize(structure: np.ndarray):
    """(core, rows, cols) with structure == core[rows][:, cols] and core small.

    Layout masks are constant over each stream's patches, so core is at most (S, S). Building
    the dense mask on device from this keeps a 6144^2 constant (37 MB per layer) out of the
    compiled program.
    """
    structure = np.asarray(structure, bool)
    core, rows = unique_rows(structure)
    core, cols = unique_rows(core.T)
    return np.ascontiguousarray(core.T), rows, cols


def unique_rows(a: np.ndarray):
    """(unique, inverse) over the first axis, in first-seen order: a == unique[inverse].

    Hashes each row's bytes; np.unique(axis=0) sorts bool rows ~1000x slower.
    """
    a = np.ascontiguousarray(a)
    index, inverse = {}, np.empty(len(a), np.int32)
    for i, row in enumerate(a):
        inverse[i] = index.setdefault(row.tobytes(), len(index))
    first = np.zeros(len(index), np.int64)
    first[inverse[::-1]] = np.arange(len(a))[::-1]  # first occurrence of each unique row
    return a[first], inverse


# ----------------------------------------------------------------------------- dynamic validity


def key_valid(layout: TokenLayout, modality_keep=None, frame_valid=None, view_valid=None):
    """(B, N_tok) bool: which keys exist in each sample, or None when all do.

    modality_keep (B, M): False drops a modality (modality dropout; its tokens stay queries).
    frame_valid (B, T): False for padded frames. view_valid (B, V): False for missing crops.
    """
    out = None
    for name, value, size, attr in (
        ('modality_keep', modality_keep, len(layout.modalities), 'modality'),
        ('frame_valid', frame_valid, layout.frames, 'frame'),
        ('view_valid', view_valid, layout.views, 'view'),
    ):
        if value is None:
            continue
        value = jnp.asarray(value)
        if value.ndim != 2 or value.shape[1] != size:
            raise ValueError(
                f'key_valid: {name} must be (batch, {size}) for this layout, got {value.shape}'
            )
        per_token = jnp.take(value.astype(bool), getattr(layout, attr), axis=1)
        out = per_token if out is None else out & per_token
    return out


def dense_mask(structure: np.ndarray, key_valid=None):
    """(B, 1, Nq, Nk) bool (B = 1 without key_valid): structure AND per-sample key validity."""
    # The barrier keeps XLA from constant-folding the (N, N) expansion: folding it would embed the
    # dense constant again (and took minutes to compile at 3072 tokens); on device it is a cheap gather.
    core, rows, cols = jax.lax.optimization_barrier(tuple(map(jnp.asarray, factorize(structure))))
    mask = core[rows][:, cols][None, None]
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]
    return mask
