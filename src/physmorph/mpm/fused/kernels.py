"""Triton kernels of the fused MLS-MPM step (cubic B-spline, fixed-corotated) and its adjoint.

Naming inside the kernels: x position, v velocity, F deformation gradient, C affine velocity,
Fh = F + ΔF (controlled gradient), R its polar rotation, P first Piola stress, tau the Kirchhoff
stress plus bulk viscosity, A the APIC affine momentum matrix, q the particle momentum, m mass,
V rest volume, B the unscaled new affine velocity, s the trust-region scale. Matrices are nine
scalars aRC (row R, column C). The grid is [G, 4] rows (mass, momentum x, y, z); node
(i, j, k) sits at row (i·ny + j)·nz + k. The grid update writes the node velocities once per
step into a second [G, 4] buffer (vx, vy, vz, unused), which G2P and its adjoint gather.
`prm` holds the float settings in the data's dtype (so float64 runs keep full precision): see
PARAMETERS. Stencil loops run each axis as a loop, the first unrolled UNROLL times, the inner two
INNER times (INNER = 4 issues 16 independent node gathers per iteration of the first axis).
The two scattering kernels (P2G and G2P's adjoint) work in two phases: one lane per particle
stages what the particle adds (_stage_particle), then one lane per (cell run, stencil column)
sums a run's particles and adds the sums to the grid (_scatter_runs).
"""

from __future__ import annotations

import triton
import triton.language as tl

from physmorph.triton_jit import launched_kernel

# Order of the float settings in the `prm` tensor passed to every kernel.
PARAMETERS = (
    "dt", "dx", "min_x", "min_y", "min_z", "affine_scale", "bulk_viscosity", "smoothing",
    "trust_min_jacobian", "jacobian_floor", "mass_threshold", "tiny_determinant",
    )

# Kernels read each setting at its name's position in PARAMETERS (never at a typed number), so
# adding or reordering settings cannot make a kernel read the wrong one.
PRM_DT = tl.constexpr(PARAMETERS.index("dt"))
PRM_DX = tl.constexpr(PARAMETERS.index("dx"))
PRM_MIN_X = tl.constexpr(PARAMETERS.index("min_x"))
PRM_MIN_Y = tl.constexpr(PARAMETERS.index("min_y"))
PRM_MIN_Z = tl.constexpr(PARAMETERS.index("min_z"))
PRM_AFFINE_SCALE = tl.constexpr(PARAMETERS.index("affine_scale"))
PRM_BULK_VISCOSITY = tl.constexpr(PARAMETERS.index("bulk_viscosity"))
PRM_SMOOTHING = tl.constexpr(PARAMETERS.index("smoothing"))
PRM_TRUST_MIN_JACOBIAN = tl.constexpr(PARAMETERS.index("trust_min_jacobian"))
PRM_JACOBIAN_FLOOR = tl.constexpr(PARAMETERS.index("jacobian_floor"))
PRM_MASS_THRESHOLD = tl.constexpr(PARAMETERS.index("mass_threshold"))
PRM_TINY_DETERMINANT = tl.constexpr(PARAMETERS.index("tiny_determinant"))

BOUNDARY_CODES = {"none": 0, "sticky": 1, "slip": 2}


@triton.jit
def _bspline(d):
    """Cubic B-spline N(d) of a distance in cells."""
    r = tl.abs(d)
    t = tl.maximum(2.0 - r, 0.0)
    return tl.where(r < 1.0, (1.5 * r * r * r - 3.0 * r * r + 2.0) / 3.0, t * t * t / 6.0)


@triton.jit
def _bspline_slope(d):
    """dN/dd of the cubic B-spline (zero at d = 0, like |d|'s subgradient there)."""
    r = tl.abs(d)
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    t = tl.maximum(2.0 - r, 0.0)
    return tl.where(r < 1.0, 1.5 * r * r - 2.0 * r, -0.5 * t * t) * sign


@triton.jit
def _det(a00, a01, a02, a10, a11, a12, a20, a21, a22):
    return a00 * (a11 * a22 - a12 * a21) - a01 * (a10 * a22 - a12 * a20) + a02 * (a10 * a21 - a11 * a20)


@triton.jit
def _cofactor(a00, a01, a02, a10, a11, a12, a20, a21, a22):
    """∂det/∂a, i.e. det(a) a⁻ᵀ."""
    return (
        a11 * a22 - a12 * a21, a12 * a20 - a10 * a22, a10 * a21 - a11 * a20,
        a02 * a21 - a01 * a22, a00 * a22 - a02 * a20, a01 * a20 - a00 * a21,
        a01 * a12 - a02 * a11, a02 * a10 - a00 * a12, a00 * a11 - a01 * a10,
        )


@triton.jit
def _cofactor_adjoint(a00, a01, a02, a10, a11, a12, a20, a21, a22,
                      g00, g01, g02, g10, g11, g12, g20, g21, g22):
    """The gradient of <g, cofactor(a)> with respect to a (the Hessian of det applied to g)."""
    return (
        g11 * a22 + a11 * g22 - g12 * a21 - a12 * g21,
        g12 * a20 + a12 * g20 - g10 * a22 - a10 * g22,
        g10 * a21 + a10 * g21 - g11 * a20 - a11 * g20,
        g02 * a21 + a02 * g21 - g01 * a22 - a01 * g22,
        g00 * a22 + a00 * g22 - g02 * a20 - a02 * g20,
        g01 * a20 + a01 * g20 - g00 * a21 - a00 * g21,
        g01 * a12 + a01 * g12 - g02 * a11 - a02 * g11,
        g02 * a10 + a02 * g10 - g00 * a12 - a00 * g12,
        g00 * a11 + a00 * g11 - g01 * a10 - a01 * g10,
        )


@triton.jit
def _matmul(a00, a01, a02, a10, a11, a12, a20, a21, a22,
            b00, b01, b02, b10, b11, b12, b20, b21, b22):
    return (
        a00 * b00 + a01 * b10 + a02 * b20, a00 * b01 + a01 * b11 + a02 * b21,
        a00 * b02 + a01 * b12 + a02 * b22,
        a10 * b00 + a11 * b10 + a12 * b20, a10 * b01 + a11 * b11 + a12 * b21,
        a10 * b02 + a11 * b12 + a12 * b22,
        a20 * b00 + a21 * b10 + a22 * b20, a20 * b01 + a21 * b11 + a22 * b21,
        a20 * b02 + a21 * b12 + a22 * b22,
        )


@triton.jit
def _polar(f00, f01, f02, f10, f11, f12, f20, f21, f22, ITERATIONS: tl.constexpr):
    """Rotation R of F = R S by Newton's iteration R ← ½(γR + R⁻ᵀ/γ) started at F.

    γ = (‖R⁻¹‖/‖R‖)^½ (Frobenius) for the first half of the iterations speeds up strongly
    stretched F; the unscaled tail converges quadratically to full precision.
    """
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = f00, f01, f02, f10, f11, f12, f20, f21, f22
    for it in range(ITERATIONS):
        c00, c01, c02, c10, c11, c12, c20, c21, c22 = _cofactor(
            r00, r01, r02, r10, r11, r12, r20, r21, r22)
        det = r00 * c00 + r01 * c01 + r02 * c02
        inv_det = 1.0 / det
        norm = (r00 * r00 + r01 * r01 + r02 * r02 + r10 * r10 + r11 * r11 + r12 * r12
                + r20 * r20 + r21 * r21 + r22 * r22)
        norm_inv = (c00 * c00 + c01 * c01 + c02 * c02 + c10 * c10 + c11 * c11 + c12 * c12
                    + c20 * c20 + c21 * c21 + c22 * c22) * inv_det * inv_det
        gamma = tl.where(it < ITERATIONS // 2, tl.sqrt(tl.sqrt(norm_inv / norm)), 1.0)
        a = 0.5 * gamma
        b = 0.5 * inv_det / gamma
        r00, r01, r02 = a * r00 + b * c00, a * r01 + b * c01, a * r02 + b * c02
        r10, r11, r12 = a * r10 + b * c10, a * r11 + b * c11, a * r12 + b * c12
        r20, r21, r22 = a * r20 + b * c20, a * r21 + b * c21, a * r22 + b * c22
    return r00, r01, r02, r10, r11, r12, r20, r21, r22


@triton.jit
def _polar_adjoint(r00, r01, r02, r10, r11, r12, r20, r21, r22,
                   f00, f01, f02, f10, f11, f12, f20, f21, f22,
                   g00, g01, g02, g10, g11, g12, g20, g21, g22, tiny):
    """∂<g, R(F)>/∂F = R [y]×, with (tr S·I − S) y = axial(RᵀG − GᵀR), S = RᵀF.

    From dR = RΩ, Ω = [ω]× and ΩS + SΩ = [(tr S·I − S) ω]×; no eigen decomposition needed.
    """
    _k00, k01, k02, k10, _k11, k12, k20, k21, _k22 = _matmul(
        r00, r10, r20, r01, r11, r21, r02, r12, r22, g00, g01, g02, g10, g11, g12, g20, g21, g22)
    k0 = k21 - k12
    k1 = k02 - k20
    k2 = k10 - k01
    s00, s01, s02, s10, s11, s12, s20, s21, s22 = _matmul(
        r00, r10, r20, r01, r11, r21, r02, r12, r22, f00, f01, f02, f10, f11, f12, f20, f21, f22)
    trace = s00 + s11 + s22
    # symmetric a = tr S·I − S (S symmetrised)
    a00 = trace - s00
    a11 = trace - s11
    a22 = trace - s22
    a01 = -0.5 * (s01 + s10)
    a02 = -0.5 * (s02 + s20)
    a12 = -0.5 * (s12 + s21)
    c00 = a11 * a22 - a12 * a12
    c01 = a12 * a02 - a01 * a22
    c02 = a01 * a12 - a11 * a02
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    det = tl.where(tl.abs(det) < tiny, tl.where(det < 0, -tiny, tiny), det)
    y0 = (c00 * k0 + c01 * k1 + c02 * k2) / det
    y1 = (c01 * k0 + c11 * k1 + c12 * k2) / det
    y2 = (c02 * k0 + c12 * k1 + c22 * k2) / det
    zero = 0.0 * y0
    return _matmul(r00, r01, r02, r10, r11, r12, r20, r21, r22,
                   zero, -y2, y1, y2, zero, -y0, -y1, y0, zero)


@triton.jit
def _scale9(s, a00, a01, a02, a10, a11, a12, a20, a21, a22):
    return s * a00, s * a01, s * a02, s * a10, s * a11, s * a12, s * a20, s * a21, s * a22


@triton.jit
def _lincomb9(alpha, a00, a01, a02, a10, a11, a12, a20, a21, a22,
              beta, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """α a + β b."""
    return (alpha * a00 + beta * b00, alpha * a01 + beta * b01, alpha * a02 + beta * b02,
            alpha * a10 + beta * b10, alpha * a11 + beta * b11, alpha * a12 + beta * b12,
            alpha * a20 + beta * b20, alpha * a21 + beta * b21, alpha * a22 + beta * b22)


@triton.jit
def _dot9(a00, a01, a02, a10, a11, a12, a20, a21, a22, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """Frobenius product <a, b>."""
    return (a00 * b00 + a01 * b01 + a02 * b02 + a10 * b10 + a11 * b11 + a12 * b12
            + a20 * b20 + a21 * b21 + a22 * b22)


@triton.jit
def _axis(base, local, offset, dx):
    """Weight, weight slope and offset x_i − x_p (grid units) of stencil node base + offset on one axis."""
    d = (base + offset).to(local.dtype) - local
    return _bspline(d), _bspline_slope(d), d * dx


@triton.jit
def _node_velocity(gm, gpx, gpy, gpz, ix, iy, iz, nx, ny, nz, dt, f0, f1, f2, mass_threshold,
                   CELLS: tl.constexpr, BOUNDARY: tl.constexpr):
    """Grid velocity of a node from its mass and momentum, with the wall condition.

    Returns (vx, vy, vz, keep_x, keep_y, keep_z, safe_mass): keep_* mark components that
    depend on the node's momentum (occupied and not zeroed by a wall).
    """
    m = tl.maximum(gm, 0.0)
    occupied = m > mass_threshold
    safe = tl.where(occupied, m, 1.0)
    vx = tl.where(occupied, gpx / safe + dt * f0, 0.0)
    vy = tl.where(occupied, gpy / safe + dt * f1, 0.0)
    vz = tl.where(occupied, gpz / safe + dt * f2, 0.0)
    kx = occupied
    ky = occupied
    kz = occupied
    if BOUNDARY == 1:
        near = ((ix < CELLS) | (ix > nx - 1 - CELLS) | (iy < CELLS) | (iy > ny - 1 - CELLS)
                | (iz < CELLS) | (iz > nz - 1 - CELLS))
        vx = tl.where(near, 0.0, vx)
        vy = tl.where(near, 0.0, vy)
        vz = tl.where(near, 0.0, vz)
        kx = kx & (~near)
        ky = ky & (~near)
        kz = kz & (~near)
    if BOUNDARY == 2:
        wall_x = ((ix < CELLS) & (vx < 0)) | ((ix > nx - 1 - CELLS) & (vx > 0))
        wall_y = ((iy < CELLS) & (vy < 0)) | ((iy > ny - 1 - CELLS) & (vy > 0))
        wall_z = ((iz < CELLS) & (vz < 0)) | ((iz > nz - 1 - CELLS) & (vz > 0))
        vx = tl.where(wall_x, 0.0, vx)
        vy = tl.where(wall_y, 0.0, vy)
        vz = tl.where(wall_z, 0.0, vz)
        kx = kx & (~wall_x)
        ky = ky & (~wall_y)
        kz = kz & (~wall_z)
    return vx, vy, vz, kx, ky, kz, safe


@triton.jit
def _node_rows(grid_ptr, force_ptr, prm_ptr, offs, mask, nx, ny, nz,
               CELLS: tl.constexpr, BOUNDARY: tl.constexpr):
    """Momentum of grid rows `offs` and their velocities, keep flags and safe masses (_node_velocity)."""
    dt = tl.load(prm_ptr + PRM_DT)
    mass_threshold = tl.load(prm_ptr + PRM_MASS_THRESHOLD)
    iz = offs % nz
    iy = (offs // nz) % ny
    ix = offs // (ny * nz)
    gm = tl.load(grid_ptr + offs * 4 + 0, mask=mask, other=0.0)
    p0 = tl.load(grid_ptr + offs * 4 + 1, mask=mask, other=0.0)
    p1 = tl.load(grid_ptr + offs * 4 + 2, mask=mask, other=0.0)
    p2 = tl.load(grid_ptr + offs * 4 + 3, mask=mask, other=0.0)
    v0, v1, v2, k0, k1, k2, safe = _node_velocity(
        gm, p0, p1, p2, ix, iy, iz, nx, ny, nz, dt,
        tl.load(force_ptr + 0), tl.load(force_ptr + 1), tl.load(force_ptr + 2),
        mass_threshold, CELLS, BOUNDARY)
    return gm, p0, p1, p2, v0, v1, v2, k0, k1, k2, safe


@triton.jit
def _load_matrix(ptr, offs, mask):
    p = ptr + offs * 9
    return (
        tl.load(p + 0, mask=mask, other=0.0), tl.load(p + 1, mask=mask, other=0.0),
        tl.load(p + 2, mask=mask, other=0.0), tl.load(p + 3, mask=mask, other=0.0),
        tl.load(p + 4, mask=mask, other=0.0), tl.load(p + 5, mask=mask, other=0.0),
        tl.load(p + 6, mask=mask, other=0.0), tl.load(p + 7, mask=mask, other=0.0),
        tl.load(p + 8, mask=mask, other=0.0),
        )


@triton.jit
def _store_matrix(ptr, offs, mask, a00, a01, a02, a10, a11, a12, a20, a21, a22):
    p = ptr + offs * 9
    tl.store(p + 0, a00, mask=mask)
    tl.store(p + 1, a01, mask=mask)
    tl.store(p + 2, a02, mask=mask)
    tl.store(p + 3, a10, mask=mask)
    tl.store(p + 4, a11, mask=mask)
    tl.store(p + 5, a12, mask=mask)
    tl.store(p + 6, a20, mask=mask)
    tl.store(p + 7, a21, mask=mask)
    tl.store(p + 8, a22, mask=mask)


@triton.jit
def _load_vector(ptr, offs, mask):
    return (tl.load(ptr + offs * 3 + 0, mask=mask, other=0.0), tl.load(ptr + offs * 3 + 1, mask=mask, other=0.0),
            tl.load(ptr + offs * 3 + 2, mask=mask, other=0.0))


@triton.jit
def _store_vector(ptr, offs, mask, a0, a1, a2):
    tl.store(ptr + offs * 3 + 0, a0, mask=mask)
    tl.store(ptr + offs * 3 + 1, a1, mask=mask)
    tl.store(ptr + offs * 3 + 2, a2, mask=mask)


@triton.jit
def _controlled(f00, f01, f02, f10, f11, f12, f20, f21, f22, dF_ptr, offs, mask, num_controlled):
    """Fh = F + ΔF; ΔF reads as 0 for particles from num_controlled on (0: a step without control)."""
    d00, d01, d02, d10, d11, d12, d20, d21, d22 = _load_matrix(dF_ptr, offs, mask & (offs < num_controlled))
    return (f00 + d00, f01 + d01, f02 + d02, f10 + d10, f11 + d11, f12 + d12,
            f20 + d20, f21 + d21, f22 + d22)


@triton.jit
def _local(x_ptr, offs, mask, prm_ptr, nx, ny, nz):
    """Position x, position in cells relative to the grid minimum, and the clamped base node."""
    dx = tl.load(prm_ptr + PRM_DX)
    x0, x1, x2 = _load_vector(x_ptr, offs, mask)
    l0 = (x0 - tl.load(prm_ptr + PRM_MIN_X)) / dx
    l1 = (x1 - tl.load(prm_ptr + PRM_MIN_Y)) / dx
    l2 = (x2 - tl.load(prm_ptr + PRM_MIN_Z)) / dx
    b0 = tl.minimum(tl.maximum(tl.floor(l0).to(tl.int32) - 1, 0), nx - 4)
    b1 = tl.minimum(tl.maximum(tl.floor(l1).to(tl.int32) - 1, 0), ny - 4)
    b2 = tl.minimum(tl.maximum(tl.floor(l2).to(tl.int32) - 1, 0), nz - 4)
    return x0, x1, x2, l0, l1, l2, b0, b1, b2


@triton.jit
def _load_field(ptr, stride, offs, mask):
    return tl.load(ptr + offs * stride, mask=mask, other=0.0)


@triton.jit
def _sorted_block(order_ptr, keys_ptr, N, BLOCK: tl.constexpr):
    """This program's particles in cell order: (particle index, mask, cell key)."""
    lane = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = lane < N
    key = tl.load(keys_ptr + lane, mask=mask, other=-1)
    return tl.load(order_ptr + lane, mask=mask, other=0), mask, key


# Staged values per particle, [STAGED_VALUES, BLOCK] per program: the stencil weights of the
# four nodes on each axis (0-3 x, 4-7 y, 8-11 z), c̃ (12-14), dx·M row-major (15-23), mass (24).
STAGED_VALUES = tl.constexpr(25)


@triton.jit
def _stage_block(stage_ptr, BLOCK: tl.constexpr):
    """This program's [STAGED_VALUES, BLOCK] scratch (64-bit offset: 25 N passes 2³¹ at 86 M particles)."""
    return stage_ptr + tl.program_id(0).to(tl.int64) * (STAGED_VALUES * BLOCK)


@triton.jit
def _stage_particle(stage_ptr, l0, l1, l2, b0, b1, b2, dx, m, c0, c1, c2,
                    m00, m01, m02, m10, m11, m12, m20, m21, m22, HAS_MASS: tl.constexpr, BLOCK: tl.constexpr):
    """Stage what a particle adds to node b + (i, j, k): w_i w_j w_k (m, c + M o), o = x_node − x_p.

    With o = (idx − (l − b)) dx on each axis, c + M o = c̃ + dx M idx with c̃ = c − dx M (l − b),
    so the run phase evaluates each node with three products instead of nine.
    """
    lane = _stage_block(stage_ptr, BLOCK) + tl.arange(0, BLOCK)
    for a in tl.static_range(4):
        tl.store(lane + a * BLOCK, _axis(b0, l0, a, dx)[0])
        tl.store(lane + (4 + a) * BLOCK, _axis(b1, l1, a, dx)[0])
        tl.store(lane + (8 + a) * BLOCK, _axis(b2, l2, a, dx)[0])
    d0 = (l0 - b0.to(l0.dtype)) * dx
    d1 = (l1 - b1.to(l1.dtype)) * dx
    d2 = (l2 - b2.to(l2.dtype)) * dx
    tl.store(lane + 12 * BLOCK, c0 - (m00 * d0 + m01 * d1 + m02 * d2))
    tl.store(lane + 13 * BLOCK, c1 - (m10 * d0 + m11 * d1 + m12 * d2))
    tl.store(lane + 14 * BLOCK, c2 - (m20 * d0 + m21 * d1 + m22 * d2))
    tl.store(lane + 15 * BLOCK, dx * m00)
    tl.store(lane + 16 * BLOCK, dx * m01)
    tl.store(lane + 17 * BLOCK, dx * m02)
    tl.store(lane + 18 * BLOCK, dx * m10)
    tl.store(lane + 19 * BLOCK, dx * m11)
    tl.store(lane + 20 * BLOCK, dx * m12)
    tl.store(lane + 21 * BLOCK, dx * m20)
    tl.store(lane + 22 * BLOCK, dx * m21)
    tl.store(lane + 23 * BLOCK, dx * m22)
    if HAS_MASS:
        tl.store(lane + 24 * BLOCK, m)


@triton.jit
def _node_terms(w, m, e0, e1, e2, n02, n12, n22, step, acc_m, acc0, acc1, acc2):
    """One node of a stencil column: adds w·m and w·(e + step·dx M[:, 2]) to the sums."""
    return (acc_m + w * m, acc0 + w * (e0 + step * n02), acc1 + w * (e1 + step * n12),
            acc2 + w * (e2 + step * n22))


@triton.jit
def _load_row(row_ptr, mask, VECTOR: tl.constexpr):
    """The four values of a grid row: one 16-byte load (VECTOR: float32), or four scalar loads.

    The vector load is not masked: a masked-out lane's clamped stencil still names grid rows,
    and its values are never stored.
    """
    if VECTOR:
        r0, r1, r2, r3 = tl.inline_asm_elementwise(
            "ld.global.nc.v4.f32 {$0, $1, $2, $3}, [$4];", "=f,=f,=f,=f,l", [row_ptr.to(tl.int64)],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        r0 = tl.load(row_ptr + 0, mask=mask, other=0.0)
        r1 = tl.load(row_ptr + 1, mask=mask, other=0.0)
        r2 = tl.load(row_ptr + 2, mask=mask, other=0.0)
        r3 = tl.load(row_ptr + 3, mask=mask, other=0.0)
    return r0, r1, r2, r3


@triton.jit
def _add_column(grid_ptr, row, live, acc_m, acc0, acc1, acc2, HAS_MASS: tl.constexpr, VECTOR: tl.constexpr):
    """Adds one node's sums to its grid row: four scalar atomics, or one 16-byte reduction.

    VECTOR (float32 on sm_90 and later) issues PTX's red.global.add.v4.f32, a quarter of the
    atomic instructions, which bound the scatter. Its mass column adds acc_m even without
    HAS_MASS, where the run phase leaves it exactly zero.
    """
    node = grid_ptr + row * 4
    if VECTOR:
        tl.inline_asm_elementwise(
            "{ .reg .pred %pv4; setp.ne.b32 %pv4, $6, 0; "
            "@%pv4 red.relaxed.gpu.global.add.v4.f32 [$1], {$2, $3, $4, $5}; mov.b32 $0, 0; }",
            "=r,l,f,f,f,f,r", [node.to(tl.int64), acc_m, acc0, acc1, acc2, live.to(tl.int32)],
            dtype=tl.int32, is_pure=False, pack=1)
    else:
        if HAS_MASS:
            tl.atomic_add(node + 0, acc_m, mask=live, sem="relaxed")
        tl.atomic_add(node + 1, acc0, mask=live, sem="relaxed")
        tl.atomic_add(node + 2, acc1, mask=live, sem="relaxed")
        tl.atomic_add(node + 3, acc2, mask=live, sem="relaxed")


@triton.jit
def _scatter_runs(stage_ptr, runs_ptr, keys_ptr, grid_ptr, key, mask, ny, nz,
                  HAS_MASS: tl.constexpr, VECTOR: tl.constexpr, BLOCK: tl.constexpr):
    """Adds the staged particles to the grid, one sum per (cell run, node) and value.

    Particles with one base node (a run of equal keys) share all 64 stencil nodes. Lane (run,
    column) of a [BLOCK / 16, 16] tile owns the column (i, j) of its run's stencil, loops over
    the run's particles and adds four nodes' sums with one atomic each: no cross-lane traffic,
    and a cell of k particles costs 64 atomics per value instead of 64·k. Runs are cut at the
    program's edges. Without HAS_MASS only the momentum columns (1-3) are written.
    """
    RUNS: tl.constexpr = BLOCK // 16
    program = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    previous = tl.load(keys_ptr + program * BLOCK + lane - 1, mask=mask & (lane > 0), other=-1)
    starts = mask & (key != previous)
    count = tl.sum(starts.to(tl.int32), axis=0)
    table = runs_ptr + program * (BLOCK + 1)
    tl.store(table + tl.cumsum(starts.to(tl.int32), axis=0) - 1, lane, mask=starts)
    tl.store(table + count, tl.sum(mask.to(tl.int32), axis=0))
    # the staged values and the run table were written by other lanes of this program
    tl.debug_barrier()
    stage = _stage_block(stage_ptr, BLOCK)
    column = tl.arange(0, 16)[None, :]
    i = column // 4
    j = column % 4
    offset = (i * ny + j) * nz
    for first_run in range(0, count, RUNS):
        run = first_run + tl.arange(0, RUNS)[:, None] + 0 * column
        live = run < count
        first = tl.load(table + run, mask=live, other=0)
        length = tl.load(table + run + 1, mask=live, other=0) - first
        row = tl.load(keys_ptr + program * BLOCK + first, mask=live, other=0) + offset
        acc_m0 = tl.zeros([RUNS, 16], dtype=grid_ptr.dtype.element_ty)
        acc00, acc01, acc02 = acc_m0, acc_m0, acc_m0
        acc_m1, acc10, acc11, acc12 = acc_m0, acc_m0, acc_m0, acc_m0
        acc_m2, acc20, acc21, acc22 = acc_m0, acc_m0, acc_m0, acc_m0
        acc_m3, acc30, acc31, acc32 = acc_m0, acc_m0, acc_m0, acc_m0
        for step in range(0, tl.max(length)):
            on = step < length
            p = stage + first + step
            w_ij = (tl.load(p + i * BLOCK, mask=on, other=0.0)
                    * tl.load(p + (4 + j) * BLOCK, mask=on, other=0.0))
            n00 = tl.load(p + 15 * BLOCK, mask=on, other=0.0)
            n01 = tl.load(p + 16 * BLOCK, mask=on, other=0.0)
            n10 = tl.load(p + 18 * BLOCK, mask=on, other=0.0)
            n11 = tl.load(p + 19 * BLOCK, mask=on, other=0.0)
            n20 = tl.load(p + 21 * BLOCK, mask=on, other=0.0)
            n21 = tl.load(p + 22 * BLOCK, mask=on, other=0.0)
            fi = i.to(n00.dtype)
            fj = j.to(n00.dtype)
            e0 = tl.load(p + 12 * BLOCK, mask=on, other=0.0) + fi * n00 + fj * n01
            e1 = tl.load(p + 13 * BLOCK, mask=on, other=0.0) + fi * n10 + fj * n11
            e2 = tl.load(p + 14 * BLOCK, mask=on, other=0.0) + fi * n20 + fj * n21
            n02 = tl.load(p + 17 * BLOCK, mask=on, other=0.0)
            n12 = tl.load(p + 20 * BLOCK, mask=on, other=0.0)
            n22 = tl.load(p + 23 * BLOCK, mask=on, other=0.0)
            m = tl.load(p + 24 * BLOCK, mask=on & HAS_MASS, other=0.0)
            acc_m0, acc00, acc01, acc02 = _node_terms(
                w_ij * tl.load(p + 8 * BLOCK, mask=on, other=0.0), m, e0, e1, e2, n02, n12, n22, 0.0,
                acc_m0, acc00, acc01, acc02)
            acc_m1, acc10, acc11, acc12 = _node_terms(
                w_ij * tl.load(p + 9 * BLOCK, mask=on, other=0.0), m, e0, e1, e2, n02, n12, n22, 1.0,
                acc_m1, acc10, acc11, acc12)
            acc_m2, acc20, acc21, acc22 = _node_terms(
                w_ij * tl.load(p + 10 * BLOCK, mask=on, other=0.0), m, e0, e1, e2, n02, n12, n22, 2.0,
                acc_m2, acc20, acc21, acc22)
            acc_m3, acc30, acc31, acc32 = _node_terms(
                w_ij * tl.load(p + 11 * BLOCK, mask=on, other=0.0), m, e0, e1, e2, n02, n12, n22, 3.0,
                acc_m3, acc30, acc31, acc32)
        _add_column(grid_ptr, row, live, acc_m0, acc00, acc01, acc02, HAS_MASS, VECTOR)
        _add_column(grid_ptr, row + 1, live, acc_m1, acc10, acc11, acc12, HAS_MASS, VECTOR)
        _add_column(grid_ptr, row + 2, live, acc_m2, acc20, acc21, acc22, HAS_MASS, VECTOR)
        _add_column(grid_ptr, row + 3, live, acc_m3, acc30, acc31, acc32, HAS_MASS, VECTOR)


@triton.jit
def _stress(h00, h01, h02, h10, h11, h12, h20, h21, h22, lam, mu, floor_j, tiny, NEWTON: tl.constexpr):
    """Fixed-corotated first Piola stress P = 2μ (Fh − R) + λ (J − 1) J Fh⁻ᵀ, with J = max(det Fh, J_min).

    Returns R, the cofactor K = det(Fh) Fh⁻ᵀ, det Fh, J, the guarded det, the coefficient
    a = λ (J − 1) J / det of K, and P.
    """
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = _polar(
        h00, h01, h02, h10, h11, h12, h20, h21, h22, NEWTON)
    k00, k01, k02, k10, k11, k12, k20, k21, k22 = _cofactor(
        h00, h01, h02, h10, h11, h12, h20, h21, h22)
    det = h00 * k00 + h01 * k01 + h02 * k02
    J = tl.maximum(det, floor_j)
    safe_det = tl.where(tl.abs(det) < tiny, tiny, det)
    a = lam * (J - 1.0) * (J / safe_det)
    two_mu = 2.0 * mu
    p00, p01, p02, p10, p11, p12, p20, p21, p22 = _lincomb9(
        two_mu, h00 - r00, h01 - r01, h02 - r02, h10 - r10, h11 - r11, h12 - r12, h20 - r20, h21 - r21, h22 - r22,
        a, k00, k01, k02, k10, k11, k12, k20, k21, k22)
    return (r00, r01, r02, r10, r11, r12, r20, r21, r22, k00, k01, k02, k10, k11, k12, k20, k21, k22,
            det, J, safe_det, a, p00, p01, p02, p10, p11, p12, p20, p21, p22)


@triton.jit
def _kirchhoff(p00, p01, p02, p10, p11, p12, p20, p21, p22, h00, h01, h02, h10, h11, h12, h20, h21, h22,
               c00, c11, c22, zeta):
    """τ = P Fhᵀ + ζ tr(C) I (Kirchhoff stress plus bulk viscosity)."""
    t00, t01, t02, t10, t11, t12, t20, t21, t22 = _matmul(
        p00, p01, p02, p10, p11, p12, p20, p21, p22, h00, h10, h20, h01, h11, h21, h02, h12, h22)
    visc = zeta * (c00 + c11 + c22)
    return t00 + visc, t01, t02, t10, t11 + visc, t12, t20, t21, t22 + visc


@triton.jit
def _particle_momentum(m, damp, v0, v1, v2, force_ptr, offs, mask, dt, HAS_FORCE: tl.constexpr):
    """q = m (1 − dt·drag) v + dt f."""
    q0 = m * damp * v0
    q1 = m * damp * v1
    q2 = m * damp * v2
    if HAS_FORCE:
        f0, f1, f2 = _load_vector(force_ptr, offs, mask)
        q0 += dt * f0
        q1 += dt * f1
        q2 += dt * f2
    return q0, q1, q2


@launched_kernel
def cell_keys(x_ptr, prm_ptr, keys_ptr, N, nx, ny, nz, BLOCK: tl.constexpr):
    """Flat index of each particle's base stencil node, [N] int32 (the sort key)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    _x0, _x1, _x2, _l0, _l1, _l2, b0, b1, b2 = _local(x_ptr, offs, mask, prm_ptr, nx, ny, nz)
    tl.store(keys_ptr + offs, (b0 * ny + b1) * nz + b2, mask=mask)


@launched_kernel
def p2g_forward(
    x_ptr, v_ptr, F_ptr, C_ptr, dF_ptr, force_ptr,
    lam_ptr, lam_stride, mu_ptr, mu_stride, mass_ptr, mass_stride, vol_ptr, vol_stride,
    drag_ptr, prm_ptr, grid_ptr, order_ptr, keys_ptr, stage_ptr, runs_ptr, N, nx, ny, nz, num_controlled,
    HAS_FORCE: tl.constexpr, NEWTON: tl.constexpr, VECTOR_ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Stress and P2G: adds each particle's mass and momentum to its 64 nodes.

    Particles come in cell order (order_ptr, keys_ptr); _scatter_runs sums runs that share a
    base node before the atomics. stage_ptr and runs_ptr are per-program scratch.
    """
    offs, mask, key = _sorted_block(order_ptr, keys_ptr, N, BLOCK)
    dt = tl.load(prm_ptr + PRM_DT)
    dx = tl.load(prm_ptr + PRM_DX)
    scale = tl.load(prm_ptr + PRM_AFFINE_SCALE)
    zeta = tl.load(prm_ptr + PRM_BULK_VISCOSITY)
    _x0, _x1, _x2, l0, l1, l2, b0, b1, b2 = _local(x_ptr, offs, mask, prm_ptr, nx, ny, nz)
    f00, f01, f02, f10, f11, f12, f20, f21, f22 = _load_matrix(F_ptr, offs, mask)
    h00, h01, h02, h10, h11, h12, h20, h21, h22 = _controlled(
        f00, f01, f02, f10, f11, f12, f20, f21, f22, dF_ptr, offs, mask, num_controlled)
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = _load_matrix(C_ptr, offs, mask)
    m = _load_field(mass_ptr, mass_stride, offs, mask)
    (_r00, _r01, _r02, _r10, _r11, _r12, _r20, _r21, _r22, _k00, _k01, _k02, _k10, _k11, _k12, _k20, _k21, _k22,
     _det, _J, _safe_det, _a, p00, p01, p02, p10, p11, p12, p20, p21, p22) = _stress(
        h00, h01, h02, h10, h11, h12, h20, h21, h22,
        _load_field(lam_ptr, lam_stride, offs, mask), _load_field(mu_ptr, mu_stride, offs, mask),
        tl.load(prm_ptr + PRM_JACOBIAN_FLOOR), tl.load(prm_ptr + PRM_TINY_DETERMINANT), NEWTON)
    t00, t01, t02, t10, t11, t12, t20, t21, t22 = _kirchhoff(
        p00, p01, p02, p10, p11, p12, p20, p21, p22, h00, h01, h02, h10, h11, h12, h20, h21, h22,
        c00, c11, c22, zeta)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = _lincomb9(
        -scale * dt * _load_field(vol_ptr, vol_stride, offs, mask), t00, t01, t02, t10, t11, t12, t20, t21, t22,
        m, c00, c01, c02, c10, c11, c12, c20, c21, c22)
    v0, v1, v2 = _load_vector(v_ptr, offs, mask)
    q0, q1, q2 = _particle_momentum(m, 1.0 - dt * tl.load(drag_ptr), v0, v1, v2, force_ptr, offs, mask, dt, HAS_FORCE)
    _stage_particle(stage_ptr, l0, l1, l2, b0, b1, b2, dx, m, q0, q1, q2,
                    a00, a01, a02, a10, a11, a12, a20, a21, a22, True, BLOCK)
    _scatter_runs(stage_ptr, runs_ptr, keys_ptr, grid_ptr, key, mask, ny, nz, True, VECTOR_ROWS, BLOCK)


@launched_kernel
def grid_velocity(grid_ptr, force_ptr, prm_ptr, velocity_ptr, G, nx, ny, nz,
                  CELLS: tl.constexpr, BOUNDARY: tl.constexpr, BLOCK: tl.constexpr):
    """Grid update: node velocities [G, 4] (vx, vy, vz, unused) from mass and momentum, walls applied."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < G
    _gm, _p0, _p1, _p2, v0, v1, v2, _k0, _k1, _k2, _safe = _node_rows(
        grid_ptr, force_ptr, prm_ptr, offs, mask, nx, ny, nz, CELLS, BOUNDARY)
    tl.store(velocity_ptr + offs * 4 + 0, v0, mask=mask)
    tl.store(velocity_ptr + offs * 4 + 1, v1, mask=mask)
    tl.store(velocity_ptr + offs * 4 + 2, v2, mask=mask)


@triton.jit
def _add_moments(w, n0, n1, n2, o0, o1, o2, u0, u1, u2, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """u + w·n and b + w·n oᵀ: one node's term of a weighted stencil sum and of its first moment."""
    wn0 = w * n0
    wn1 = w * n1
    wn2 = w * n2
    return (u0 + wn0, u1 + wn1, u2 + wn2,
            b00 + wn0 * o0, b01 + wn0 * o1, b02 + wn0 * o2,
            b10 + wn1 * o0, b11 + wn1 * o1, b12 + wn1 * o2,
            b20 + wn2 * o0, b21 + wn2 * o1, b22 + wn2 * o2)


@triton.jit
def _gather_velocity(velocity_ptr, mask, l0, l1, l2, b0, b1, b2, ny, nz, dx, scale,
                     VECTOR_ROWS: tl.constexpr, UNROLL: tl.constexpr, INNER: tl.constexpr):
    """PIC velocity Σ w v_i and the APIC matrix B = D Σ w v_i (x_i − x_p)ᵀ over the 64 stencil nodes."""
    zero = 0.0 * l0
    u0 = zero
    u1 = zero
    u2 = zero
    b00, b01, b02, b10, b11, b12, b20, b21, b22 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    for i in tl.range(0, 4, loop_unroll_factor=UNROLL):
        w0, _s0, o0 = _axis(b0, l0, i, dx)
        for j in tl.range(0, 4, loop_unroll_factor=INNER):
            w1, _s1, o1 = _axis(b1, l1, j, dx)
            row = ((b0 + i) * ny + (b1 + j)) * nz + b2
            for k in tl.range(0, 4, loop_unroll_factor=INNER):
                w2, _s2, o2 = _axis(b2, l2, k, dx)
                w = w0 * w1 * w2
                n0, n1, n2, _n3 = _load_row(velocity_ptr + (row + k) * 4, mask, VECTOR_ROWS)
                u0, u1, u2, b00, b01, b02, b10, b11, b12, b20, b21, b22 = _add_moments(
                    w, n0, n1, n2, o0, o1, o2, u0, u1, u2, b00, b01, b02, b10, b11, b12, b20, b21, b22)
    b00, b01, b02, b10, b11, b12, b20, b21, b22 = _scale9(scale, b00, b01, b02, b10, b11, b12, b20, b21, b22)
    return u0, u1, u2, b00, b01, b02, b10, b11, b12, b20, b21, b22


@triton.jit
def _trust_scale(b00, b11, b22, det, dt, trust_j, floor_j):
    """Trust-region factor s (shrinks a compressive C' = s B), the clamp's raw value and J0."""
    J0 = tl.maximum(det, floor_j)
    rate = b00 + b11 + b22
    compressing = rate < 0
    safe_rate = tl.where(compressing, rate, -1.0)
    raw = (trust_j / J0 - 1.0) / (dt * safe_rate)
    s = tl.where(compressing, tl.minimum(tl.maximum(raw, 0.0), 1.0), 1.0)
    active = compressing & (raw >= 0.0) & (raw <= 1.0)
    return s, raw, safe_rate, active, J0


@launched_kernel
def g2p_forward(
    x_ptr, F_ptr, dF_ptr, velocity_ptr, prm_ptr,
    x_out, v_out, F_out, C_out, N, nx, ny, nz, num_controlled,
    VECTOR_ROWS: tl.constexpr, BLOCK: tl.constexpr, UNROLL: tl.constexpr, INNER: tl.constexpr,
):
    """G2P from the node velocities, trust region, smoothed F update, advection."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dt = tl.load(prm_ptr + PRM_DT)
    beta = tl.load(prm_ptr + PRM_SMOOTHING)
    x0, x1, x2, l0, l1, l2, b0, b1, b2 = _local(x_ptr, offs, mask, prm_ptr, nx, ny, nz)
    u0, u1, u2, b00, b01, b02, b10, b11, b12, b20, b21, b22 = _gather_velocity(
        velocity_ptr, mask, l0, l1, l2, b0, b1, b2, ny, nz, tl.load(prm_ptr + PRM_DX),
        tl.load(prm_ptr + PRM_AFFINE_SCALE), VECTOR_ROWS, UNROLL, INNER)
    f00, f01, f02, f10, f11, f12, f20, f21, f22 = _load_matrix(F_ptr, offs, mask)
    h00, h01, h02, h10, h11, h12, h20, h21, h22 = _controlled(
        f00, f01, f02, f10, f11, f12, f20, f21, f22, dF_ptr, offs, mask, num_controlled)
    s, _raw, _rate, _active, _J0 = _trust_scale(
        b00, b11, b22, _det(h00, h01, h02, h10, h11, h12, h20, h21, h22), dt,
        tl.load(prm_ptr + PRM_TRUST_MIN_JACOBIAN), tl.load(prm_ptr + PRM_JACOBIAN_FLOOR))
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = _scale9(s, b00, b01, b02, b10, b11, b12, b20, b21, b22)
    e00, e01, e02, e10, e11, e12, e20, e21, e22 = _matmul(
        1.0 + dt * c00, dt * c01, dt * c02, dt * c10, 1.0 + dt * c11, dt * c12,
        dt * c20, dt * c21, 1.0 + dt * c22, h00, h01, h02, h10, h11, h12, h20, h21, h22)
    e00, e01, e02, e10, e11, e12, e20, e21, e22 = _lincomb9(
        1.0 - beta, e00, e01, e02, e10, e11, e12, e20, e21, e22,
        beta, f00, f01, f02, f10, f11, f12, f20, f21, f22)
    _store_matrix(F_out, offs, mask, e00, e01, e02, e10, e11, e12, e20, e21, e22)
    _store_matrix(C_out, offs, mask, c00, c01, c02, c10, c11, c12, c20, c21, c22)
    _store_vector(v_out, offs, mask, u0, u1, u2)
    _store_vector(x_out, offs, mask, x0 + dt * u0, x1 + dt * u1, x2 + dt * u2)


@launched_kernel
def g2p_backward(
    x_ptr, F_ptr, dF_ptr, velocity_ptr, prm_ptr,
    gx_out_ptr, gv_out_ptr, gF_out_ptr, gC_out_ptr,
    grad_grid_ptr, gx_part_ptr, gFh_part_ptr, order_ptr, keys_ptr, stage_ptr, runs_ptr,
    N, nx, ny, nz, num_controlled, VECTOR_ROWS: tl.constexpr, BLOCK: tl.constexpr,
    UNROLL: tl.constexpr, INNER: tl.constexpr,
):
    """Adjoint of G2P, the trust region and the F update.

    Adds ∂L/∂v_i into grad_grid[:, 1:4] (atomics, particles in cell order as in p2g_forward)
    and writes the particle-local parts of ∂L/∂x [N, 3] and ∂L/∂Fh [N, 9].
    """
    offs, mask, key = _sorted_block(order_ptr, keys_ptr, N, BLOCK)
    dt = tl.load(prm_ptr + PRM_DT)
    dx = tl.load(prm_ptr + PRM_DX)
    scale = tl.load(prm_ptr + PRM_AFFINE_SCALE)
    beta = tl.load(prm_ptr + PRM_SMOOTHING)
    trust_j = tl.load(prm_ptr + PRM_TRUST_MIN_JACOBIAN)
    floor_j = tl.load(prm_ptr + PRM_JACOBIAN_FLOOR)
    _x0, _x1, _x2, l0, l1, l2, b0, b1, b2 = _local(x_ptr, offs, mask, prm_ptr, nx, ny, nz)
    # forward recompute of B for the trust region
    _u0, _u1, _u2, b00, b01, b02, b10, b11, b12, b20, b21, b22 = _gather_velocity(
        velocity_ptr, mask, l0, l1, l2, b0, b1, b2, ny, nz, dx, scale, VECTOR_ROWS, UNROLL, INNER)
    f00, f01, f02, f10, f11, f12, f20, f21, f22 = _load_matrix(F_ptr, offs, mask)
    h00, h01, h02, h10, h11, h12, h20, h21, h22 = _controlled(
        f00, f01, f02, f10, f11, f12, f20, f21, f22, dF_ptr, offs, mask, num_controlled)
    k00, k01, k02, k10, k11, k12, k20, k21, k22 = _cofactor(
        h00, h01, h02, h10, h11, h12, h20, h21, h22)
    det = h00 * k00 + h01 * k01 + h02 * k02
    s, raw, safe_rate, active, J0 = _trust_scale(b00, b11, b22, det, dt, trust_j, floor_j)

    go00, go01, go02, go10, go11, go12, go20, go21, go22 = _load_matrix(gF_out_ptr, offs, mask)
    gc00, gc01, gc02, gc10, gc11, gc12, gc20, gc21, gc22 = _load_matrix(gC_out_ptr, offs, mask)
    keep = 1.0 - beta
    # C' enters F' = (1 − β)(I + dt C') Fh + β F: ∂/∂C' = (1 − β) dt gF' Fhᵀ
    t00, t01, t02, t10, t11, t12, t20, t21, t22 = _matmul(
        go00, go01, go02, go10, go11, go12, go20, go21, go22, h00, h10, h20, h01, h11, h21, h02, h12, h22)
    gc00, gc01, gc02, gc10, gc11, gc12, gc20, gc21, gc22 = _lincomb9(
        1.0, gc00, gc01, gc02, gc10, gc11, gc12, gc20, gc21, gc22,
        keep * dt, t00, t01, t02, t10, t11, t12, t20, t21, t22)
    # ∂/∂Fh = (1 − β)(I + dt C')ᵀ gF'
    gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22 = _matmul(
        1.0 + dt * s * b00, dt * s * b10, dt * s * b20, dt * s * b01, 1.0 + dt * s * b11, dt * s * b21,
        dt * s * b02, dt * s * b12, 1.0 + dt * s * b22,
        go00, go01, go02, go10, go11, go12, go20, go21, go22)
    # C' = s B, s from the clamped raw = (J_min / J0 − 1) / (dt tr B)
    g_raw = tl.where(active, _dot9(gc00, gc01, gc02, gc10, gc11, gc12, gc20, gc21, gc22,
                                   b00, b01, b02, b10, b11, b12, b20, b21, b22), 0.0)
    g_rate = -g_raw * raw / safe_rate
    g_J0 = tl.where(det >= floor_j, -g_raw * trust_j / (J0 * J0 * dt * safe_rate), 0.0)
    gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22 = _lincomb9(
        keep, gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22,
        g_J0, k00, k01, k02, k10, k11, k12, k20, k21, k22)
    # gradient of the scaled sum D·Σ w v oᵀ
    gb00, gb01, gb02 = scale * (s * gc00 + g_rate), scale * s * gc01, scale * s * gc02
    gb10, gb11, gb12 = scale * s * gc10, scale * (s * gc11 + g_rate), scale * s * gc12
    gb20, gb21, gb22 = scale * s * gc20, scale * s * gc21, scale * (s * gc22 + g_rate)
    gx0, gx1, gx2 = _load_vector(gx_out_ptr, offs, mask)
    gv0, gv1, gv2 = _load_vector(gv_out_ptr, offs, mask)
    gu0 = dt * gx0 + gv0
    gu1 = dt * gx1 + gv1
    gu2 = dt * gx2 + gv2
    # the grid gradient Σ_p w (gu + gB o) goes out through the run phase below
    _stage_particle(stage_ptr, l0, l1, l2, b0, b1, b2, dx, 0.0, gu0, gu1, gu2,
                    gb00, gb01, gb02, gb10, gb11, gb12, gb20, gb21, gb22, False, BLOCK)

    inv_dx = 1.0 / dx
    for i in tl.range(0, 4, loop_unroll_factor=UNROLL):
        w0, s0, o0 = _axis(b0, l0, i, dx)
        for j in tl.range(0, 4, loop_unroll_factor=INNER):
            w1, s1, o1 = _axis(b1, l1, j, dx)
            row = ((b0 + i) * ny + (b1 + j)) * nz + b2
            for k in tl.range(0, 4, loop_unroll_factor=INNER):
                w2, s2, o2 = _axis(b2, l2, k, dx)
                w = w0 * w1 * w2
                n0, n1, n2, _n3 = _load_row(velocity_ptr + (row + k) * 4, mask, VECTOR_ROWS)
                # per-node gradient of the velocity the particle reads
                r0 = gu0 + gb00 * o0 + gb01 * o1 + gb02 * o2
                r1 = gu1 + gb10 * o0 + gb11 * o1 + gb12 * o2
                r2 = gu2 + gb20 * o0 + gb21 * o1 + gb22 * o2
                g_w = (n0 * r0 + n1 * r1 + n2 * r2) * inv_dx
                gx0 -= g_w * s0 * w1 * w2 + w * (gb00 * n0 + gb10 * n1 + gb20 * n2)
                gx1 -= g_w * w0 * s1 * w2 + w * (gb01 * n0 + gb11 * n1 + gb21 * n2)
                gx2 -= g_w * w0 * w1 * s2 + w * (gb02 * n0 + gb12 * n1 + gb22 * n2)
    _store_vector(gx_part_ptr, offs, mask, gx0, gx1, gx2)
    _store_matrix(gFh_part_ptr, offs, mask, gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22)
    _scatter_runs(stage_ptr, runs_ptr, keys_ptr, grad_grid_ptr, key, mask, ny, nz, False, VECTOR_ROWS, BLOCK)


@launched_kernel
def grid_backward(
    grid_ptr, grad_grid_ptr, force_ptr, grad_force_ptr, prm_ptr, G, nx, ny, nz,
    CELLS: tl.constexpr, BOUNDARY: tl.constexpr, BLOCK: tl.constexpr,
):
    """Adjoint of the grid update, in place: grad_grid rows (·, ∂v) become (∂m, ∂p).

    Also adds dt·Σ ∂v over the kept components into grad_force [3] (the external force).
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < G
    dt = tl.load(prm_ptr + PRM_DT)
    gm, p0, p1, p2, _v0, _v1, _v2, k0, k1, k2, safe = _node_rows(
        grid_ptr, force_ptr, prm_ptr, offs, mask, nx, ny, nz, CELLS, BOUNDARY)
    gv0 = tl.where(k0, tl.load(grad_grid_ptr + offs * 4 + 1, mask=mask, other=0.0), 0.0)
    gv1 = tl.where(k1, tl.load(grad_grid_ptr + offs * 4 + 2, mask=mask, other=0.0), 0.0)
    gv2 = tl.where(k2, tl.load(grad_grid_ptr + offs * 4 + 3, mask=mask, other=0.0), 0.0)
    g_mass = -(gv0 * p0 + gv1 * p1 + gv2 * p2) / (safe * safe)
    g_mass = tl.where(gm >= 0.0, g_mass, 0.0)
    tl.store(grad_grid_ptr + offs * 4 + 0, g_mass, mask=mask)
    tl.store(grad_grid_ptr + offs * 4 + 1, gv0 / safe, mask=mask)
    tl.store(grad_grid_ptr + offs * 4 + 2, gv1 / safe, mask=mask)
    tl.store(grad_grid_ptr + offs * 4 + 3, gv2 / safe, mask=mask)
    tl.atomic_add(grad_force_ptr + 0, dt * tl.sum(gv0, axis=0), sem="relaxed")
    tl.atomic_add(grad_force_ptr + 1, dt * tl.sum(gv1, axis=0), sem="relaxed")
    tl.atomic_add(grad_force_ptr + 2, dt * tl.sum(gv2, axis=0), sem="relaxed")


@launched_kernel
def p2g_backward(
    x_ptr, v_ptr, F_ptr, C_ptr, dF_ptr, force_ptr,
    lam_ptr, lam_stride, mu_ptr, mu_stride, mass_ptr, mass_stride, vol_ptr, vol_stride,
    drag_ptr, prm_ptr, grad_grid_ptr, gx_part_ptr, gFh_part_ptr, gF_out_ptr,
    gx_ptr, gv_ptr, gF_ptr, gC_ptr, gdF_ptr, gforce_ptr,
    glam_ptr, gmu_ptr, gmass_ptr, gvol_ptr, gdrag_ptr, N, nx, ny, nz, num_controlled,
    HAS_FORCE: tl.constexpr, NEWTON: tl.constexpr, VECTOR_ROWS: tl.constexpr, BLOCK: tl.constexpr,
    UNROLL: tl.constexpr, INNER: tl.constexpr,
):
    """Adjoint of the stress and P2G; finishes every particle and material gradient."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dt = tl.load(prm_ptr + PRM_DT)
    dx = tl.load(prm_ptr + PRM_DX)
    scale = tl.load(prm_ptr + PRM_AFFINE_SCALE)
    zeta = tl.load(prm_ptr + PRM_BULK_VISCOSITY)
    beta = tl.load(prm_ptr + PRM_SMOOTHING)
    floor_j = tl.load(prm_ptr + PRM_JACOBIAN_FLOOR)
    tiny = tl.load(prm_ptr + PRM_TINY_DETERMINANT)
    _x0, _x1, _x2, l0, l1, l2, b0, b1, b2 = _local(x_ptr, offs, mask, prm_ptr, nx, ny, nz)
    f00, f01, f02, f10, f11, f12, f20, f21, f22 = _load_matrix(F_ptr, offs, mask)
    h00, h01, h02, h10, h11, h12, h20, h21, h22 = _controlled(
        f00, f01, f02, f10, f11, f12, f20, f21, f22, dF_ptr, offs, mask, num_controlled)
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = _load_matrix(C_ptr, offs, mask)
    lam = _load_field(lam_ptr, lam_stride, offs, mask)
    mu = _load_field(mu_ptr, mu_stride, offs, mask)
    m = _load_field(mass_ptr, mass_stride, offs, mask)
    v0, v1, v2 = _load_vector(v_ptr, offs, mask)

    # forward recompute
    (r00, r01, r02, r10, r11, r12, r20, r21, r22, k00, k01, k02, k10, k11, k12, k20, k21, k22,
     det, J, safe_det, a, p00, p01, p02, p10, p11, p12, p20, p21, p22) = _stress(
        h00, h01, h02, h10, h11, h12, h20, h21, h22, lam, mu, floor_j, tiny, NEWTON)
    t00, t01, t02, t10, t11, t12, t20, t21, t22 = _kirchhoff(
        p00, p01, p02, p10, p11, p12, p20, p21, p22, h00, h01, h02, h10, h11, h12, h20, h21, h22,
        c00, c11, c22, zeta)
    e = -scale * dt * _load_field(vol_ptr, vol_stride, offs, mask)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = _lincomb9(
        e, t00, t01, t02, t10, t11, t12, t20, t21, t22, m, c00, c01, c02, c10, c11, c12, c20, c21, c22)
    damp = 1.0 - dt * tl.load(drag_ptr)
    q0, q1, q2 = _particle_momentum(m, damp, v0, v1, v2, force_ptr, offs, mask, dt, HAS_FORCE)

    # gather ∂L/∂(grid mass, momentum) over the stencil
    zero = 0.0 * l0
    g_m = zero
    gq0 = zero
    gq1 = zero
    gq2 = zero
    ga00, ga01, ga02, ga10, ga11, ga12, ga20, ga21, ga22 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    gx0, gx1, gx2 = _load_vector(gx_part_ptr, offs, mask)
    inv_dx = 1.0 / dx
    for i in tl.range(0, 4, loop_unroll_factor=UNROLL):
        w0, s0, o0 = _axis(b0, l0, i, dx)
        for j in tl.range(0, 4, loop_unroll_factor=INNER):
            w1, s1, o1 = _axis(b1, l1, j, dx)
            row = ((b0 + i) * ny + (b1 + j)) * nz + b2
            for k in tl.range(0, 4, loop_unroll_factor=INNER):
                w2, s2, o2 = _axis(b2, l2, k, dx)
                w = w0 * w1 * w2
                gmi, gp0, gp1, gp2 = _load_row(grad_grid_ptr + (row + k) * 4, mask, VECTOR_ROWS)
                g_m += w * gmi
                gq0, gq1, gq2, ga00, ga01, ga02, ga10, ga11, ga12, ga20, ga21, ga22 = _add_moments(
                    w, gp0, gp1, gp2, o0, o1, o2,
                    gq0, gq1, gq2, ga00, ga01, ga02, ga10, ga11, ga12, ga20, ga21, ga22)
                wg0 = w * gp0
                wg1 = w * gp1
                wg2 = w * gp2
                g_w = (gmi * m
                       + gp0 * (q0 + a00 * o0 + a01 * o1 + a02 * o2)
                       + gp1 * (q1 + a10 * o0 + a11 * o1 + a12 * o2)
                       + gp2 * (q2 + a20 * o0 + a21 * o1 + a22 * o2)) * inv_dx
                gx0 -= g_w * s0 * w1 * w2 + (wg0 * a00 + wg1 * a10 + wg2 * a20)
                gx1 -= g_w * w0 * s1 * w2 + (wg0 * a01 + wg1 * a11 + wg2 * a21)
                gx2 -= g_w * w0 * w1 * s2 + (wg0 * a02 + wg1 * a12 + wg2 * a22)
    _store_vector(gx_ptr, offs, mask, gx0, gx1, gx2)

    # momentum q = m (1 − dt·drag) v + dt f
    gqv = gq0 * v0 + gq1 * v1 + gq2 * v2
    g_m += damp * gqv + _dot9(ga00, ga01, ga02, ga10, ga11, ga12, ga20, ga21, ga22,
                              c00, c01, c02, c10, c11, c12, c20, c21, c22)
    md = m * damp
    _store_vector(gv_ptr, offs, mask, md * gq0, md * gq1, md * gq2)
    if HAS_FORCE:
        _store_vector(gforce_ptr, offs, mask, dt * gq0, dt * gq1, dt * gq2)
    tl.atomic_add(gdrag_ptr, tl.sum(tl.where(mask, -dt * m * gqv, 0.0), axis=0), sem="relaxed")
    # A = e·tau + m C with e = −D dt V
    g_vol = -scale * dt * _dot9(ga00, ga01, ga02, ga10, ga11, ga12, ga20, ga21, ga22,
                                t00, t01, t02, t10, t11, t12, t20, t21, t22)
    gt00, gt01, gt02, gt10, gt11, gt12, gt20, gt21, gt22 = _scale9(
        e, ga00, ga01, ga02, ga10, ga11, ga12, ga20, ga21, ga22)
    g_visc = zeta * (gt00 + gt11 + gt22)
    _store_matrix(gC_ptr, offs, mask, m * ga00 + g_visc, m * ga01, m * ga02,
                  m * ga10, m * ga11 + g_visc, m * ga12, m * ga20, m * ga21, m * ga22 + g_visc)
    tl.store(gmass_ptr + offs, g_m, mask=mask)
    tl.store(gvol_ptr + offs, g_vol, mask=mask)
    # tau = P Fhᵀ (+ viscosity)
    gp00, gp01, gp02, gp10, gp11, gp12, gp20, gp21, gp22 = _matmul(
        gt00, gt01, gt02, gt10, gt11, gt12, gt20, gt21, gt22, h00, h01, h02, h10, h11, h12, h20, h21, h22)
    gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22 = _matmul(
        gt00, gt10, gt20, gt01, gt11, gt21, gt02, gt12, gt22, p00, p01, p02, p10, p11, p12, p20, p21, p22)
    # P = 2μ (Fh − R) + a·cofactor(Fh)
    two_mu = 2.0 * mu
    g_mu = 2.0 * _dot9(gp00, gp01, gp02, gp10, gp11, gp12, gp20, gp21, gp22,
                       h00 - r00, h01 - r01, h02 - r02, h10 - r10, h11 - r11, h12 - r12,
                       h20 - r20, h21 - r21, h22 - r22)
    y00, y01, y02, y10, y11, y12, y20, y21, y22 = _polar_adjoint(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, h00, h01, h02, h10, h11, h12, h20, h21, h22,
        -two_mu * gp00, -two_mu * gp01, -two_mu * gp02, -two_mu * gp10, -two_mu * gp11,
        -two_mu * gp12, -two_mu * gp20, -two_mu * gp21, -two_mu * gp22, tiny)
    z00, z01, z02, z10, z11, z12, z20, z21, z22 = _cofactor_adjoint(
        h00, h01, h02, h10, h11, h12, h20, h21, h22,
        a * gp00, a * gp01, a * gp02, a * gp10, a * gp11, a * gp12, a * gp20, a * gp21, a * gp22)
    sc = _dot9(gp00, gp01, gp02, gp10, gp11, gp12, gp20, gp21, gp22, k00, k01, k02, k10, k11, k12, k20, k21, k22)
    tl.store(glam_ptr + offs, sc * (J - 1.0) * (J / safe_det), mask=mask)
    tl.store(gmu_ptr + offs, g_mu, mask=mask)
    g_det = sc * lam * (tl.where(det >= floor_j, (2.0 * J - 1.0) / safe_det, 0.0)
                        - tl.where(tl.abs(det) >= tiny, (J - 1.0) * J / (safe_det * safe_det), 0.0))
    pf00, pf01, pf02, pf10, pf11, pf12, pf20, pf21, pf22 = _load_matrix(gFh_part_ptr, offs, mask)
    gh00 += two_mu * gp00 + y00 + z00 + g_det * k00 + pf00
    gh01 += two_mu * gp01 + y01 + z01 + g_det * k01 + pf01
    gh02 += two_mu * gp02 + y02 + z02 + g_det * k02 + pf02
    gh10 += two_mu * gp10 + y10 + z10 + g_det * k10 + pf10
    gh11 += two_mu * gp11 + y11 + z11 + g_det * k11 + pf11
    gh12 += two_mu * gp12 + y12 + z12 + g_det * k12 + pf12
    gh20 += two_mu * gp20 + y20 + z20 + g_det * k20 + pf20
    gh21 += two_mu * gp21 + y21 + z21 + g_det * k21 + pf21
    gh22 += two_mu * gp22 + y22 + z22 + g_det * k22 + pf22
    _store_matrix(gdF_ptr, offs, mask & (offs < num_controlled), gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22)
    go00, go01, go02, go10, go11, go12, go20, go21, go22 = _load_matrix(gF_out_ptr, offs, mask)
    gf00, gf01, gf02, gf10, gf11, gf12, gf20, gf21, gf22 = _lincomb9(
        1.0, gh00, gh01, gh02, gh10, gh11, gh12, gh20, gh21, gh22,
        beta, go00, go01, go02, go10, go11, go12, go20, go21, go22)
    _store_matrix(gF_ptr, offs, mask, gf00, gf01, gf02, gf10, gf11, gf12, gf20, gf21, gf22)
