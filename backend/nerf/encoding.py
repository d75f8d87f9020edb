"""Multiresolution hash encoding of points in [-1, 1]^3 (instant-ngp, Müller et al. 2022, §3).

The implementations of one encoding, chosen by hash_encoding.make_encoding (as nerfstudio does):
- `TorchHashGrid`: plain PyTorch, runs anywhere. It also returns the exact Jacobian of the features
  with respect to the point, from the same corner look-ups, so the field gets its normals without a
  double backward (field.py).
- `TcnnHashGrid`: tiny-cuda-nn's fused kernel, used on CUDA when `tinycudann` imports.
- `CompiledHashGrid` (compiled.py): TorchHashGrid's tables evaluated by torch.compile'd code, on CUDA.
They share `ProgressiveLevels`, the size and level state.

Levels are switched on progressively (threestudio): levels >= `active_levels` output zeros.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# instant-ngp's spatial hash, eq. (4): xor of the coordinates times large primes (the first is 1).
PRIMES = (1, 2654435761, 805459861)
INIT_SCALE = 1e-4  # instant-ngp initialises the table uniformly in [-1e-4, 1e-4]


def level_resolutions(settings) -> list[int]:
    """Grid cells per axis of each level: floor(base * scale^l), eq. (2) of instant-ngp."""
    return [int(math.floor(settings.base_resolution * settings.per_level_scale ** level))
            for level in range(settings.hash_levels)]


class _Level:
    """One level's constants: cells per axis, vertices per axis, dense or hashed, rows in its table."""

    def __init__(self, resolution: int, table_size: int):
        self.resolution = resolution
        self.vertices = resolution + 1
        self.dense = self.vertices ** 3 <= table_size
        self.size = self.vertices ** 3 if self.dense else table_size
        self.hash_mask = table_size - 1

    def _cell(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = unit * self.resolution
        cell = grid.floor().clamp_(max=self.resolution - 1)      # a point at 1 stays in the last cell
        return cell, grid - cell

    def fraction(self, unit: torch.Tensor) -> torch.Tensor:
        """Position inside the cell [3, N] of unit-cube points [3, N]."""
        return self._cell(unit)[1]

    def corners(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For unit-cube points given as [3, N]: the table rows of their 8 corners, [8 * N] in the
        order (x, y, z, point) with x slowest, and their position inside the cell [3, N]."""
        cell, frac = self._cell(unit)
        cell = cell.long()
        axes = [torch.stack([cell[a], cell[a] + 1]) for a in range(3)]                  # 3 x [2, N]
        if self.dense:      # x + y V + z V^2 < V^3 <= T: int32 is enough
            x, y, z = ((c * m).int() for c, m in zip(axes, (1, self.vertices, self.vertices ** 2)))
            index = x[:, None, None] + y[None, :, None] + z[None, None, :]
        else:               # instant-ngp eq. (4), mod T; masking each term first keeps the xor below T
            x, y, z = (((c * p) & self.hash_mask).int() for c, p in zip(axes, PRIMES))
            index = x[:, None, None] ^ y[None, :, None] ^ z[None, None, :]
        return index.reshape(-1), frac


class ProgressiveLevels(nn.Module):
    """What every implementation shares: its size and the progressive level state. `active_levels` is
    a buffer, so checkpoints keep it; `n_active` is the same number on the host, so a forward never
    reads the buffer back from the device (it is read once per load)."""

    def __init__(self, settings):
        super().__init__()
        self.n_levels = settings.hash_levels
        self.n_features = settings.features_per_level
        self.out_dim = self.n_levels * self.n_features
        self.register_buffer("active_levels", torch.tensor(settings.levels_start, dtype=torch.int64))
        self.n_active = settings.levels_start
        self.register_load_state_dict_post_hook(_read_active_levels)

    def set_active_levels(self, n: int) -> None:
        self.n_active = max(0, min(int(n), self.n_levels))
        self.active_levels.fill_(self.n_active)


class TorchHashGrid(ProgressiveLevels):
    """The hash encoding in PyTorch. A level with N cells per axis has (N+1)^3 vertices; while those
    fit the table they are indexed densely, otherwise through the hash. Each level has its own table
    parameter, so the levels not yet switched on get no gradient and cost the optimiser nothing."""

    has_jacobian = True

    def __init__(self, settings):
        super().__init__(settings)
        table_size = 2 ** settings.log2_table
        self.levels = [_Level(resolution, table_size) for resolution in level_resolutions(settings)]
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(level.size, self.n_features).uniform_(-INIT_SCALE, INIT_SCALE))
            for level in self.levels)

    def forward(self, points: torch.Tensor, with_jacobian: bool = False):
        """points [N, 3] in [-1, 1]^3 -> features [N, L*F]. Inactive levels give zeros and cost
        nothing. Gradients flow to the tables, not to the points: for the derivative in the point,
        with_jacobian=True also returns `pullback`, g [N, L*F] -> sum_k g_k d feature_k / d point
        [N, 3] (a vector-Jacobian product, itself differentiable)."""
        n, n_active = points.shape[0], self.n_active
        features, jacobian = _HashGridFunction.apply(points.detach(), self.levels[:n_active], with_jacobian,
                                                     *self.tables[:n_active])
        active = _Swap01.apply(features).view(n, n_active * self.n_features)   # [l, N, F] -> [N, l F]
        features = nn.functional.pad(active, (0, self.out_dim - active.shape[1]))
        if not with_jacobian:
            return features

        def pullback(grad_features: torch.Tensor) -> torch.Tensor:
            g = grad_features[:, :active.shape[1]].reshape(n, n_active, self.n_features)
            return _Pullback.apply(jacobian, _Swap01.apply(g)).t()                 # [N, 3]

        return features, pullback


def _read_active_levels(module, incompatible_keys) -> None:
    module.n_active = int(module.active_levels)  # once per load, not per forward


class _Swap01(torch.autograd.Function):
    """[A, B, F] -> [B, A, F] contiguous, in both directions. With F = 2 the pairs move as complex
    numbers, one 8-byte element each: a transposing copy of 2-float rows is far slower on CPU."""

    @staticmethod
    def forward(ctx, x):
        return _swap01(x)

    @staticmethod
    def backward(ctx, grad):
        return _swap01(grad)


class _Pullback(torch.autograd.Function):
    """sum over levels and features of jacobian [3, l, N, F] * g [l, N, F] -> [3, N], with a
    backward that hands out contiguous gradients (autograd's would be strided, and slow to read)."""

    @staticmethod
    def forward(ctx, jacobian, g):
        ctx.save_for_backward(jacobian, g)
        return (jacobian * g).sum(1).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        jacobian, g = ctx.saved_tensors
        grad = grad[:, None, :, None]                                                  # [3, 1, N, 1]
        grad_jacobian = torch.mul(g.expand_as(jacobian), grad, out=torch.empty_like(jacobian))
        grad_g = (jacobian * grad).sum(0)
        return grad_jacobian, grad_g


def _swap01(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 2:
        return torch.view_as_real(torch.view_as_complex(x.contiguous()).transpose(0, 1).contiguous())
    return x.transpose(0, 1).contiguous()


def _rows(table: torch.Tensor) -> torch.Tensor:
    """A [rows, F] table as a 1-D tensor of rows: with 2 features a complex64 view, so a gather or a
    scatter-add moves one 8-byte element per corner (and the 1-D index_add_ is the fast one on CPU)."""
    if table.shape[1] == 2:
        return torch.view_as_complex(table)
    return table.view(-1) if table.shape[1] == 1 else table


def _unrows(rows: torch.Tensor, width: int) -> torch.Tensor:
    return torch.view_as_real(rows) if rows.is_complex() else rows.reshape(-1, width)


CHUNK = 1 << 15  # points per block in _HashGridFunction: keeps a block's intermediates in cache


class _HashGridFunction(torch.autograd.Function):
    """Trilinear interpolation (and its Jacobian) of the corner features. Work goes level by level
    (that level's table stays in cache) and block by block of CHUNK points (the intermediates stay
    in cache). Intermediates are laid out [..., n F], point and feature last and contiguous, so each
    elementwise op runs over one long vector (a last dimension of 2 is several times slower on CPU).
    The corner rows are kept for the backward.

    Outputs, level-major so each level writes contiguous blocks: features [l, N, F] and jacobian
    [3, l, N, F] (None without it), for the l levels given."""

    @staticmethod
    def forward(ctx, points, levels, with_jacobian, *tables):
        n, width = points.shape[0], tables[0].shape[1] if tables else 1
        unit = ((points.t() + 1.0) * 0.5).clamp(0.0, 1.0).contiguous()                   # [3, N]
        features = points.new_empty(len(levels), n * width)
        jacobian = points.new_empty(3, len(levels), n * width) if with_jacobian else None
        indices = []
        for i, (level, table) in enumerate(zip(levels, tables)):
            rows = _rows(table.detach())
            for start in range(0, n, CHUNK):
                block = slice(start * width, min(start + CHUNK, n) * width)
                index, frac = level.corners(unit[:, start:start + CHUNK])
                indices.append(index)
                corners = _unrows(rows.index_select(0, index), width).view(2, 2, 2, -1)    # [x, y, z, n F]
                _interpolate(corners, _per_feature(frac, width), 0.5 * level.resolution, features[i, block],
                             None if jacobian is None else jacobian[:, i, block])
        ctx.save_for_backward(unit, *indices)
        ctx.levels, ctx.with_jacobian = levels, with_jacobian
        ctx.table_shapes = [table.shape for table in tables]
        shape = (len(levels), n, width)
        return features.view(shape), None if jacobian is None else jacobian.view(3, *shape)

    @staticmethod
    def backward(ctx, grad_features, grad_jacobian):
        unit, *indices = ctx.saved_tensors
        n = unit.shape[1]
        use_jacobian = ctx.with_jacobian and grad_jacobian is not None
        grads, index = [], iter(indices)
        for i, (level, shape) in enumerate(zip(ctx.levels, ctx.table_shapes)):
            width = shape[1]
            grad = grad_features.new_zeros(shape)
            rows = _rows(grad)
            g_level = grad_features[i].reshape(-1)
            gj_level = grad_jacobian[:, i].reshape(3, -1) if use_jacobian else None
            for start in range(0, n, CHUNK):
                block = slice(start * width, min(start + CHUNK, n) * width)
                frac = level.fraction(unit[:, start:start + CHUNK])
                corners = _corner_grads(_per_feature(frac, width), 0.5 * level.resolution, g_level[block],
                                        None if gj_level is None else gj_level[:, block])
                rows.index_add_(0, next(index), _rows(corners.view(-1, width)))
            grads.append(grad)
        return (None, None, None, *grads)


def _interpolate(c: torch.Tensor, frac: torch.Tensor, slope: float, out: torch.Tensor,
                 jacobian_out: torch.Tensor | None) -> None:
    """Trilinear interpolation of corner values c [x, y, z, M] at frac [3, M] into out [M]: along z,
    then y, then x; the differences along the way, times the slope d cell / d point, give the
    Jacobian [3, M]."""
    fx, fy, fz = frac
    dz = c[:, :, 1] - c[:, :, 0]                                                           # [2, 2, M]
    cz = torch.addcmul(c[:, :, 0], fz, dz)
    dy = cz[:, 1] - cz[:, 0]                                                               # [2, M]
    cy = torch.addcmul(cz[:, 0], fy, dy)
    dx = cy[1] - cy[0]                                                                     # [M]
    torch.addcmul(cy[0], fx, dx, out=out)
    if jacobian_out is not None:
        dz_y = torch.lerp(dz[:, 0], dz[:, 1], fy)                                          # [2, M]
        torch.mul(dx, slope, out=jacobian_out[0])
        torch.mul(torch.lerp(dy[0], dy[1], fx), slope, out=jacobian_out[1])
        torch.mul(torch.lerp(dz_y[0], dz_y[1], fx), slope, out=jacobian_out[2])


def _corner_grads(frac: torch.Tensor, slope: float, g: torch.Tensor, gj: torch.Tensor | None) -> torch.Tensor:
    """d loss / d corner values [x, y, z, M] from d loss / d features g [M] and / d Jacobian gj [3, M].
    Each output is a sum over corners (i, j, k) of per-axis factors times the corner value: the
    features of wx_i wy_j wz_k, the Jacobian's x column of s sign_i wy_j wz_k, and so on, so
    d loss / d corner = wz_k [wy_j (wx_i g + s sign_i gx) + s sign_j wx_i gy] + s sign_k wy_j wx_i gz."""
    wx, wy, wz = (torch.stack([1.0 - f, f]) for f in frac)                                  # [2, M] each
    gx = wx * g                                                                            # [2, M]
    if gj is None:
        return wz * (wy * gx[:, None])[:, :, None]
    sign = torch.tensor([-1.0, 1.0], device=g.device, dtype=g.dtype)[:, None]              # [2, 1]
    gjx, gjy, gjz = gj * slope
    gx.addcmul_(sign, gjx)
    gxy = (wy * gx[:, None]).addcmul_(sign, (wx * gjy)[:, None])                           # [2, 2, M]
    gz = wy * (wx * gjz)[:, None]                                                          # [2, 2, M]
    return (wz * gxy[:, :, None]).addcmul_(sign, gz[:, :, None])                           # [2, 2, 2, M]


def _per_feature(frac: torch.Tensor, width: int) -> torch.Tensor:
    """[3, n] -> [3, n F]: each point's value repeated for its F features."""
    return frac[:, :, None].expand(-1, -1, width).reshape(3, -1)


class TcnnHashGrid(ProgressiveLevels):
    """tiny-cuda-nn's HashGrid with the same configuration; levels >= active_levels are masked to 0."""

    has_jacobian = False

    def __init__(self, settings):
        super().__init__(settings)
        import tinycudann as tcnn

        self.encoding = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": settings.hash_levels,
            "n_features_per_level": settings.features_per_level, "log2_hashmap_size": settings.log2_table,
            "base_resolution": settings.base_resolution, "per_level_scale": settings.per_level_scale,
        }, dtype=torch.float32)

    def forward(self, points: torch.Tensor, with_jacobian: bool = False) -> torch.Tensor:
        if with_jacobian:
            raise NotImplementedError("tiny-cuda-nn gives no Jacobian; the field uses autograd instead")
        unit = ((points + 1.0) * 0.5).clamp(0.0, 1.0)
        features = self.encoding(unit).float()
        level = torch.arange(self.out_dim, device=points.device) // self.n_features
        return features * (level < self.n_active).to(features.dtype)
