"""Join a sealagg federation from a Hugging Face ``transformers.Trainer``.

```python
from sealagg import client_shim
from sealagg.client_shim.huggingface import federated_train

trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset)
federation = client_shim.connect("kit/")
with federation:
    records = federated_train(trainer, federation, max_rounds=10, steps_per_round=50)
```

Design: one ``trainer.train()`` call per round. For each round that
:meth:`client_shim.Federation.rounds` yields for ``trainer.model`` (the global weights are
already loaded into the model's shared parameters, in place), :class:`FederatedCallback`

1. sets the round's local budget on ``trainer.args``: ``steps_per_round`` becomes
   ``max_steps`` (so the learning-rate schedule spans exactly the round), or
   ``epochs_per_round`` becomes ``num_train_epochs`` (with ``max_steps = -1``); with neither,
   each round trains for what the ``TrainingArguments`` say. The callback also sets
   ``control.should_training_stop`` once ``state.global_step`` reaches ``steps_per_round``,
   so the budget holds even if something else changes ``max_steps``;
2. resets what must not leak from one round into the next: the optimizer the Trainer created
   itself is dropped (``reset_optimizer=True``, the default: every round starts fresh AdamW
   moments from the new global weights, the usual FedAvg client) and so is a scheduler the
   Trainer created. An optimizer or scheduler the user passed through
   ``Trainer(optimizers=(opt, sched))`` is kept, and its state carries over between rounds
   (each round hands ``trainer.train()`` the user's own optimizer object, not Accelerate's
   wrapper from the previous round). ``reset_optimizer=False`` keeps the Trainer's own
   optimizer too. ``trainer.train()`` itself starts a new ``TrainerState`` (``global_step``
   from 0) each call. When the rounds end, ``trainer.optimizer`` is the user's optimizer, or
   None (``reset_optimizer=True``);
3. runs ``trainer.train()``, then submits the update with
   ``num_examples=len(trainer.train_dataset)`` (or the ``num_examples`` given) and
   ``metrics={"loss": ..., "train_loss": ..., "steps": ...}``: ``loss`` is the last loss the
   Trainer logged during the round (``logging_steps=1`` makes it the last step's loss), or
   the round's mean training loss when nothing was logged; ``train_loss`` is the round's mean
   (``TrainOutput.training_loss``); ``steps`` the optimizer steps taken.

After each round the model holds the federation's current global weights, as with the plain
PyTorch shim. Running a single ``train()`` across all rounds (submitting from inside
``on_step_end``) was not chosen: the optimizer moments and the learning-rate schedule would
run across rounds and the epoch/step bookkeeping would not match any round.

A Trainer built with ``model_init`` is refused: ``train()`` would re-create the model each
round and drop the global weights the shim loaded.

Vendor quality gate: the party named in ``[gates] vendor`` answers the appliance's
``Evaluate`` tasks with ``evaluate=`` (here, or in :func:`client_shim.connect`): a callable
``tensors -> {metric: number}``. :func:`trainer_evaluator` builds one from the Trainer itself:
it loads the candidate into ``trainer.model``, runs ``trainer.evaluate()`` on the holdout
(``eval_dataset``; it never leaves this process), and puts the model's weights back, so an
evaluation between or inside rounds does not disturb training. Only the summary numbers are
uploaded (``eval_loss``, and whatever ``compute_metrics`` returns).

PEFT / LoRA: pass the ``PeftModel`` as the Trainer's model. With the federation's default
``share="trainable"`` only parameters with ``requires_grad`` travel, which after
``peft.get_peft_model(model, LoraConfig(...))`` are exactly the adapter tensors
(``...lora_A.default.weight``, ``...lora_B.default.weight``; plus any ``modules_to_save``,
e.g. the classifier head PEFT keeps trainable for ``task_type="SEQ_CLS"``). The frozen backbone
never leaves the client and never changes. Names are those of the PeftModel's
``named_parameters()`` (``base_model.model.…``), so the appliance's base model must be built
from exactly those tensors::

    from sealagg.client_shim import shared_parameters
    base = {n: p.detach().numpy() for n, p in shared_parameters(peft_model, "trainable").items()}

This module imports ``transformers`` when it is imported; :mod:`client_shim` never imports it,
so only users who have transformers import this module. Tested with transformers 5.24 and
peft 0.21 on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "client_shim.huggingface needs Hugging Face transformers; install torch (CPU build) "
        "first, then `pip install 'sealagg[client]'`"
    ) from error

from sealagg.client_shim.pytorch import Share, _load, check_matches, shared_parameters
from sealagg.client_shim.session import RoundReport
from sealagg.client_shim.vendor import Evaluator

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from sealagg.client_shim.pytorch import Federation, RoundContext

__all__ = ["FederatedCallback", "RoundRecord", "federated_train", "trainer_evaluator"]


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """What one federated round did on this client."""

    round_number: int
    #: The global model version the round trained from.
    model_version: int
    #: Optimizer steps taken in the round.
    steps: int
    #: The metrics sent with the submission.
    metrics: dict[str, Any]
    num_examples: int
    report: RoundReport


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The user's optimizer inside Accelerate's ``AcceleratedOptimizer`` wrapper(s)."""
    import torch

    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class FederatedCallback(TrainerCallback):
    """Take part in a federation's rounds with a ``transformers.Trainer``.

    ``federation`` comes from :func:`client_shim.connect`. Per round: ``steps_per_round``
    optimizer steps or ``epochs_per_round`` epochs (at most one of them; neither: the
    TrainingArguments decide), for at most ``max_rounds`` rounds (None: until the loop is
    stopped). ``num_examples`` overrides ``len(trainer.train_dataset)`` (needed for an
    iterable dataset). ``before_submit(round_context, trainer)`` runs after local training,
    before the update is sent (e.g. to evaluate, or to look at ``round_context.update()``).
    ``evaluate`` makes this party answer the vendor gate's ``Evaluate`` tasks while the rounds
    run (see :func:`trainer_evaluator`); it is handed to the federation's participant.

    Use :meth:`train`, or :func:`federated_train`. As a plain Trainer callback (without
    :meth:`train`; ``federation`` may then be None) it only enforces the ``steps_per_round``
    budget and records the loss.
    """

    def __init__(
        self,
        federation: Federation | None,
        *,
        max_rounds: int | None = None,
        steps_per_round: int | None = None,
        epochs_per_round: float | None = None,
        num_examples: int | None = None,
        reset_optimizer: bool = True,
        before_submit: Callable[[RoundContext, Trainer], object] | None = None,
        evaluate: Evaluator | None = None,
    ) -> None:
        if steps_per_round is not None and epochs_per_round is not None:
            raise ValueError("give steps_per_round or epochs_per_round, not both")
        if steps_per_round is not None:
            steps_per_round = _positive_int(steps_per_round, "steps_per_round")
        if epochs_per_round is not None:
            if (
                isinstance(epochs_per_round, bool)
                or not isinstance(epochs_per_round, numbers.Real)
                or not (math.isfinite(epochs_per_round) and epochs_per_round > 0)
            ):
                raise ValueError(f"epochs_per_round must be > 0, got {epochs_per_round!r}")
            epochs_per_round = float(epochs_per_round)
        if max_rounds is not None and (
            isinstance(max_rounds, bool)
            or not isinstance(max_rounds, numbers.Integral)
            or max_rounds < 0
        ):
            raise ValueError(f"max_rounds must be a non-negative int or None, got {max_rounds!r}")
        if num_examples is not None:
            num_examples = _positive_int(num_examples, "num_examples")
        if before_submit is not None and not callable(before_submit):
            raise TypeError("before_submit must be callable (round_context, trainer)")
        if evaluate is not None and not callable(evaluate):
            raise TypeError("evaluate must be callable (tensors) -> {metric: number}")
        self.federation = federation
        self.max_rounds = max_rounds
        self.steps_per_round = steps_per_round
        self.epochs_per_round = epochs_per_round
        self.num_examples = num_examples
        self.reset_optimizer = bool(reset_optimizer)
        self.before_submit = before_submit
        self.evaluate = evaluate
        #: One record per round taken part in, oldest first.
        self.history: list[RoundRecord] = []
        #: Optimizer steps of the current (or last) ``train()`` call.
        self.steps = 0
        #: The last loss the Trainer logged in the current (or last) ``train()`` call.
        self.last_loss: float | None = None

    # ------------------------------------------------------------------ Trainer callback hooks

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        self.steps = 0
        self.last_loss = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        self.steps = state.global_step
        if self.steps_per_round is not None and state.global_step >= self.steps_per_round:
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    # ------------------------------------------------------------------ the federated loop

    def train(self, trainer: Trainer) -> list[RoundRecord]:
        """Run the rounds with ``trainer``; returns the records of the rounds taken part in."""
        if self.federation is None:
            raise ValueError(
                "this FederatedCallback has no federation; pass client_shim.connect(...)"
            )
        if getattr(trainer, "model_init", None) is not None:
            raise ValueError(
                "the Trainer has a model_init: train() would re-create the model every round "
                "and drop the global weights; build the Trainer with model= instead"
            )
        if trainer.train_dataset is None:
            raise ValueError("the Trainer has no train_dataset")
        if self.num_examples is None:
            try:
                len(trainer.train_dataset)
            except TypeError:
                raise ValueError(
                    "the train_dataset has no len(); pass num_examples= (the examples one "
                    "round trains on)"
                ) from None
        args = trainer.args
        saved = (args.max_steps, args.num_train_epochs)
        user_optimizer = None if trainer.optimizer is None else _unwrap_optimizer(trainer.optimizer)
        user_scheduler = trainer.lr_scheduler
        participant = None if self.evaluate is None else self.federation.participant
        connected_evaluate = None if participant is None else participant.evaluate
        if participant is not None:
            if connected_evaluate is not None and connected_evaluate is not self.evaluate:
                raise ValueError(
                    "evaluate= was given to client_shim.connect() and to the Trainer "
                    "integration; give it once"
                )
            participant.evaluate = self.evaluate  # answers Evaluate tasks during the rounds
        added = self not in trainer.callback_handler.callbacks
        if added:
            trainer.add_callback(self)
        try:
            for rnd in self.federation.rounds(trainer.model, max_rounds=self.max_rounds):
                self._prepare(trainer, user_optimizer, user_scheduler)
                self.history.append(self._round(trainer, rnd))
        finally:
            args.max_steps, args.num_train_epochs = saved
            if user_optimizer is not None:
                trainer.optimizer = user_optimizer
            elif self.reset_optimizer:
                trainer.optimizer = None  # a later train() or round starts fresh too
            trainer.lr_scheduler = user_scheduler
            if participant is not None:
                participant.evaluate = connected_evaluate
            if added:
                trainer.remove_callback(self)
        return list(self.history)

    def _prepare(self, trainer: Trainer, user_optimizer: Any, user_scheduler: Any) -> None:
        args = trainer.args
        if self.steps_per_round is not None:
            args.max_steps = self.steps_per_round
        elif self.epochs_per_round is not None:
            args.max_steps = -1
            args.num_train_epochs = self.epochs_per_round
        if user_optimizer is not None:
            trainer.optimizer = user_optimizer
        elif self.reset_optimizer:
            trainer.optimizer = None  # the Trainer creates a fresh one
        elif trainer.optimizer is not None:
            trainer.optimizer = _unwrap_optimizer(trainer.optimizer)
        trainer.lr_scheduler = user_scheduler  # None: a schedule for this round's budget

    def _round(self, trainer: Trainer, rnd: RoundContext) -> RoundRecord:
        output = trainer.train()
        steps = int(output.global_step)
        train_loss = float(output.training_loss)
        metrics: dict[str, Any] = {
            "loss": train_loss if self.last_loss is None else self.last_loss,
            "train_loss": train_loss,
            "steps": steps,
        }
        if self.before_submit is not None:
            self.before_submit(rnd, trainer)
        count = self.num_examples or len(trainer.train_dataset)
        report = rnd.submit(num_examples=count, metrics=metrics)
        return RoundRecord(
            round_number=rnd.round_number,
            model_version=rnd.model_version,
            steps=steps,
            metrics=metrics,
            num_examples=count,
            report=report,
        )


def federated_train(
    trainer: Trainer,
    federation: Federation,
    *,
    max_rounds: int | None,
    steps_per_round: int | None = None,
    epochs_per_round: float | None = None,
    num_examples: int | None = None,
    reset_optimizer: bool = True,
    before_submit: Callable[[RoundContext, Trainer], object] | None = None,
    evaluate: Evaluator | None = None,
) -> list[RoundRecord]:
    """Train ``trainer`` federated for ``max_rounds`` rounds; see :class:`FederatedCallback`."""
    callback = FederatedCallback(
        federation,
        max_rounds=max_rounds,
        steps_per_round=steps_per_round,
        epochs_per_round=epochs_per_round,
        num_examples=num_examples,
        reset_optimizer=reset_optimizer,
        before_submit=before_submit,
        evaluate=evaluate,
    )
    return callback.train(trainer)


def trainer_evaluator(
    trainer: Trainer, *, eval_dataset: Any = None, share: Share = "trainable"
) -> Evaluator:
    """An ``evaluate=`` callback that scores a candidate with ``trainer.evaluate()``.

    The candidate's tensors replace ``trainer.model``'s shared parameters (``share`` as in
    :func:`client_shim.connect`) for the evaluation only; the model's own weights are put
    back afterwards, even if the evaluation fails. ``eval_dataset`` defaults to the
    Trainer's. Returns the finite numbers of the evaluation (``eval_loss``, ``eval_*`` from
    ``compute_metrics``); the vendor gate compares the one named in ``[gates] metric``.
    """
    import torch

    def evaluate(tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        shared = shared_parameters(trainer.model, share)
        check_matches(shared, tensors, share=share, note="the candidate was not evaluated")
        saved = {name: param.detach().clone() for name, param in shared.items()}
        try:
            _load(shared, tensors)
            result = trainer.evaluate(eval_dataset=eval_dataset)
        finally:
            with torch.no_grad():
                for name, param in shared.items():
                    param.copy_(saved[name])
        return {
            str(key): float(value)
            for key, value in result.items()
            if isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }

    return evaluate
