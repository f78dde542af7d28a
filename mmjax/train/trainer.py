"""The training loop shared by every task: sharded init, jit-compiled step, eval, checkpoints, logging, preemption.

    state = jax.jit(create_state, out_shardings=state_shardings)(rng)              # born sharded
    step  = jax.jit(train_step, in_shardings=(state, batch), out_shardings=(state, metrics), donate_argnums=0)

A step whose loss or gradient norm is not finite never updates the state (the update is replaced by the old
state inside the step); with `config.nonfinite = "stop"` the run then stops with a clear error at the next host
sync, before any checkpoint of that step, and with "skip" it counts it (`nonfinite_steps` in the train metrics).
A final evaluation that is not finite is an error too (`NonFiniteEvalError`, after its record is written).

SIGTERM (a preempted VM) saves a checkpoint and returns `{"preempted": True}`, also while the input pipeline is
slow or stuck (`DataFeed` waits interruptibly); re-running with the same workdir resumes exactly, data iterator
included. A workdir is checked before anything is written to it (`run_dir.prepare_workdir`). Skipped records are
reported per reason (`skipped/<reason>`) in the train and eval records; a starved input stops the run
(`pipeline.DataStarvedError`).

On several hosts (docs/multihost.md) every host fetches its batch, then all agree (`multihost.agree`, one small
all-gather per step): a SIGTERM that reached any host stops every host before the same step, and an input error on
any host stops all of them, naming it. Wall time is booked to the goodput account (`mmjax.train.goodput`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmjax import configlib
from mmjax.data import pipeline, sharded
from mmjax.train import multihost, optim, run_dir, sharding
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.data_feed import DataFeed
from mmjax.train.goodput import Goodput
from mmjax.train.metrics_writer import MetricsWriter
from mmjax.train.tasks import make_task
from mmjax.train.tasks.base import EvalContext, Task

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a step produced a non-finite loss or gradient and the config says to stop."""


class NonFiniteEvalError(FloatingPointError):
    """Raised when the final evaluation of a run has a non-finite metric (the run's result is unusable)."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    model_state: Any
    ema_params: Any
    nonfinite_steps: jax.Array


class Trainer:
    """Builds everything a run needs from the config; `run()` trains to `config.total_steps`.

    Without a `workdir` nothing is written: `build()` then gives the sharded, jit-compiled pieces that benchmarks
    and pre-flight checks use (`init_state`, `train_step`, `synthetic_batch`, `lower_init`, `lower_step`).
    `devices` (default: all) may be compile-only devices, e.g. a TPU topology's abstract chips.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None, *,
                 devices: Sequence[jax.Device] | None = None):
        started = time.perf_counter()
        sharding.maybe_initialize_distributed()
        self.config = config
        self.task: Task = make_task(config)
        configlib.check_choices(config)  # again: the task's module may have declared more choices on import
        multihost.check_same_program(configlib.to_dict(config))
        self.workdir = None if workdir is None else run_dir.prepare_workdir(workdir, config)
        self.account = None if workdir is None else Goodput(self.workdir, writes=jax.process_index() == 0,
                                                            started=started)
        if config.optim.warmup_steps > config.total_steps:
            log.warning("config.optim.warmup_steps=%d is longer than the run (total_steps=%d): the learning rate "
                        "never reaches config.optim.lr", config.optim.warmup_steps, config.total_steps)
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = sharding.rules_from_config(config.sharding.rules)
        self.counter = pipeline.SkipCounter()   # the training data's skips, carried here by the batches
        self._stop_requested = False

    # -- construction --------------------------------------------------------------------------------------------
    def _create_state_fn(self, tx: optax.GradientTransformation, example: dict[str, np.ndarray]):
        def create(rng: jax.Array) -> TrainState:
            init_rng, state_rng = jax.random.split(rng)
            variables = dict(self.task.init(init_rng, jax.tree.map(jnp.asarray, example)))
            params = variables.pop("params")
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                              rng=state_rng, model_state=variables,
                              ema_params=params if self.config.ema_decay else None,
                              nonfinite_steps=jnp.zeros((), jnp.int32))
        return create

    def build(self) -> None:
        cfg = self.config
        # One example row traces the model (parameter shapes do not depend on the batch size); the global batch
        # exists only abstractly, so no host memory grows with the pod.
        example = self.task.example_batch(1)
        batch_sharding = sharding.batch_sharding(self.mesh)
        self.batch_spec = {k: jax.ShapeDtypeStruct((cfg.batch_size, *np.shape(v)[1:]), np.asarray(v).dtype,
                                                   sharding=batch_sharding) for k, v in example.items()}
        self.batch_shardings = jax.tree.map(lambda _: batch_sharding, example)
        self._rng = jax.random.PRNGKey(cfg.seed)  # outside the mesh: compile-only devices cannot hold it
        rng_spec = jax.ShapeDtypeStruct(self._rng.shape, self._rng.dtype)
        with self.activate():
            boxed_params = jax.eval_shape(lambda r: self.task.init(r, jax.tree.map(jnp.asarray, example)),
                                          rng_spec)["params"]
            paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(boxed_params)[0]]
            self.tx, self.lr_schedule = optim.make_optimizer(cfg.optim, paths, cfg.total_steps)
            self.frozen = optim.frozen_mask(cfg.optim)(sharding.strip_boxes(boxed_params))
            create = self._create_state_fn(self.tx, example)
            abstract = jax.eval_shape(create, rng_spec)
            self.state_shardings = sharding.logical_shardings(abstract, self.mesh, self.rules)
            self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                               sharding.strip_boxes(abstract), self.state_shardings)
            self._init = jax.jit(lambda r: sharding.strip_boxes(create(r)), out_shardings=self.state_shardings)
            metric_sharding = sharding.replicated(self.mesh)
            self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_shardings),
                                 out_shardings=(self.state_shardings, metric_sharding), donate_argnums=0)
        self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sharding.strip_boxes(boxed_params)))

    # -- the public pieces (benchmarks, pre-flight) ---------------------------------------------------------------
    def init_state(self) -> TrainState:
        """A freshly initialised state, born sharded (no pretrained weights inserted)."""
        with self.activate():
            return self._init(self._rng)

    def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        """One optimisation step (the state is donated)."""
        with self.activate():
            return self._step(state, batch)

    def synthetic_batch(self, seed: int = 0) -> dict[str, jax.Array]:
        """A global batch of realistic random content (`Task.synthetic_batch`), this host's rows made here."""
        local = pipeline.local_batch_size(self.config.batch_size)
        return sharding.global_batch(self.task.synthetic_batch(local, seed + jax.process_index()), self.mesh)

    def lower_init(self) -> jax.stages.Lowered:
        with self.activate():
            return self._init.lower(jax.ShapeDtypeStruct(self._rng.shape, self._rng.dtype))

    def lower_step(self) -> jax.stages.Lowered:
        """The train step lowered for the abstract state and batch: `.compile().memory_analysis()` sizes it."""
        with self.activate():
            return self._step.lower(self.abstract_state, self.batch_spec)

    def activate(self):
        """The mesh and the logical rule table, active together for tracing."""
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    # -- the step -----------------------------------------------------------------------------------------------
    def _train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        # Frozen parameters (optim.frozen) get no gradient at all: their weight-gradient matmuls and the backward
        # pass through a frozen tower are never built, and grad_norm covers what is trained.
        stop = lambda params: jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.frozen)
        grad_fn = jax.value_and_grad(lambda p, *a: self.task.loss_fn(stop(p), *a), has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        ema = state.ema_params
        if ema is not None:
            d = self.config.ema_decay
            ema = keep(jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params), ema)
        new_state = state.replace(
            step=state.step + 1, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            model_state=keep(model_state, state.model_state), ema_params=ema,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": self.lr_schedule(state.step)}
        return new_state, metrics

    # -- the loop -----------------------------------------------------------------------------------------------
    def _check_finite(self, state: TrainState) -> int:
        """The number of non-finite steps so far; raises if there are any and the config says stop."""
        bad = int(jax.device_get(state.nonfinite_steps))
        if bad and self.config.nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss or gradient in {bad} step(s) before step {int(state.step)}; the state was not "
                f"updated by them and is not checkpointed. Lower config.optim.lr or set config.nonfinite='skip'.")
        return bad

    def evaluate(self, state: TrainState, step: int, final: bool) -> dict[str, Any]:
        """The task's evaluation plus the eval data's skip counts (`skipped/<reason>`)."""
        counter = pipeline.SkipCounter()
        ctx = EvalContext(self.mesh, self.config.eval_batch_size or self.config.batch_size, counter,
                          self.workdir, step, final)
        params = state.ema_params if state.ema_params is not None else state.params
        with self.activate():
            metrics = self.task.evaluate(params, state.model_state, ctx)
        return {**metrics, **skip_metrics(counter)}

    def _train_record(self, pending: list[dict], seconds: float, nonfinite_steps: int) -> dict[str, Any]:
        """Means over the logged window (over its finite steps, when some were skipped as non-finite), and the
        goodput account so far."""
        host = [jax.device_get(m) for m in pending]
        finite = [m for m in host if np.isfinite(m["loss"])] or host
        means = {k: float(np.mean([m[k] for m in finite])) for k in host[0]}
        return {**means, "examples_per_sec": len(pending) * self.config.batch_size / seconds,
                "steps_per_sec": len(pending) / seconds, "nonfinite_steps": nonfinite_steps,
                **skip_metrics(self.counter), **self.account.totals()}

    def _on_sigterm(self, *_: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self._stop_requested = True

    def run(self) -> dict[str, Any]:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> dict[str, Any]:
        cfg, account = self.config, self.account
        if self.workdir is None:
            raise ValueError("Trainer.run() needs a workdir: Trainer(config, workdir)")
        with account.time("setup"):
            self.build()
            if jax.process_index() == 0:
                configlib.write_json(cfg, os.path.join(self.workdir, "config.json"))
            limits = pipeline.StarvationLimits(cfg.data_max_consecutive_skips, cfg.data_max_skip_fraction,
                                               cfg.data_skip_check_after)
            source = self.task.source("train")
            if self.task.required_fields:   # tasks that decode image records: one usable record first
                self.task.usable_example(source)
            data = pipeline.train_dataset(source, self.task.preprocess,
                                          global_batch_size=cfg.batch_size, seed=cfg.seed, counter=self.counter,
                                          worker_count=cfg.data_workers, limits=limits)
            feed = DataFeed(iter(data))
            ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), save_every=cfg.checkpoint_every,
                                keep=cfg.keep_checkpoints)
        writer = None
        try:
            with account.time("checkpoint_restore"):
                move = None if isinstance(source, sharded.HostStrided) else functools.partial(
                    sharded.moved_position, global_batch_size=cfg.batch_size)
                restored = ckpt.restore(self.abstract_state, feed, move)
            with account.time("setup"):
                if restored is None:
                    state, start = self._init(self._rng), 0
                    pretrained = self.task.pretrained_variables()
                    if pretrained:
                        state = insert_pretrained(state, pretrained)
                else:
                    state, start = restored
                    log.info("resumed from %s at step %d", ckpt.directory, start)
                account.resumed_at(start)
                writer = MetricsWriter(self.workdir, cfg.total_steps, initial_step=start)
                config_dict = configlib.to_dict(cfg)
            pending: list[dict] = []
            t0, step = time.perf_counter(), start
            position: Any = feed   # the data position a checkpoint records
            while step < cfg.total_steps:
                # Every process fetches, then all agree: a stop asked on one host (or its input failing) stops
                # every host before the same step, and the batch fetched for it is not counted as read.
                before = feed.get_state()
                with account.time("input"):
                    try:
                        local, error = feed.next(should_stop=lambda: self._stop_requested), None
                    except Exception as e:  # raised on every host by `agree`
                        local, error = None, e
                first = step == start
                with account.time("compile" if first else "step"):
                    if multihost.agree(self._stop_requested or local is None, error):
                        self._stop_requested, position = True, _Position(before)
                        break
                    batch = sharding.global_batch(local, self.mesh)
                    with self.activate():
                        state, metrics = self._step(state, batch)
                    if first:
                        jax.block_until_ready(metrics)
                    step += 1
                    account.steps += not first
                    pending.append(metrics)
                    writer.advance()
                    if step % cfg.log_every == 0 or step == cfg.total_steps:
                        bad = self._check_finite(state)
                        writer.write(step, "train", self._train_record(pending, time.perf_counter() - t0, bad))
                        account.save(step)
                        pending, t0 = [], time.perf_counter()
                if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.total_steps:
                    with account.time("eval"):
                        writer.write(step, "eval", self.evaluate(state, step, final=False))
                if step % cfg.checkpoint_every == 0:
                    with account.time("checkpoint_save"):
                        self._check_finite(state)
                        ckpt.save(step, state, feed, config_dict)
            self._check_finite(state)
            with account.time("checkpoint_save"):
                if step not in ckpt.steps():
                    ckpt.save(step, state, position, config_dict, force=True)
                if self._stop_requested:
                    ckpt.wait()
            if self._stop_requested:
                account.save(step)
                return {"step": step, "preempted": True}
            with account.time("eval"):
                evaluation = self.evaluate(state, step, final=True)
            final = writer.write(step, "eval", {**evaluation, **account.totals()}, final=True)
            account.save(step)
            not_finite = ", ".join(f"{k}={v}" for k, v in final.items() if v in ("nan", "inf", "-inf"))
            if not_finite:
                raise NonFiniteEvalError(f"the final evaluation at step {step} is not finite ({not_finite}); "
                                         f"see {writer.path}")
            self.state = state
            return final
        finally:
            feed.close()
            ckpt.close()
            if writer is not None:
                writer.close()


class _Position:
    """A data position fixed at a given state (grain's checkpoint protocol): what a stop saves, so the batch
    fetched for the step that was not taken is read again on resume."""

    def __init__(self, state: bytes):
        self.state = state

    def get_state(self) -> bytes:
        return self.state


def skip_metrics(counter: pipeline.SkipCounter) -> dict[str, int]:
    """`skipped_records` and `skipped/<reason>` for a metrics record."""
    counts = counter.snapshot()
    return {"skipped_records": sum(counts.values()), **{f"skipped/{k}": n for k, n in sorted(counts.items())}}


def _insert(tree: Any, loaded: Any, where: str) -> Any:
    if isinstance(loaded, dict):
        if not isinstance(tree, dict):
            raise configlib.ConfigError(f"pretrained weights: {where} is a leaf in the model, a subtree in the weights")
        unknown = sorted(set(loaded) - set(tree))
        if unknown:
            raise configlib.ConfigError(f"pretrained weights: {where}/ has no {unknown}; model has {sorted(tree)}")
        return {k: _insert(tree[k], loaded[k], f"{where}/{k}") if k in loaded else v for k, v in tree.items()}
    if tuple(np.shape(loaded)) != tuple(tree.shape):
        raise configlib.ConfigError(f"pretrained weights: {where} has shape {np.shape(loaded)}, the model {tree.shape}")
    return jax.device_put(np.asarray(loaded, dtype=tree.dtype), tree.sharding)


def insert_pretrained(state: TrainState, loaded: dict[str, Any]) -> TrainState:
    """Replaces parts of a freshly initialised state with loaded weights, keeping each array's sharding."""
    loaded = dict(loaded)
    params = _insert(state.params, loaded.pop("params"), "params") if "params" in loaded else state.params
    model_state = _insert(state.model_state, loaded, "") if loaded else state.model_state
    ema = params if state.ema_params is not None else None
    return state.replace(params=params, model_state=model_state, ema_params=ema)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`; returns the final evaluation record."""
    return Trainer(config, workdir).run()
