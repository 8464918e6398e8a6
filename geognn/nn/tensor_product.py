"""Channel-wise tensor products ("uvu", "uuu") evaluated with a few large operations.

``ChannelwiseTensorProduct`` computes exactly what e3nn's ``o3.TensorProduct`` computes for the same
irreps and instructions when every instruction is channel-wise (``"uvu"`` or ``"uuu"``) and the
weights are given per sample (``shared_weights=False, internal_weights=False``), with e3nn's default
normalisation (``irrep_normalization="component"``, ``path_normalization="element"``, unit input
and output variances, path weight 1). Same inputs, same flat weight layout and ``weight_numel``, same
output layout.

Maths. For an instruction ``p = (i1, i2, o)`` coupling block ``i1`` of ``x`` (irrep l1, multiplicity
U, components i) with block ``i2`` of ``y`` (l2, multiplicity V, components j) into block ``o`` of
the output (l3, components k), with ``C`` the Wigner 3j symbol ``o3.wigner_3j(l1, l2, l3)``:

.. math::
    \\text{uvu:}\\quad z^{o}_{uk} \\mathrel{+}= \\alpha_p \\sum_{v} w^{p}_{uv}
        \\sum_{ij} C_{ijk}\\, x^{i1}_{ui}\\, y^{i2}_{vj}, \\qquad
    \\text{uuu:}\\quad z^{o}_{uk} \\mathrel{+}= \\alpha_p\\, w^{p}_{u}
        \\sum_{ij} C_{ijk}\\, x^{i1}_{ui}\\, y^{i2}_{uj},

    \\alpha_p = \\sqrt{\\frac{2 l_3 + 1}{\\sum_{p' \\to o} n_{p'}}}, \\qquad
    n_{p'} = V \\text{ (uvu)}, \\; 1 \\text{ (uuu)},

the sum in ``alpha_p`` running over the instructions writing into the same output block. Weights
``w^p`` (shape [U, V] for uvu, [U] for uuu) lie one after the other in instruction order in the
flat weight vector, row-major; an instruction without weight (``has_weight=False``) uses w = 1.

How it is evaluated (why it is faster than e3nn's generated code on CPU). e3nn slices every block
out of the inputs (``x[:, a:b]``; in backward each slice allocates and zero-fills a gradient as
wide as the whole input, which dominated NequIP's training profile) and runs one einsum per
instruction into an ``[n, U, 2 l3 + 1]`` block. Here:

- the inputs are cut with ``torch.split`` (one ``cat`` in backward), and for every input block of
  x the Clebsch-Gordan symbols of all its instructions are stacked into one constant matrix ``G``;
- uvu: ``M[e, i, (p, v, k)] = sum_j y[e, (v, j)] G[(v, j), i, (p, v, k)]`` for all blocks of x
  in one matmul, then one ``bmm`` per block of x, ``R[e, (p, v, k), u] = sum_i M[e, i, (p, v, k)]
  x[e, u, i]`` (for l1 = 0 an outer product, with the weights applied to x first);
- uuu: the per-channel outer product ``x[n, u, i] y[n, u, J]`` of a block of x with the blocks
  of y it meets, laid out ``[(i, J), (n, u)]``, times ``G[(p, k), (i, J)]`` in one matmul;
- ``R`` is split per instruction and multiplied by its weights with the channels u last, so the
  weights ``[n, U]`` broadcast over k along contiguous rows (summed over v for uvu);
- with ``index`` the pieces are summed per bucket (``scatter_sum``) before they are put into e3nn's
  ``[U, 2 l3 + 1]`` order, which then costs ``dim_size`` rows instead of n: NequIP's and MACE's
  edge convolutions never build the ``[E, irreps_out]`` message tensor.

Every operation is an ordinary differentiable torch op, so double backward (training on forces)
works.

Clebsch-Gordan constants and checkpoints. The Wigner 3j symbols are buffers named as in e3nn,
``_compiled_main_left_right._w3j_{l1}_{l2}_{l3}``: persistent for exactly the ones e3nn's code
registers (same names, same order), so a model's ``state_dict`` keys are unchanged and checkpoints
load either way; non-persistent for the paths e3nn special-cases (an l = 0 factor, the uuu
1 x 1 -> 1 cross product). ``geognn.nn.e3nn_blocks.refresh_wigner_3j`` / ``ExactCouplingsMixin``
therefore keep all of them exact in float64 after ``.double()`` or ``load_state_dict``, and the
stacked matrices ``G`` are rebuilt from them whenever a buffer is replaced or modified. e3nn's
other two persistent buffers are mirrored too: ``weight`` (empty: the weights are external) and
``output_mask`` (1 for the output columns some instruction writes to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from e3nn import o3
from torch import nn

from .scatter import scatter_sum

#: Connection modes supported (e3nn's names).
MODES = ("uvu", "uuu")


@dataclass(frozen=True)
class _Path:
    """One instruction with everything forward needs about it."""

    i_out: int
    i2: int
    l3: int
    mul2: int  # V: multiplicity summed over (uvu), 1 for uuu
    alpha: float  # e3nn's normalisation coefficient
    weight_slice: tuple[int, int] | None  # [start, stop) in the flat weights, None without weight


class ChannelwiseTensorProduct(nn.Module):
    """e3nn's channel-wise ``TensorProduct`` ("uvu" or "uuu", external per-sample weights), faster.

    Args:
        irreps_in1: irreps of ``x`` (first input).
        irreps_in2: irreps of ``y`` (second input).
        irreps_out: irreps of the output.
        instructions: e3nn-style tuples ``(i_in1, i_in2, i_out, mode, has_weight)``, all with the
            same ``mode``, "uvu" (multiplicity of the output = that of ``x``) or "uuu" (all three
            multiplicities equal). Parities and l must satisfy the selection rules.

    ``forward(x [..., irreps_in1.dim], y [..., irreps_in2.dim], weight [..., weight_numel])
    -> [..., irreps_out.dim]``; the leading dimensions of the three inputs must be equal (no
    broadcasting, unlike e3nn). ``weight`` may be None when ``weight_numel == 0``. Output blocks
    that no instruction reaches are zero. With ``index`` [n] and ``dim_size`` the products are
    summed per bucket (see ``forward``).
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: Sequence[tuple]):
        super().__init__()
        self.irreps_in1, self.irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
        self.irreps_out = o3.Irreps(irreps_out)
        # (multiplicity, 2l+1) of every block as plain ints: forward reads these, never the Irreps,
        # because torch.compile cannot guard on e3nn's Irrep objects (their __len__ raises)
        self._layout1 = tuple((mul, ir.dim) for mul, ir in self.irreps_in1)
        self._layout2 = tuple((mul, ir.dim) for mul, ir in self.irreps_in2)
        self._layout_out = tuple((mul, ir.dim) for mul, ir in self.irreps_out)
        self._dims = (self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim)
        self.instructions = [tuple(ins) for ins in instructions]
        if any(len(ins) != 5 for ins in self.instructions):
            raise ValueError("instructions must be tuples (i_in1, i_in2, i_out, mode, has_weight)")
        modes = {ins[3] for ins in self.instructions}
        if len(modes) > 1 or not modes <= set(MODES):
            raise ValueError(f"all instructions must share one mode among {MODES}, got {sorted(modes)}")
        self.mode = modes.pop() if modes else "uvu"
        fan_in = [0] * len(self.irreps_out)  # sum of n_p per output block (path_normalization="element")
        for i1, i2, o, _, _ in self.instructions:
            (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = self.irreps_in1[i1], self.irreps_in2[i2], self.irreps_out[o]
            if ir1.p * ir2.p != ir_out.p or not abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l:
                raise ValueError(f"instruction {(i1, i2, o)}: {ir1} x {ir2} cannot give {ir_out}")
            if mul_out != mul1 or (self.mode == "uuu" and mul2 != mul1):
                raise ValueError(
                    f"instruction {(i1, i2, o)}: multiplicities {mul1}, {mul2} -> {mul_out} "
                    f"do not fit mode {self.mode!r}"
                )
            fan_in[o] += mul2 if self.mode == "uvu" else 1

        # paths of each input block, weights located in e3nn's flat layout
        self.weight_numel = 0
        block_paths: dict[int, list[_Path]] = {}
        for i1, i2, o, _, has_weight in self.instructions:
            mul1, mul2 = self.irreps_in1[i1].mul, self.irreps_in2[i2].mul
            size = mul1 * mul2 if self.mode == "uvu" else mul1
            weight_slice = (self.weight_numel, self.weight_numel + size) if has_weight else None
            self.weight_numel += size if has_weight else 0
            if size == 0:  # an empty block: e3nn produces no code for it either
                continue
            ir_out = self.irreps_out[o].ir
            alpha = math.sqrt(ir_out.dim / fan_in[o]) if fan_in[o] > 0 else math.sqrt(ir_out.dim)
            block_paths.setdefault(i1, []).append(
                _Path(o, i2, ir_out.l, mul2 if self.mode == "uvu" else 1, alpha, weight_slice)
            )

        # blocks whose paths have the same structure share one coupling matrix ("signature")
        self._blocks: list[tuple[int, int]] = []  # (input block, signature index)
        self._signatures: list[tuple[int, tuple]] = []  # (l1, ((i2, l3, V, alpha), ...))
        for i1 in sorted(block_paths):
            sig = (self.irreps_in1[i1].ir.l, tuple((p.i2, p.l3, p.mul2, p.alpha) for p in block_paths[i1]))
            if sig not in self._signatures:
                self._signatures.append(sig)
            self._blocks.append((i1, self._signatures.index(sig)))
        self._paths = block_paths
        self._y_used = [
            tuple(i2 for i2 in range(len(self.irreps_in2)) if i2 in {q[0] for q in paths})
            for _, paths in self._signatures
        ]  # uuu: blocks of y each signature reads
        self._m_sizes = [
            (2 * l1 + 1) * sum(mul2 * (2 * l3 + 1) for _, l3, mul2, _ in paths) for l1, paths in self._signatures
        ]  # uvu: columns of M per signature

        # weights reordered so that forward meets them in (block, path) order: usually the identity
        order = [p.weight_slice for i1, _ in self._blocks for p in block_paths[i1] if p.weight_slice]
        index = [k for start, stop in order for k in range(start, stop)]
        self._weight_sizes = [stop - start for start, stop in order]
        self.register_buffer("_weight_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self._reorder_weights = index != list(range(self.weight_numel))

        # Wigner 3j symbols: exactly the persistent buffers e3nn's generated code registers (same
        # names, same order, so state_dict keys do not change), plus non-persistent ones for the
        # paths e3nn computes with special-cased code (an l = 0 factor, uuu cross product)
        needed, persistent = [], []
        for i1, i2, o, _, has_weight in self.instructions:
            mul1, mul2 = self.irreps_in1[i1].mul, self.irreps_in2[i2].mul
            if mul1 * mul2 == 0:
                continue
            key = (self.irreps_in1[i1].ir.l, self.irreps_in2[i2].ir.l, self.irreps_out[o].ir.l)
            needed += [key] if key not in needed else []
            special = 0 in key or (self.mode == "uuu" and key == (1, 1, 1))
            if (not special or (self.mode == "uvu" and not has_weight)) and key not in persistent:
                persistent.append(key)
        self._w3j_keys = persistent + [key for key in needed if key not in persistent]
        self._compiled_main_left_right = nn.Module()  # e3nn's name for the module holding them
        for key in self._w3j_keys:
            exact = o3.wigner_3j(*key, dtype=torch.float64).to(torch.get_default_dtype())
            self._compiled_main_left_right.register_buffer(
                "_w3j_{}_{}_{}".format(*key), exact, persistent=key in persistent
            )
        self._cache: tuple[list, list[torch.Tensor]] | None = None

        # e3nn's other persistent buffers: weight (empty, the weights are external) and output_mask
        self.register_buffer("weight", torch.Tensor())
        reached = {p.i_out for paths in block_paths.values() for p in paths}
        mask = [
            torch.full((mul * ir.dim,), 1.0 if o in reached else 0.0) for o, (mul, ir) in enumerate(self.irreps_out)
        ]
        self.register_buffer("output_mask", torch.cat(mask) if mask else torch.ones(0))

    # ------------------------------------------------------------------------- coupling matrices
    def _w3j(self, l1: int, l2: int, l3: int) -> torch.Tensor:
        return getattr(self._compiled_main_left_right, f"_w3j_{l1}_{l2}_{l3}")

    def _y_rows(self, paths) -> dict[int, int]:
        """First row of each block of y in a coupling matrix, and the total under key -1.

        uvu: all of y (rows (v, j) of every block, y's own layout); uuu: one channel (rows j) of
        each block of y that ``paths`` use, in block order."""
        rows, total = {}, 0
        used = {i2 for i2, *_ in paths}
        for i2, (mul, ir_dim) in enumerate(self._layout2):
            if self.mode == "uvu" or i2 in used:
                rows[i2] = total
                total += (mul if self.mode == "uvu" else 1) * ir_dim
        rows[-1] = total
        return rows

    def _build_couplings(self) -> list[torch.Tensor]:
        """Per signature, ``G[J, i, (p, v, k)] = alpha_p C^p_{ijk}`` (and delta over v for uvu), J
        the rows of ``_y_rows``; laid out for forward: uvu ``[J, (i, p, v, k)]``, all signatures
        side by side in one matrix; uuu ``[(p, k), (i, J)]``, one per signature."""
        mats = []
        ref = self._w3j(*self._w3j_keys[0])
        for l1, paths in self._signatures:
            rows = self._y_rows(paths)
            width = sum(mul2 * (2 * l3 + 1) for _, l3, mul2, _ in paths)
            g = ref.new_zeros(rows[-1], 2 * l1 + 1, width)  # [J, i, (p, v, k)]
            col = 0
            for i2, l3, mul2, alpha in paths:
                l2 = (self._layout2[i2][1] - 1) // 2
                c = alpha * self._w3j(l1, l2, l3).transpose(0, 1)  # [j, i, k]
                d2, d3 = 2 * l2 + 1, 2 * l3 + 1
                for v in range(mul2):  # uvu: channel v of y feeds only the columns of v
                    row = rows[i2] + v * d2
                    g[row : row + d2, :, col + v * d3 : col + (v + 1) * d3] = c
                col += mul2 * d3
            if self.mode == "uvu":
                mats.append(g.reshape(rows[-1], -1))
            else:
                mats.append(g.permute(2, 1, 0).reshape(width, -1).contiguous())
        if self.mode == "uvu":
            return [torch.cat(mats, dim=1)]
        return mats

    def _couplings(self) -> list[torch.Tensor]:
        """``_build_couplings()``, rebuilt only when a Wigner 3j buffer was replaced or changed.

        Under ``torch.compile`` the matrices are built inside the traced graph on every call (a
        few small copies), without the cache: its check reads tensor versions and mutates the
        module, which Dynamo would have to guard on.
        """
        if torch.compiler.is_compiling():
            return self._build_couplings()
        state = [(b, b._version) for b in (self._w3j(*key) for key in self._w3j_keys)]
        cached = self._cache
        if (
            cached is None
            or len(cached[0]) != len(state)
            or any(a is not b or va != vb for (a, va), (b, vb) in zip(cached[0], state))
        ):
            self._cache = cached = (state, self._build_couplings())
        return cached[1]

    # ------------------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        dim_size: int | None = None,
    ) -> torch.Tensor:
        """``x [..., irreps_in1.dim], y [..., irreps_in2.dim], weight [..., weight_numel]
        -> [..., irreps_out.dim]``.

        With ``index`` [n] (x, y and weight then [n, ...]) and ``dim_size``: the products summed per
        bucket, ``out[b] = sum_{r: index[r] = b} TP(x_r, y_r, w_r)`` -> [dim_size, irreps_out.dim]
        (a message-passing aggregation). The sum is taken before the output is put in e3nn's
        layout, so that rearrangement costs dim_size rows instead of n.
        """
        lead = x.shape[:-1]
        if y.shape[:-1] != lead or (weight is not None and weight.shape[:-1] != lead):
            raise ValueError(
                f"leading dimensions differ: x {tuple(x.shape)}, y {tuple(y.shape)}, "
                f"weight {None if weight is None else tuple(weight.shape)}"
            )
        if self.weight_numel and (weight is None or weight.shape[-1] != self.weight_numel):
            raise ValueError(
                f"weight must have {self.weight_numel} columns, got {None if weight is None else tuple(weight.shape)}"
            )
        if index is not None and (dim_size is None or x.dim() != 2 or index.shape != lead):
            raise ValueError("index needs 2-d inputs, one index per row, and dim_size")
        # sizes taken from tensors, not computed in Python: under torch.jit.trace (geognn export) they
        # stay symbolic, so the traced graph holds for any number of edges and atoms
        n = x.shape[0] if x.dim() == 2 else lead.numel()
        rows = n if index is None else dim_size
        dim1, dim2, dim_out = self._dims
        x, y = x.reshape(n, dim1), y.reshape(n, dim2)
        outputs: list[list[torch.Tensor]] = [[] for _ in self._layout_out]
        if self._blocks:
            for p, piece in self._pieces(x, y, weight, n):  # [n, k, U]
                if index is not None:
                    piece = scatter_sum(piece, index, rows)  # [rows, k, U]
                outputs[p.i_out].append(piece)
        blocks = []
        for (mul, ir_dim), terms in zip(self._layout_out, outputs):
            if not terms:
                blocks.append(x.new_zeros(rows, mul * ir_dim))
                continue
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            blocks.append(total.transpose(1, 2).reshape(rows, mul * ir_dim))  # [rows, U * k]
        out = torch.cat(blocks, dim=-1) if blocks else x.new_zeros(rows, 0)
        return out if index is not None else out.reshape(*lead, dim_out)

    def _pieces(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, n: int):
        """Yield ``(path, alpha_p sum_v w^p C^p (x y)) [n, 2 l3 + 1, U]``, one per instruction.

        Channels u last (and for uuu the rows n before them): the weight product then broadcasts
        over k with contiguous rows of U.
        """
        couplings = self._couplings()
        x_blocks = x.split([mul * ir_dim for mul, ir_dim in self._layout1], dim=-1)
        weights = iter(())
        if self.weight_numel:
            w = weight.reshape(n, self.weight_numel)
            if self._reorder_weights:
                w = w.index_select(-1, self._weight_index)
            weights = iter(w.split(self._weight_sizes, dim=-1))
        if self.mode == "uvu":  # M[e, i, (p, v, k)] for every signature in one matmul
            m = (y @ couplings[0]).split(self._m_sizes, dim=-1)
        else:  # y per channel, rows and channels last: [2 l2 + 1, n, U] per block
            y_blocks = [
                b.reshape(n, mul, ir_dim).permute(2, 0, 1)
                for b, (mul, ir_dim) in zip(y.split([mul * d for mul, d in self._layout2], dim=-1), self._layout2)
            ]
            y_channels = {}
        for i1, s in self._blocks:
            mul1, dim1 = self._layout1[i1]
            x_block = x_blocks[i1].reshape(n, mul1, dim1)  # [n, U, 2 l1 + 1]
            paths = self._paths[i1]
            if self.mode == "uvu" and dim1 == 1 and all(p.mul2 == 1 for p in paths):
                # l1 = 0: the weights multiply x ([n, U]) before the outer product with M
                x0 = x_block.reshape(n, 1, mul1)
                for p, mp in zip(paths, m[s].split([2 * p.l3 + 1 for p in paths], dim=-1)):
                    xw = x0 if p.weight_slice is None else x0 * next(weights).reshape(n, 1, mul1)
                    yield p, mp.unsqueeze(-1) * xw  # [n, k, U]
                continue
            if self.mode == "uvu":
                xt = x_block.transpose(1, 2)  # [n, i, U]
                mt = m[s].reshape(n, dim1, -1).transpose(1, 2)  # [n, (p, v, k), i]
                # R[e, (p, v, k), u] = sum_i M[e, i, (p, v, k)] x[e, u, i]
                r = torch.bmm(mt, xt)
                split_dim = 1
            else:
                used = self._y_used[s]
                if used not in y_channels:  # [J, n, U]
                    y_channels[used] = torch.cat([y_blocks[i2] for i2 in used], dim=0).contiguous()
                xt = x_block.permute(2, 0, 1).contiguous()  # [i, n, U]
                outer = xt.unsqueeze(1) * y_channels[used].unsqueeze(0)  # [i, J, n, U]
                # R[(p, k), n, u] = sum_{i, J} G[(p, k), (i, J)] x[n, u, i] y[n, u, J]: one matmul
                r = (couplings[s] @ outer.reshape(-1, n * mul1)).reshape(-1, n, mul1)  # [(p, k), n, U]
                split_dim = 0
            for p, piece in zip(paths, r.split([p.mul2 * (2 * p.l3 + 1) for p in paths], dim=split_dim)):
                if p.weight_slice is None:
                    out = piece.reshape(n, p.mul2, -1, mul1).sum(1) if p.mul2 > 1 else piece
                elif p.mul2 == 1:  # w^p[u] broadcast over k, rows of U contiguous
                    out = piece * next(weights).reshape(n, mul1).unsqueeze(split_dim)
                else:  # w^p[u, v]: [n, V, 1, U] against [n, V, k, U], summed over v (uvu only)
                    wp = next(weights).reshape(n, mul1, p.mul2).transpose(1, 2).unsqueeze(2)
                    out = (piece.reshape(n, p.mul2, -1, mul1) * wp).sum(1)
                yield p, (out if split_dim == 1 else out.transpose(0, 1))  # [n, k, U]

    def extra_repr(self) -> str:
        return (
            f"{self.irreps_in1.simplify()} x {self.irreps_in2.simplify()} -> {self.irreps_out.simplify()}, "
            f"mode={self.mode!r}, {len(self.instructions)} paths, weight_numel={self.weight_numel}"
        )
