"""Host-facing serving: ``Scorer`` buckets the request shapes (B and N, ``ScoringConfig``) so a
stream of sizes compiles a few times, pads into reused 64-byte aligned buffers, runs the compiled
serve pass of ``puts_jax.serving`` and returns numpy. Re-exported by ``puts_jax.engine``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from puts_jax import checks, hostmem
from puts_jax.checks import InputError
from puts_jax.config import ScoringConfig
from puts_jax.serving import build_serve, compile_latency_serve, q_values, split_model
from puts_jax.types import RequestBatch, ServeOutput


def _bucket(size: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= size; beyond the largest, the next multiple of the largest."""
    for b in buckets:
        if size <= b:
            return b
    top = buckets[-1]
    return -(-size // top) * top


def _numbers(field: str, x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array of numbers (cast to ``dtype`` when given; a value beyond float32
    becomes inf, which the callers report); InputError naming ``field`` for None, strings,
    objects or ragged lists (np.asarray's own error named no field; a string array reached the
    trace and raised a TypeError printing the model's graphdef)."""
    if x is None:
        raise InputError(field, [], "missing (None); expected an array of numbers")
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(field, [], f"not an array of numbers ({e})") from None
    if not (a.dtype == bool or jnp.issubdtype(a.dtype, jnp.number)):
        raise InputError(field, [], f"dtype {a.dtype}; expected numbers")
    if dtype is None:
        return a
    with np.errstate(over="ignore"):
        return a.astype(dtype, copy=False)


_ID_TOP = np.iinfo(np.int32).max


def _ids(x) -> np.ndarray:
    """context_ids as i32[B, C]: integers (or whole-number floats) in the int32 range, checked
    before the cast, so an id is never wrapped (2**32 + 3 -> 3) or truncated (3.7 -> 3) into
    another embedding row; the rows of such ids are named."""
    ids = _numbers("context_ids", x)
    if not (ids.dtype == bool or jnp.issubdtype(ids.dtype, jnp.integer)):
        with np.errstate(invalid="ignore"):
            checks.raise_if(~np.isfinite(ids) | (ids != np.round(ids)), "context_ids",
                            "id is not a whole number")
    if ids.dtype != bool:
        with np.errstate(invalid="ignore"):
            checks.raise_if((ids < -_ID_TOP - 1) | (ids > _ID_TOP), "context_ids",
                            f"id outside the int32 range [{-_ID_TOP - 1}, {_ID_TOP}] of the "
                            "model's embedding lookup")
    return ids.astype(np.int32)


def _leaf_spec(x) -> str:
    """'float32[16, 4]': a parameter's dtype and shape (arrays or ShapeDtypeStructs)."""
    dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
    return f"{np.dtype(dtype).name}{list(x.shape if hasattr(x, 'shape') else np.shape(x))}"


def _aligned_zeros(shape, dtype) -> np.ndarray:
    """A zeroed array whose data is 64-byte aligned, so jit takes it without a copy (FACTS.md)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes].view(dtype).reshape(shape)


class Scorer:
    """Host-facing serving: buckets B and N (``ScoringConfig``), splits batches larger than the
    biggest batch bucket, runs the compiled serve pass and returns numpy, one row per input row.

    Inputs already at a bucket shape, C-contiguous and 64-byte aligned (Arrow buffers are) go to
    the device without a copy; others are copied once into reused, aligned padding buffers
    (jax would copy an unaligned array twice, FACTS.md). Not thread-safe (the
    buffers are shared); use one Scorer per thread. Creating one calls
    ``hostmem.keep_scratch_resident()``: the process keeps freed blocks up to 256 MiB for reuse,
    so the serve pass's scratch does not page-fault on every call (unless the environment sets
    glibc's ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, which win).

    ``params_as_constants=True`` compiles each (k, bucket shape) with the parameters built in as
    constants (``serving.compile_latency_serve``): no parameter pytree is flattened per call and
    XLA sees the weights, so a call is cheaper (bench serve ``fused_latency`` against ``fused``
    on the 2-core CPU: p50 at B = 1 about 37 us against 58 us, and 1-2 ms less of about 25 ms at
    B = 8192), with the same results. The price: ``set_params`` then recompiles every shape on
    its next call (changing lambda still never recompiles). For a job that scores with one set
    of parameters (``puts-jax score``), or a server that swaps parameters rarely.
    """

    def __init__(self, model, action_weights, cfg: ScoringConfig, params=None, *,
                 params_as_constants: bool = False):
        """model: an nnx.Module (a ``QNetwork``), a (graphdef, params) pair, or a graphdef with
        ``params``; action_weights: W f32[A, K], one utility-weight row per action of the
        model's Q f32[B, A, J] (e.g. ``policy.load(...).action_set.weights``); cfg: top-k and
        the B / N buckets.

        Raises InputError("action_weights") when W is not [A, K] with the model's A, naming
        the rows of W that hold a NaN/inf weight; ValueError when ``cfg.fallback_action`` is
        not an action of W."""
        hostmem.keep_scratch_resident()
        graphdef, p = split_model(model) if params is None else (model, params)
        self.graphdef, self.params, self.cfg = graphdef, p, cfg
        self.params_as_constants = bool(params_as_constants)
        self._constant_serves: dict = {}  # (k, padded shapes) -> compiled, params built in
        self.action_weights = np.asarray(action_weights, np.float32)
        self._check_action_weights()
        # compiled serve passes by effective k (k beyond the N bucket ranks k = the N bucket)
        self._serves = {cfg.top_k: build_serve(graphdef, self.action_weights, cfg)}
        self._buffers: dict = {}
        self._compiled: set = set()  # (k, padded shapes) compiled so far
        self._n_objectives: dict = {}  # (context, context_ids) shapes -> J of the model's Q
        self.compile_seconds = 0.0  # wall time spent compiling (tracing, native build, XLA)

    def _model_attr(self, name: str):
        """An attribute of the merged model (e.g. QNetwork.context_dim), None if it has none."""
        from flax import nnx
        try:
            return getattr(nnx.merge(self.graphdef, self.params), name, None)
        except Exception:  # a graphdef/params pair that does not merge has no such attribute
            return None

    def _check_action_weights(self) -> None:
        """W f32[A, K] with one row per action of the model's Q (where the model says its A)."""
        W, n_actions = self.action_weights, self._model_attr("n_actions")
        if W.ndim != 2 or (n_actions is not None and W.shape[0] != n_actions):
            raise InputError("action_weights", [], f"shape {W.shape}; expected f32[A, K] with "
                             f"A = {n_actions if n_actions is not None else 'the actions'} of "
                             "the model's Q, one utility-weight row per action")
        checks.raise_if(~np.isfinite(W).all(axis=1), "action_weights",
                        "a utility weight is NaN/inf (every candidate of a request given that "
                        "action would be dropped)")

    def _id_vocab(self) -> tuple[int, ...] | None:
        """Vocabulary size of each categorical id column the model embeds (() for none), or
        None for a model that does not say (not a QNetwork)."""
        if not hasattr(self, "_vocab"):
            cfg = self._model_attr("cfg")
            sizes = getattr(cfg, "id_vocab_sizes", None)
            self._vocab = None if sizes is None else tuple(int(v) for v in sizes)
        return self._vocab

    def _check_ids(self, context_ids: np.ndarray | None) -> None:
        """context_ids i32[B, C] against the model's embeddings: C columns, each id in
        [0, vocabulary size); none for a model without embeddings."""
        vocab = self._id_vocab()
        if vocab is None:
            return
        if not vocab:
            if context_ids is not None:
                raise InputError("context_ids", [], f"shape {context_ids.shape}; the model "
                                 "embeds no categorical ids: pass none")
            return
        if context_ids is None or context_ids.shape[1] != len(vocab):
            got = "none" if context_ids is None else f"shape {context_ids.shape}"
            raise InputError("context_ids", [], f"{got}; expected i32[B, {len(vocab)}], one "
                             f"column per embedded id (vocabulary sizes {list(vocab)})")
        checks.raise_if((context_ids < 0) | (context_ids >= np.asarray(vocab)), "context_ids",
                        f"id outside [0, vocabulary size) (sizes {list(vocab)})")

    def _objectives(self, context: np.ndarray, context_ids: np.ndarray | None) -> int:
        """J of the model's Q f32[B, A, J] for this context width (traced once per width, no
        compile); a context the model cannot take is an InputError naming ``context``."""
        key = (context.shape[1], None if context_ids is None else context_ids.shape[1])
        if key not in self._n_objectives:
            ctx = jax.ShapeDtypeStruct((1, key[0]), np.float32)
            ids = None if key[1] is None else jax.ShapeDtypeStruct((1, key[1]), np.int32)
            try:
                q = jax.eval_shape(lambda p, c, i: q_values(self.graphdef, p, c, i),
                                   self.params, ctx, ids)
            except (TypeError, ValueError) as e:
                want = self._model_attr("context_dim")
                hint = f"the model takes D = {want} columns" if want is not None else str(e)
                raise InputError("context", [], f"f32[B, {key[0]}] with context_ids "
                                 f"{'none' if key[1] is None else f'i32[B, {key[1]}]'} does "
                                 f"not fit the model: {hint}") from None
            if q.ndim != 3 or q.shape[1] != self.action_weights.shape[0]:
                raise InputError("model", [], f"Q has shape {q.shape}; expected [B, A, J] "
                                 f"with A = {self.action_weights.shape[0]} (action_weights)")
            self._n_objectives[key] = int(q.shape[2])
        return self._n_objectives[key]

    def _check_shapes(self, lam: np.ndarray, batch: RequestBatch) -> None:
        """Every field's shape against preds f32[B, N, K], W f32[A, K] and the model's D and J;
        one InputError naming the field and the shape it expected."""
        A, K = self.action_weights.shape
        preds = batch.preds
        if preds.ndim != 3 or preds.shape[2] != K:
            raise InputError("preds", [], f"shape {preds.shape}; expected f32[B, N, {K}]: the "
                             f"action set's utility weights W f32[{A}, {K}] weigh K = {K} ranker "
                             "outcomes (if preds are right, W is not)")
        B, N = preds.shape[:2]
        want = {"context": (B, None), "mask": (B, N), "valid": (B,),
                "context_ids": (B, None)}
        for field, shape in want.items():
            x = getattr(batch, field)
            if x is None:
                continue
            if x.ndim != len(shape) or any(w is not None and s != w
                                           for s, w in zip(x.shape, shape)):
                text = ", ".join("?" if w is None else str(w) for w in shape)
                raise InputError(field, [], f"shape {x.shape}; expected [{text}] to match "
                                 f"preds f32{list(preds.shape)}")
        self._check_ids(batch.context_ids)
        J = self._objectives(batch.context, batch.context_ids)
        if lam.shape != (J,):
            raise InputError("lambda", [], f"shape {lam.shape}; expected f32[{J}], one "
                             f"coefficient per objective of the model's Q f32[B, {A}, {J}]")

    def set_params(self, params) -> None:
        """Swap parameters (e.g. a newly published version of the same model): no
        recompilation, except with ``params_as_constants``, where each shape recompiles on its
        next call.

        Raises InputError("params") when ``params`` is not the same tree of arrays with the same
        shapes and dtypes as the current ones (a model with another A, J, D or layer width:
        build a new Scorer for it); the current parameters stay in place."""
        flat = jax.tree_util.tree_flatten_with_path
        (old, old_def), new = flat(self.params), None
        try:
            new, new_def = flat(params)
        except (TypeError, ValueError):
            pass
        if new is None or new_def != old_def:
            raise InputError("params", [], "not the same tree of arrays as the Scorer's "
                             "parameters: pass parameters of the same model, with the same "
                             "shapes (build a new Scorer for another model)")
        for (path, want), (_, got) in zip(old, new):
            want, got = (_leaf_spec(x) for x in (want, got))
            if want != got:
                raise InputError("params", [], f"{jax.tree_util.keystr(path)} is {got}, the "
                                 f"Scorer's is {want}: parameters must have the same shapes "
                                 "(build a new Scorer for another model)")
        self.params = params
        self._constant_serves.clear()

    def _padded(self, name: str, x: np.ndarray, shape: tuple) -> np.ndarray:
        if x.shape == shape and x.flags.c_contiguous and x.ctypes.data % 64 == 0:
            return x  # zero-copy into jit
        key = (name, shape, x.dtype.str)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _aligned_zeros(shape, x.dtype)
        region = tuple(slice(0, s) for s in x.shape)
        buf[region] = x
        if name in ("mask", "context", "context_ids"):  # padding must stay neutral
            buf[x.shape[0]:] = 0
            if name == "mask":
                buf[:, x.shape[1]:] = False
        return buf

    def _score_piece(self, lam, batch: RequestBatch, n_pad: int) -> ServeOutput:
        b, n = batch.preds.shape[:2]
        b_pad = _bucket(b, self.cfg.batch_buckets)
        K = batch.preds.shape[2]
        padded = RequestBatch(
            context=self._padded("context", batch.context, (b_pad, batch.context.shape[1])),
            preds=self._padded("preds", batch.preds, (b_pad, n_pad, K)),
            mask=self._padded("mask", batch.mask, (b_pad, n_pad)),
            valid=self._padded("valid", batch.valid, (b_pad,)),
            context_ids=None if batch.context_ids is None else self._padded(
                "context_ids", batch.context_ids, (b_pad, batch.context_ids.shape[1])))
        # top-k beyond the candidate bucket cannot rank more candidates, only cost more (a
        # k = 100000 request scored 100x slower): rank min(k, n_pad) and return that many
        # columns; padding them out to k would allocate B x k (22 GB at k = 10**6) for nothing
        k = min(self.cfg.top_k, n_pad)
        if k not in self._serves:
            self._serves[k] = build_serve(self.graphdef, self.action_weights,
                                          dataclasses.replace(self.cfg, top_k=k))
        if self.params_as_constants:
            out = self._constant_serve(k, padded)(lam, padded)
        else:
            self._compile(k, lam, padded)
            out = self._serves[k](self.params, lam, padded)
        return ServeOutput(*(np.asarray(x)[:b] for x in jax.device_get(out)))

    def _constant_serve(self, k: int, padded: RequestBatch):
        """The serve pass for (k, these shapes) with the current parameters as constants,
        compiled on first use (timed into ``compile_seconds``)."""
        key = (k, jax.tree.map(lambda x: (x.shape, x.dtype.str), padded))
        if key not in self._constant_serves:
            t0 = time.perf_counter()
            self._constant_serves[key] = compile_latency_serve(
                (self.graphdef, self.params), self.action_weights,
                dataclasses.replace(self.cfg, top_k=k), padded)
            self.compile_seconds += time.perf_counter() - t0
        return self._constant_serves[key]

    def _compile(self, k: int, lam, padded: RequestBatch) -> None:
        """Compile the serve pass for a new (k, shapes) ahead of the call (jit reuses it), timed
        into ``compile_seconds`` so that callers can report a steady-state rate."""
        key = (k, jax.tree.map(lambda x: (x.shape, x.dtype.str), padded))
        if key in self._compiled:
            return
        t0 = time.perf_counter()
        self._serves[k].lower(self.params, lam, padded).compile()
        self.compile_seconds += time.perf_counter() - t0
        self._compiled.add(key)

    def score(self, lam, batch: RequestBatch) -> ServeOutput:
        """Score host numpy requests: lam f32[J] (validated: non-negative, sums to 1); returns a
        ServeOutput of numpy arrays with exactly B rows in input order and k' = min(top_k, the
        candidate bucket of N) top-k columns: a top_k beyond the bucket returns every candidate
        (slots past a request's real, finite ones hold -1 / -inf) and costs no memory for the
        rest. ``batch.valid`` may be None: the Scorer pads batches itself, and valid only marks
        that padding inside the compiled pass; a row given as False is scored like any other
        (drop such rows before scoring, or ignore their outputs). Any array layout and numeric
        dtype is taken: context is read as f32, mask and valid as bool (0/1 numbers), preds
        as f32 (float16 / bfloat16 kept as given), context_ids as i32.

        Raises InputError naming the field when it is not an array of numbers (None, strings,
        ragged lists) or when a shape does not fit: preds not f32[B, N, K]
        with W's K, mask not [B, N], valid not [B], context not [B, D] with the model's D,
        context_ids not [B, C] with the model's C embedded id columns (or given to a model that
        embeds none), lam not f32[J] with the model's J, or lam not a distribution; and naming
        the rows for a mask or valid value that is not 0/1, a non-finite context value and an id
        outside its vocabulary, outside int32 or not a whole number (never wrapped or
        truncated into another id) (non-finite preds are not errors: such candidates are never
        ranked and are counted in ``n_nonfinite``).
        The constructor raises InputError("action_weights") when W is not f32[A, K] with the
        model's A, or names the rows of W holding a NaN/inf weight; a batch that is not a
        RequestBatch is InputError("batch")."""
        if not isinstance(batch, RequestBatch):
            raise InputError("batch", [], f"expected a RequestBatch (context, preds, mask, ...), "
                             f"got {type(batch).__name__}")
        lam = checks.check_lambda(_numbers("lambda", lam, np.float32))
        for field in ("mask", "valid"):  # bool, or numbers that are exactly 0/1
            x = getattr(batch, field)
            if x is not None or field == "mask":
                x = _numbers(field, x)
                if x.dtype != bool:
                    checks.raise_if((x != 0) & (x != 1), field, "not a boolean (0/1) value")
        preds = _numbers("preds", batch.preds)
        if not jnp.issubdtype(preds.dtype, jnp.floating) or preds.dtype == np.float64:
            preds = _numbers("preds", preds, np.float32)  # what the pass reads (jax: no f64)
        B = preds.shape[0] if preds.ndim else 0
        batch = RequestBatch(
            _numbers("context", batch.context, np.float32), preds, np.asarray(batch.mask, bool),
            np.ones(B, bool) if batch.valid is None else np.asarray(batch.valid, bool),
            None if batch.context_ids is None else _ids(batch.context_ids))
        self._check_shapes(lam, batch)
        # a NaN or inf context gives NaN Q-values, which select the fallback action for every
        # such request without a word; puts-jax score refuses them by row, and so does this
        if not np.isfinite(batch.context).all():  # f32 pass; rows named only when one is bad
            checks.check_finite("context", batch.context)
        N = preds.shape[1]
        n_pad = _bucket(max(N, 1), self.cfg.candidate_buckets)
        step = self.cfg.batch_buckets[-1]
        if B <= step:
            return self._score_piece(lam, batch, n_pad)
        parts = [self._score_piece(lam, jax.tree.map(lambda x: x[lo:lo + step], batch), n_pad)
                 for lo in range(0, B, step)]
        return ServeOutput(*(np.concatenate(f) for f in zip(*parts)))

    __call__ = score
