"""Are these weights trained? Checked on the modules, never assumed from where they were loaded.

A model built from a config and saved (``save_pretrained``) without training keeps every normalisation
layer exactly as its initialiser left it: one constant scale (1 for LayerNorm / RMSNorm, 0 for the
``1 + w`` RMSNorm variants) and a zero shift, and every LayerScale at its one initial value. Training moves
them all. So the rule is: weights are **random (untrained)** when every such layer still holds one
constant scale and a zero shift; **trained** when most of them have moved. A mix (some moved, most not) is
reported as such and treated as untrained, since no quality claim can rest on it.

Projection / linear weights are looked at only where a model has no norm layer at all: then their
standard deviation against the config's ``initializer_range`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# share of norm layers that must have moved for "trained"
TRAINED_SHARE = 0.5


@dataclass(frozen=True)
class WeightsCheck:
    """The outcome of :func:`check`. trained: the quality numbers may be read as results.
    moved / layers: norm (and LayerScale) layers whose parameters left their initial values, of all found."""

    trained: bool
    moved: int
    layers: int
    detail: str

    @property
    def label(self) -> str:
        """``"trained"`` or ``"random (untrained)"``, with the evidence."""
        return f"{'trained' if self.trained else 'random (untrained)'}: {self.detail}"


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.modules.batchnorm._BatchNorm) or name.endswith(
        ("RMSNorm", "LayerNorm", "Norm")
    )


def _is_layer_scale(module: nn.Module) -> bool:
    return "LayerScale" in type(module).__name__


def _at_init(module: nn.Module) -> bool | None:
    """True when the module's own parameters are still at their initial values: every scale-like tensor
    one constant, every shift zero (None: no parameter to judge)."""
    params = dict(module.named_parameters(recurse=False))
    if not params:
        return None
    for name, p in params.items():
        t = p.detach()
        if t.device.type == "meta":
            return None
        t = t.float()
        if "bias" in name:
            if bool(t.abs().max() != 0):
                return False
        elif bool((t != t.reshape(-1)[0]).any()):
            return False
    return True


def check(model: nn.Module) -> WeightsCheck:
    """Look at ``model``'s normalisation and LayerScale layers (see the module docstring)."""
    states = [s for m in model.modules() if _is_norm(m) or _is_layer_scale(m) if (s := _at_init(m)) is not None]
    if states:
        moved, total = states.count(False), len(states)
        trained = moved / total >= TRAINED_SHARE
        if moved == 0:
            detail = f"all {total} norm / LayerScale layers still at their initial scale and zero shift"
        elif trained:
            detail = f"{moved} of {total} norm / LayerScale layers moved from their initial values"
        else:
            detail = f"only {moved} of {total} norm / LayerScale layers moved from their initial values"
        return WeightsCheck(trained, moved, total, detail)
    return _linear_check(model)


def _linear_check(model: nn.Module) -> WeightsCheck:
    std = getattr(getattr(model, "config", None), "initializer_range", None)
    linears = [m.weight.detach().float() for m in model.modules() if isinstance(m, nn.Linear)]
    linears = [w for w in linears if w.device.type != "meta" and w.numel() > 1]
    if std is None or not linears:
        return WeightsCheck(False, 0, 0, "no norm layer and no initializer_range to compare with: not checked")
    at_init = [abs(float(w.std()) / std - 1) < 0.1 and abs(float(w.mean())) < 0.1 * std for w in linears]
    moved = at_init.count(False)
    trained = moved / len(linears) >= TRAINED_SHARE
    return WeightsCheck(
        trained, moved, len(linears),
        f"no norm layer; {moved} of {len(linears)} linear layers away from the initial std {std:g}",
    )  # fmt: skip
