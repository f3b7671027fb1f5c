"""Index helpers (@triton.jit) shared by the kernels."""
import triton
import triton.language as tl


@triton.jit
def quad_tile(pid, D, J, n_groups, BLOCK_G: tl.constexpr, EVEN4: tl.constexpr, IDX64: tl.constexpr):
    """A [BLOCK_G, 4] tile of a contiguous (B, D) tensor seen as B rows of J = ceil(D/4)
    groups of 4 consecutive elements (group g = b * J + j holds x[b, 4j : 4j+4]).

    Returns (b, j, gmask) per group ([BLOCK_G]), lane ([4]), element offsets and mask
    ([BLOCK_G, 4]). When D % 4 == 0 (EVEN4) the offsets are simply 4 g + lane, which
    the compiler sees as contiguous (128-bit accesses)."""
    if IDX64:
        g = pid.to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    else:
        g = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = g < n_groups
    b = g // J
    j = g - b * J
    lane = tl.arange(0, 4)
    if EVEN4:
        offs = g[:, None] * 4 + lane[None, :]
        mask = gmask[:, None] & (lane[None, :] < 4)
    else:
        d = j[:, None] * 4 + lane[None, :]
        offs = b[:, None] * D + d
        mask = gmask[:, None] & (d < D)
    return b, j, gmask, lane, offs, mask


@triton.jit
def row_index(pid, B, BLOCK_B: tl.constexpr, IDX64: tl.constexpr):
    """Chains [pid*BLOCK_B, (pid+1)*BLOCK_B) and their mask."""
    if IDX64:
        rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    else:
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    return rows, rows < B


@triton.jit
def row_tile(B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """The chains of this program in a row kernel (one program per BLOCK_B chains, D tiled in a
    loop of BLOCK_D columns): rows, rmask ([BLOCK_B]), base = rows * D ([BLOCK_B, 1]) and the
    column offsets 0 .. BLOCK_D - 1 ([1, BLOCK_D]) of a tile."""
    rows, rmask = row_index(tl.program_id(0), B, BLOCK_B, IDX64)
    return rows, rmask, rows[:, None] * D, tl.arange(0, BLOCK_D)[None, :]


@triton.jit
def col_tile(rmask, base, cols0, d0, D):
    """Mask and element offsets ([BLOCK_B, BLOCK_D]) of the column tile d0 + cols0 of a row kernel."""
    cols = d0 + cols0
    return rmask[:, None] & (cols < D), base + cols


@triton.jit
def sqrt_ieee(x):
    """Correctly rounded sqrt (tl.sqrt is the fast approximation for fp32)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def div_ieee(x, y):
    """Correctly rounded x / y (fp32 `/` is the approximate div.full on NVIDIA)."""
    if x.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y
