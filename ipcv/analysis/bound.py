"""The NGR error bound of the paper's Appendix E, measured.

Per image (the token set X of one segment at the pruning block, Y the kept subset):

- ``B = max_i ||h_{i,l_p}||_2`` (Assumption E.2), over all tokens of the image (CLS included);
- ``d_H(X, Y)``: with Y a subset of X this is the largest distance of a removed token to its
  nearest kept token;
- Lemma E.3 (and Theorem E.5 through it) uses ``||F_i(X) - F_r(Y)|| <= L_ViT d_H(X, Y)`` for a
  removed token ``i`` and a kept neighbour ``r``. The smallest ``L_ViT`` that makes that step
  true on the data is ``L_proof = max_{i, r in N_k(i)} ||F_i(X) - F_r(Y)|| / d_H``. Assumption
  E.1 read index by index (``i = j``, a kept token with and without pruning) gives a second
  estimate, ``L_matched = max_r ||F_r(X) - F_r(Y)|| / d_H``. Both are lower estimates of the
  true constant (a supremum over all token sets), so a bound that holds with them holds a
  fortiori.
- Theorem E.5: ``||h~_{i} - h_{i}|| <= 2B(L_ViT + 1)`` for every removed token, at the final
  output. The sketch's identity ``h~_i - h_i = mean_{r in N_k(i)} (D_r - D_i)`` with
  ``D_i = F_i(X) - h_{i,l_p}``, ``D_r = F_r(Y) - h_{r,l_p}`` is checked too.

``F(X)`` is the unpruned run's final output; ``F_r(Y)`` the compressed run's final output for kept
token ``r`` (with the run's own AS depth).
"""

from __future__ import annotations

import pandas as pd
import torch

from .encoders import Batch
from .hidden import Compressed, Unpruned


def hausdorff_to_subset(points: torch.Tensor, subset: torch.Tensor) -> float:
    """``d_H(X, Y)`` for ``Y`` a subset of ``X``: ``max_{x in X} min_{y in Y} ||x - y||_2``.

    Args:
        points: ``[N, D]`` the set X. subset: ``[N]`` bool, True for the rows in Y (at least one).
    """
    x, y = points.double(), points[subset].double()
    return float(torch.cdist(x, y).min(dim=1).values.max())


def appendix_e(un: Unpruned, c: Compressed, batch: Batch) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Theorem E.5 on every image of a batch.

    Returns:
        per_image: image, B, d_H, L_proof, L_matched, bound (``2B(L_proof + 1)``), max_error,
            within (all errors <= bound), identity_residual (max abs, the sketch's identity).
        per_token: image, error ``||h~_i - h_i||``, lemma (the data-dependent Lemma E.3 bound
            ``mean_r ||h_i - h_r|| + L_proof d_H``), bound, norm ``||h_i||`` (the unpruned final
            state: a bound above it is weaker than the error of predicting zero).
    """
    lp = c.settings.prune_layer
    h_lp, f_x, f_y = un.states[lp].double(), un.final.double(), c.final.double()
    seg = batch.segment_ids()
    nb = c.neighbor_rows  # [R, k] packed rows
    images, tokens = [], []
    for s, name in enumerate(batch.names):
        rows = (seg == s).nonzero().flatten()
        kept = torch.zeros(len(seg), dtype=torch.bool)
        kept[c.keep] = True
        r_sel = (seg[c.rem] == s).nonzero().flatten()  # positions into c.rem
        rem, nbr = c.rem[r_sel], nb[r_sel]  # [R_s], [R_s, k]
        if len(rem) == 0:
            continue
        if not bool((seg[nbr] == s).all()):
            raise ValueError("appendix_e needs neighbours inside each image (scope='segment')")
        B = float(h_lp[rows].norm(dim=-1).max())
        d_h = hausdorff_to_subset(h_lp[rows], kept[rows])
        kept_rows = rows[kept[rows]]
        l_proof = float((f_x[rem][:, None] - f_y[nbr]).norm(dim=-1).max()) / d_h
        l_matched = float((f_x[kept_rows] - f_y[kept_rows]).norm(dim=-1).max()) / d_h
        bound = 2 * B * (l_proof + 1)
        err = (f_y[rem] - f_x[rem]).norm(dim=-1)  # NGR-restored vs unpruned final
        d_i = f_x[rem] - h_lp[rem]  # [R_s, D]
        d_r = f_y[nbr] - h_lp[nbr]  # [R_s, k, D]
        identity = (f_y[rem] - f_x[rem]) - (d_r - d_i[:, None]).mean(dim=1)
        lemma = (h_lp[rem][:, None] - h_lp[nbr]).norm(dim=-1).mean(dim=1) + l_proof * d_h
        images.append(
            dict(
                image=name,
                B=B,
                d_H=d_h,
                L_proof=l_proof,
                L_matched=l_matched,
                bound=bound,
                max_error=float(err.max()),
                within=bool((err <= bound).all()),
                identity_residual=float(identity.abs().max()),
            )  # fmt: skip
        )
        norm = f_x[rem].norm(dim=-1)
        tokens.append(
            pd.DataFrame(dict(image=name, error=err.numpy(), lemma=lemma.numpy(), bound=bound, norm=norm.numpy()))
        )
    return pd.DataFrame(images), pd.concat(tokens, ignore_index=True)
