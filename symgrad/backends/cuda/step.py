"""The kernels every generated CUDA module shares, whatever its spec: matrix product, reductions, the step.

Generated CUDA modules import these (compiled once per process for each argument type), so they are written and
tested once instead of pasted into every module. The update kernel's arithmetic is symgrad.backends.stepmath, the
same functions the CPU runtime inlines into its loops: gate, clipping, update rules and the flush of tiny state.
Nothing here reaches generated text.
"""

from __future__ import annotations

from numba import config, cuda, float32, float64

from symgrad.backends import stepmath

_INF = float("inf")  # a module constant: frozen into kernels on every numba version
_TPB = 128  # threads per block of the elementwise and loop-nest kernels
_TM = 64  # matrix-product tile: 64 x 64 outputs per block, 16 x 16 threads, 4 x 4 outputs per thread
_TK = 16
# grid-stride kernels (update, gradient norm) use at most this many blocks; the simulator runs one Python thread
# per CUDA thread, so there it gets two
_MAX_BLOCKS = 2 if config.ENABLE_CUDASIM else 1024  # type: ignore[attr-defined]  # numba sets it from the env


def _blocks(n):
    return (n + _TPB - 1) // _TPB


def _gemm_kernel(dt):
    """out (=|+=) op(a) @ op(b) for one float type: shared-memory tiles, each thread a 4 x 4 register block."""

    @cuda.jit
    def _gemm_k(out, a, b, ta, tb, acc):
        m_all = out.shape[0]
        n_all = out.shape[1]
        k_all = a.shape[0] if ta else a.shape[1]
        sa = cuda.shared.array((_TK, _TM + 1), dt)
        sb = cuda.shared.array((_TK, _TM + 1), dt)
        c = cuda.local.array((4, 4), dt)
        ar = cuda.local.array(4, dt)
        br = cuda.local.array(4, dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * 16 + tx
        m0 = cuda.blockIdx.y * _TM
        n0 = cuda.blockIdx.x * _TM
        for r in range(4):
            for s in range(4):
                c[r, s] = 0
        for k0 in range(0, k_all, _TK):
            for q in range(4):
                e = tid + 256 * q
                if ta:  # a stored (K, M): neighbouring threads read neighbouring m
                    mm = e % _TM
                    kk = e // _TM
                    if m0 + mm < m_all and k0 + kk < k_all:
                        sa[kk, mm] = a[k0 + kk, m0 + mm]
                    else:
                        sa[kk, mm] = 0
                else:  # a stored (M, K): neighbouring threads read neighbouring k
                    kk = e % _TK
                    mm = e // _TK
                    if m0 + mm < m_all and k0 + kk < k_all:
                        sa[kk, mm] = a[m0 + mm, k0 + kk]
                    else:
                        sa[kk, mm] = 0
                if tb:  # b stored (N, K)
                    kk = e % _TK
                    nn = e // _TK
                    if n0 + nn < n_all and k0 + kk < k_all:
                        sb[kk, nn] = b[n0 + nn, k0 + kk]
                    else:
                        sb[kk, nn] = 0
                else:  # b stored (K, N)
                    nn = e % _TM
                    kk = e // _TM
                    if n0 + nn < n_all and k0 + kk < k_all:
                        sb[kk, nn] = b[k0 + kk, n0 + nn]
                    else:
                        sb[kk, nn] = 0
            cuda.syncthreads()
            for kk in range(_TK):
                for r in range(4):
                    ar[r] = sa[kk, ty + 16 * r]
                for s in range(4):
                    br[s] = sb[kk, tx + 16 * s]
                for r in range(4):
                    for s in range(4):
                        c[r, s] += ar[r] * br[s]
            cuda.syncthreads()
        for r in range(4):
            i = m0 + ty + 16 * r
            if i < m_all:
                for s in range(4):
                    j = n0 + tx + 16 * s
                    if j < n_all:
                        if acc:
                            out[i, j] += c[r, s]
                        else:
                            out[i, j] = c[r, s]

    return _gemm_k


_GEMM = {"d": _gemm_kernel(float64), "f": _gemm_kernel(float32)}


def _gemm(out, a, b, ta, tb, acc):
    """One launch of the shared tiled matrix product: out[M, N] (=|+=) op(a)[M, K] @ op(b)[K, N]."""
    m_all, n_all = out.shape
    _GEMM[out.dtype.char][((n_all + _TM - 1) // _TM, (m_all + _TM - 1) // _TM), (16, 16)](out, a, b, ta, tb, acc)


@cuda.jit
def _sum_into(v, out, i):
    """out[i] = sum of v (the per-sample losses), in float64, in index order like the CPU kernel."""
    if cuda.grid(1) == 0:
        s = 0.0
        for j in range(v.shape[0]):
            s += v[j]
        out[i] = s


@cuda.jit
def _zero(v):
    j = cuda.grid(1)
    if j < v.shape[0]:
        v[j] = 0


@cuda.jit(device=True)
def _block_reduce(sh, t, is_max):
    """Tree-reduce the block's 256 shared values into sh[0] (max or sum)."""
    cuda.syncthreads()
    s = 128
    while s > 0:
        if t < s:
            if is_max:
                sh[t] = max(sh[t], sh[t + s])
            else:
                sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit
def _amax_k(g, out, i):
    """out[i] = max |g_j| in float64 (inf when some g_j is not finite): grid-stride, one atomic max per block."""
    sh = cuda.shared.array(256, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    j = cuda.grid(1)
    stride = cuda.gridsize(1)
    while j < g.shape[0]:
        a = abs(float64(g[j]))
        acc = max(acc, a) if a <= _INF else _INF  # NaN fails `<=`: it counts as inf
        j += stride
    sh[t] = acc
    _block_reduce(sh, t, True)
    if t == 0:
        cuda.atomic.max(out, i, sh[0])


@cuda.jit
def _ssq_k(g, amax, out, i):
    """out[i] += sum (g_j / amax[i])**2, which cannot overflow (stepmath.scaled_norm); skipped when amax[i] is 0
    or not finite, where the norm is known already."""
    m = amax[i]
    if m == 0.0 or not m < _INF:
        return
    sh = cuda.shared.array(256, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    j = cuda.grid(1)
    stride = cuda.gridsize(1)
    while j < g.shape[0]:
        r = float64(g[j]) / m
        acc += r * r
        j += stride
    sh[t] = acc
    _block_reduce(sh, t, False)
    if t == 0:
        cuda.atomic.add(out, i, sh[0])


def _grad_norm(g, amax, ssq, i):
    """Step i's gradient norm in two grid-stride passes, as stepmath.scaled_norm's (amax[i], ssq[i]); both arrays
    start at 0. Two reads of the gradient instead of one buy a norm that is exact for every finite gradient: a
    plain sum of squares overflows past |g_j| ~ 1e154 and a finite step would read as diverged."""
    blocks = min((g.shape[0] + 255) // 256, _MAX_BLOCKS)
    _amax_k[blocks, 256](g, amax, i)
    _ssq_k[blocks, 256](g, amax, ssq, i)


_step_ok = cuda.jit(device=True)(stepmath.step_ok)
_clip_scale = cuda.jit(device=True)(stepmath.clip_scale)
_scaled_norm = cuda.jit(device=True)(stepmath.scaled_norm)
_sgd = cuda.jit(device=True)(stepmath.sgd)
_momentum = cuda.jit(device=True)(stepmath.momentum)
_nesterov = cuda.jit(device=True)(stepmath.nesterov)
_adam = cuda.jit(device=True)(stepmath.adam)


@cuda.jit
def _update_k(theta, g, state, kind, lrs, hyper, t0, i, clip_norm, losses, amax, ssq, status):
    """Step i's update, fused: divergence gate, clipping and the rules of symgrad.backends.stepmath (kinds 0-3).

    status[0] holds the first step whose loss or gradient was not finite (n when none): from then on theta and
    state are left alone, as the CPU `_train_epoch` stops there. The arithmetic is float64 whatever theta's
    dtype (a GPU has the registers); the CPU does float32 Adam in float32, so float32 runs agree to rounding.
    """
    j = cuda.grid(1)
    if status[0] < i:
        return
    norm = _scaled_norm(amax[i], ssq[i])
    if not _step_ok(losses[i], norm):
        if j == 0:
            status[0] = i
        return
    scale = _clip_scale(norm, clip_norm)
    lr = lrs[i]
    t = t0 + i + 1
    mu = hyper[0]
    b1 = hyper[1]
    b2 = hyper[2]
    step = lr / (1.0 - b1**t)
    inv_c2 = 1.0 / (1.0 - b2**t)
    stride = cuda.gridsize(1)
    while j < theta.shape[0]:
        if scale != 1.0:
            g[j] = g[j] * scale
        if kind == stepmath.SGD_KIND:
            theta[j] = _sgd(theta[j], g[j], lr)
        elif kind == stepmath.MOMENTUM_KIND:
            th, v = _momentum(theta[j], g[j], state[0, j], lr, mu)
            state[0, j] = v
            theta[j] = th
        elif kind == stepmath.NESTEROV_KIND:
            th, v = _nesterov(theta[j], g[j], state[0, j], lr, mu)
            state[0, j] = v
            theta[j] = th
        else:
            th, m, v = _adam(
                1.0 * theta[j],
                1.0 * g[j],
                1.0 * state[0, j],
                1.0 * state[1, j],
                step,
                inv_c2,
                b1,
                b2,
                1.0 - b1,
                1.0 - b2,
                hyper[3],
                stepmath.TINY,
                0.0,
            )
            state[0, j] = m
            state[1, j] = v
            theta[j] = th
        j += stride
