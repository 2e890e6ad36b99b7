"""``train.compile: true``: ``torch.compile`` on the modules a segmenter's forward actually calls.

The segmenter's forward calls its encoder (``Encoder.forward`` -> the timm model's ``forward_intermediates``; the
timm model's own ``forward``/``__call__`` is never called), then the neck and the head. Each of the three is
compiled in place (``nn.Module.compile``: parameter names and the state dict are unchanged, so checkpoints and
exported weights are those of an eager run). The Mask2Former loss (Hungarian matching with scipy) stays eager:
it is called through ``head.loss``, not ``head.forward``.

Training, validation and the final evaluation all run the compiled modules; dynamo recompiles per input shape
and mode (train / eval), and marks a dimension dynamic after its second shape.
"""

from __future__ import annotations

from torch import nn


def compile_segmenter(seg: nn.Module, backend: str = "inductor", **options) -> list[str]:
    """Compile ``seg.encoder``, ``seg.neck`` (when there is one) and ``seg.head`` in place; returns their names."""
    names = [name for name in ("encoder", "neck", "head") if getattr(seg, name, None) is not None]
    for name in names:
        getattr(seg, name).compile(backend=backend, **options)
    return names
