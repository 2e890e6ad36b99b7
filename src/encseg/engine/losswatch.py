"""The finiteness check of the training loss, without a host sync per step.

Each training step hands its detached loss terms (still on the device) to ``LossWatch.add``; ``check`` looks at
every step since the previous check with one transfer and raises ``NonFiniteLossError`` for the first step whose
loss was NaN/inf, naming the step, its terms and its batch's files, as a check at that step would have. The
LightningModule checks before every logged step, every validation and every checkpoint, so a non-finite loss is
never logged as a number, scored, or saved; at most ``train.log_every`` steps run on after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encseg.errors import EncsegError


class NonFiniteLossError(EncsegError, FloatingPointError):
    """A NaN/inf training loss: the message names the step, the loss terms and the batch's files."""


@dataclass
class _Step:
    step: int
    epoch: int
    terms: dict[str, torch.Tensor]
    files: list[str]


class LossWatch:
    def __init__(self) -> None:
        self.pending: list[_Step] = []

    def add(self, step: int, epoch: int, terms: dict[str, torch.Tensor], files) -> None:
        """One micro-batch's terms (``"loss"`` is the total) at optimiser step ``step`` (0-based, before it)."""
        self.pending.append(_Step(int(step), int(epoch), terms, list(files)))

    def check(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        finite = torch.stack([torch.isfinite(p.terms["loss"]).all() for p in pending]).cpu()
        if bool(finite.all()):
            return
        bad = pending[int((~finite).nonzero()[0, 0])]
        terms = {k: float(v) for k, v in bad.terms.items()}
        raise NonFiniteLossError(
            f"non-finite training loss at step {bad.step} (epoch {bad.epoch}): terms {terms}; batch files "
            f"{bad.files}. Lower train.lr, check the labels of these files (`encseg data check`), or use "
            f"precision '32'.")
