"""Host-side helpers shared by the Triton launchers (not part of the public API).

* ``INTERPRET``: kernels run under ``TRITON_INTERPRET=1`` (numpy interpreter).
* ``f64(v)``: a python float passed to a kernel parameter annotated ``tl.float64``.
  Compiled kernels receive it as a true fp64 argument; the interpreter would
  otherwise turn a python float into an fp32 constant, so there it is wrapped
  into a float64 interpreter tensor.
* ``split64(v)``: a 64-bit seed / offset as its two 32-bit halves.
* ``rng_args(seed, offset, chain_offset, device)``: the Philox arguments of a kernel (ints or tensors).
* ``launch(kernel, grid, ...)``: the launch, with placeholders for absent optional tensors; on the
  FunctionalTensors of a torch.compile trace through ``wrap_triton`` (a graph node Inductor compiles).
* block-size heuristics.
"""
import os

import numpy as np
import torch
import triton
import triton.language as tl
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.library import wrap_triton

from fastsamp.backends._abi import check_u64_tensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Programs per SM we aim for when splitting the chains (H100: 132 SMs). Under the
# interpreter programs run one after the other, so fewer, larger blocks are faster.
_NUM_SMS = 132
_MIN_PROGRAMS = 2 * _NUM_SMS

# Flat streaming kernels: groups of 4 consecutive elements of a row (one Philox call
# gives the 4 normals of a group), BLOCK_G groups per program = 4 * BLOCK_G elements.
# (Under the interpreter, where a program costs a python-level loop, blocks are larger.)
QUAD_BLOCK_G = 8192 if INTERPRET else 256
QUAD_WARPS = 4
FLAT_BLOCK = 16384 if INTERPRET else 1024
FLAT_WARPS = 4

IDX32_LIMIT = 2**31 - 1


def f64(v):
    v = float(v)
    if INTERPRET:
        from triton.runtime.interpreter import TensorHandle

        return tl.tensor(TensorHandle(np.array([v], dtype=np.float64), tl.float64), tl.float64)
    return v


def _interp_int(v):
    from triton.runtime.interpreter import TensorHandle

    for lo, hi, np_t, tl_t in ((-2**31, 2**31, np.int32, tl.int32), (0, 2**32, np.uint32, tl.uint32),
                               (-2**63, 2**63, np.int64, tl.int64), (0, 2**64, np.uint64, tl.uint64)):
        if lo <= v < hi:
            return tl.tensor(TensorHandle(np.array(v, dtype=np_t), tl_t), tl_t)
    raise ValueError(f"integer kernel argument out of range: {v}")


def launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs). An absent optional tensor (None) is passed as the first
    tensor argument, a placeholder pointer the kernel does not read (its constexpr flag is off).
    Under the interpreter, python ints are passed as 0-d integer tensors: the interpreter's own
    1-element arrays cannot be used as loop bounds (`range(n)`) with numpy >= 2.4."""
    placeholder = next(a for a in args if isinstance(a, torch.Tensor))
    args = [placeholder if a is None else a for a in args]
    if isinstance(placeholder, FunctionalTensor):  # traced for Inductor (fastsamp/ops/_library._triton_decomposition)
        kernel = wrap_triton(kernel)
    if INTERPRET:
        args = [_interp_int(a) if isinstance(a, int) and not isinstance(a, bool) else a for a in args]
    return kernel[grid](*args, **kwargs)


def split64(v):
    v = 0 if v is None else int(v)
    return v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF


def rng_args(seed, offset, chain_offset, device):
    """The Philox arguments of a kernel launch, ((k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p), RNG_T): the
    32-bit words of an int seed / offset (0 for a tensor), the int chain offset, the one-element int64 tensors
    (None for an int) and RNG_T, the bit mask of the tensors (1 seed, 2 offset, 4 chain offset) that the kernel
    loads (`random.rng_words`): a CUDA graph replays with their current values."""
    words, ptrs, flag = [], [], 0
    for bit, (name, v) in enumerate((("seed", seed), ("offset", offset), ("chain_offset", chain_offset))):
        if isinstance(v, torch.Tensor):
            check_u64_tensor(v, name, device)
            words.append(0)
            ptrs.append(v)
            flag |= 1 << bit
        else:
            words.append(v)
            ptrs.append(None)
    return (*split64(words[0]), *split64(words[1]), int(words[2]), *ptrs), flag


def next_pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


def need_idx64(*numels):
    return max(int(n) for n in numels) > IDX32_LIMIT


def rows_block(B, block_d, target_elems):
    """Chains per program for a [BLOCK_B, BLOCK_D] tile of about target_elems elements,
    shrunk (on the GPU) so that there are enough programs to fill the SMs."""
    bb = max(1, target_elems // block_d)
    if not INTERPRET:
        bb = min(bb, next_pow2(triton.cdiv(B, _MIN_PROGRAMS)))
    bb = min(bb, next_pow2(B))
    return max(1, bb)


def row_grid(B, D, max_block_d, tile):
    """BLOCK_B, BLOCK_D and grid of a row kernel (kernels.tiles.row_tile): column tiles of
    next_pow2(D) up to max_block_d, about `tile` elements a program."""
    block_d = min(next_pow2(D), max_block_d)
    block_b = rows_block(B, block_d, tile)
    return block_b, block_d, (triton.cdiv(B, block_b),)


def warps_for(tile_elems, max_warps=8):
    w = 1
    while w < max_warps and w * 32 * 4 < tile_elems:
        w *= 2
    return w


def quad_grid(B, D):
    """Geometry of the 4-element-group tiling of a (B, D) tensor: J, n_groups, BLOCK_G, grid."""
    J = (D + 3) // 4
    n_groups = B * J
    block_g = QUAD_BLOCK_G
    if INTERPRET:
        block_g = min(block_g, next_pow2(n_groups))
    return J, n_groups, block_g, (triton.cdiv(n_groups, block_g),)


def flat_block(numel):
    return min(FLAT_BLOCK, next_pow2(numel)) if INTERPRET else FLAT_BLOCK
