"""The contract between the trainer and a task (one objective: classification, vq, lm, llava, showo, ...).

The trainer owns the mesh, sharded init, the jit-compiled step, the optimizer, checkpoints and logging, and knows
nothing about models. A task supplies, from the config: the model and its init, the data (sources + preprocessing),
`loss_fn`, and evaluation. Non-parameter variables (e.g. a VQ codebook's EMA statistics) travel as `model_state`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.data import pipeline, sharded
from mmjax.data.sources import DataError, make_source
from mmjax.train import sharding

Metrics = dict[str, jax.Array]


@dataclasses.dataclass
class EvalContext:
    """What an evaluator may use: the mesh, the batch size, the skip counter and where to write samples."""

    mesh: jax.sharding.Mesh
    batch_size: int
    counter: pipeline.SkipCounter
    workdir: str
    step: int
    final: bool

    def batches(self, source: Any, preprocess: pipeline.Preprocess, limit: int | None = None
                ) -> Iterator[dict[str, jax.Array]]:
        """Global (sharded) eval batches, padded at the end with `valid` = 0 rows."""
        for local in pipeline.eval_batches(source, preprocess, global_batch_size=self.batch_size,
                                           counter=self.counter, limit=limit):
            yield sharding.global_batch(local, self.mesh)


class Task:
    """Base class; subclasses set `self.model` and implement the methods that raise NotImplementedError."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    # -- data ---------------------------------------------------------------------------------------------------
    # The record fields `preprocess` reads, as alternatives: a record must hold every field of one of them.
    required_fields: tuple[tuple[str, ...], ...] = ()
    FIELD_CHECK_RECORDS = 8   # records read when a source opens, to refuse a corpus without the needed fields

    def source(self, split: str) -> Any:
        if split not in self.config.data:
            raise KeyError(f"config.data has no split {split!r}; has {sorted(self.config.data.keys())}")
        source = make_source(self.config.data[split])
        self.check_source(source, split)
        return source

    def check_source(self, source: Any, split: str) -> None:
        """Refuses, before anything compiles, a split with no record, or whose first readable records all lack
        the fields `preprocess` needs (a misnamed column or JSON key would otherwise be skipped record by record
        until the starvation limit). A DataError names the split, the missing field and the fields there are."""
        where = f"config.data.{split} ({self.config.data[split].get('name', '?')})"
        if not len(source):
            raise DataError(f"{where} has no records (an empty corpus)")
        if not self.required_fields:
            return
        seen = []
        for i in range(min(len(source), self.FIELD_CHECK_RECORDS)):
            record = source[i]
            if not isinstance(record, dict):
                continue
            if any(all(f in record for f in option) for option in self.required_fields):
                return
            seen.append(record)
        if not seen:
            return   # nothing readable to judge by: the pipeline counts the undecodable records
        fields = sorted(k for k in seen[0] if k != "where")
        options = " or ".join("+".join(option) for option in self.required_fields)
        missing = sorted({f for option in self.required_fields for f in option} - set(fields))
        hints = [f"{m!r} (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(m, fields, 1, 0.6))
                 else repr(m) for m in missing]
        raise DataError(f"{where}: the first {len(seen)} record(s) ({pipeline.record_where(seen[0]) or 'record 0'})"
                        f" have no field {', '.join(hints)}; {type(self).__name__} reads {options}; the records "
                        f"have {fields}")

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def usable_example(self, source: Any | None = None) -> dict[str, np.ndarray]:
        """The first of this host's first `FIELD_CHECK_RECORDS` records that `preprocess` accepts. A DataError
        naming a record and its reason when none does (a corpus of only corrupt images, a wrong decode), so such a
        run stops before anything compiles instead of at the starvation limit."""
        source = sharded.host_local(self.source("train") if source is None else source)   # records of this host
        reasons = []
        for i in range(min(len(source), self.FIELD_CHECK_RECORDS)):
            record = source[i]
            try:
                example = self.preprocess(record, None) if record is not None else None
            except Exception as e:  # the pipeline skips such records; here only a usable one is wanted
                reasons.append(f"{pipeline.record_where(record) or f'record {i}'}: {type(e).__name__}: {e}")
                continue
            if example is not None:
                return example
            reasons.append(f"record {i}: unreadable or rejected")
        raise DataError(f"none of the first {len(reasons)} records of config.data.train can be used, e.g. "
                        f"{reasons[0][:300] if reasons else 'none'}")

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of the right shapes and dtypes (values irrelevant): used for abstract init and shardings.
        Tasks that know their shapes from the config override it, so compile-only checks read no data."""
        example = self.usable_example()
        return {k: np.zeros((batch_size, *np.shape(v)), np.asarray(v).dtype) for k, v in example.items()}

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A batch of the training shapes with realistic random content (ids within their vocabularies, lengths
        within their limits, images in range), made without reading any data file: for benchmarks and
        compile checks. Tasks whose step depends on the values (not only the shapes) override it."""
        raise NotImplementedError(f"{type(self).__name__} has no synthetic_batch")

    # -- model --------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        """All variables of the model (params boxed with logical names, plus any other collections)."""
        raise NotImplementedError

    def pretrained_variables(self) -> dict[str, Any] | None:
        """Released or previously trained weights to put into a fresh run (never on resume).

        A nested dict shaped like a part of the variables: `{"params": {"vision_tower": {...}}, "tokenizer": {...}}`
        with numpy leaves (e.g. from `mmjax.convert`); the trainer checks every path and shape and places each
        array with the sharding its parameter already has. Frozen auxiliary models (a tokenizer) live in their own
        collection, which the trainer carries as `model_state` and never optimises.
        """
        return None

    def loss_fn(self, params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array
                ) -> tuple[jax.Array, tuple[Metrics, Any]]:
        """(scalar loss, (metrics, new model_state)); metrics are per-step means."""
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------------------------
    def eval_step(self, params: Any, model_state: Any, batch: dict[str, jax.Array]) -> Metrics:
        """Sums over the batch's valid rows, including a `count`; `evaluate` divides by the total count."""
        raise NotImplementedError

    @functools.cached_property
    def jitted_eval_step(self) -> Callable[..., Metrics]:
        """`eval_step` compiled once per task, not once per evaluation."""
        return jax.jit(self.eval_step)

    def evaluate(self, params: Any, model_state: Any, ctx: EvalContext) -> dict[str, float]:
        """Default evaluator: `eval_step` over the `eval` split, averaged over valid examples."""
        step = self.jitted_eval_step
        totals: dict[str, float] = {}
        for batch in ctx.batches(self.source("eval"), self.preprocess):
            for k, v in step(params, model_state, batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count", 0.0)
        if not count:
            raise ValueError("evaluation saw no valid example (empty or fully skipped eval split)")
        return {k: v / count for k, v in totals.items()}


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    weights = weights.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def import_task(path: str) -> Callable[[ml_collections.ConfigDict], Task]:
    """Imports 'module.path:ClassName' lazily, so `import mmjax` never pulls every model in."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
