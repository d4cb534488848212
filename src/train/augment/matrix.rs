//! The small per-image matrices of the augmentation pipe (Karras et al. 2020, "Training
//! Generative Adversarial Networks with Limited Data", App. B; edm `training/augment.py`):
//! 3×3 homogeneous 2-D transforms for the geometric part and 4×4 homogeneous colour
//! transforms, in float32 on the host as the reference builds them (torch's default dtype),
//! products evaluated left to right as Python's `@`.
//!
//! Not here: applying them to images (`geometric.rs`, `mod.rs`).

/// A 3×3 matrix, row-major.
pub type Mat3 = [[f32; 3]; 3];
/// A 4×4 matrix, row-major.
pub type Mat4 = [[f32; 4]; 4];

pub const I3: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
pub const I4: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// a @ b, each entry summed in index order in float32.
pub fn mul3(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0f32; 3]; 3];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    c
}

/// a @ b for 4×4 matrices.
pub fn mul4(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut c = [[0f32; 4]; 4];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j] + a[i][3] * b[3][j];
        }
    }
    c
}

/// `translate2d(tx, ty)`.
pub fn translate2d(tx: f32, ty: f32) -> Mat3 {
    [[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]
}

/// `scale2d(sx, sy)`.
pub fn scale2d(sx: f32, sy: f32) -> Mat3 {
    [[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]]
}

/// `rotate2d(θ)`: [[cos θ, sin(−θ)], [sin θ, cos θ]].
pub fn rotate2d(theta: f32) -> Mat3 {
    [
        [theta.cos(), (-theta).sin(), 0.0],
        [theta.sin(), theta.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ]
}

/// `translate3d(tx, ty, tz)`.
pub fn translate3d(tx: f32, ty: f32, tz: f32) -> Mat4 {
    let mut m = I4;
    m[0][3] = tx;
    m[1][3] = ty;
    m[2][3] = tz;
    m
}

/// `scale3d(sx, sy, sz)`.
pub fn scale3d(sx: f32, sy: f32, sz: f32) -> Mat4 {
    let mut m = I4;
    m[0][0] = sx;
    m[1][1] = sy;
    m[2][2] = sz;
    m
}

/// `rotate3d(v, θ)`: rotation by θ about the unit axis v (Rodrigues), as the reference
/// writes it entry by entry.
pub fn rotate3d(v: [f32; 3], theta: f32) -> Mat4 {
    let [vx, vy, vz] = v;
    let (s, c) = (theta.sin(), theta.cos());
    let cc = 1.0 - c;
    [
        [
            vx * vx * cc + c,
            vx * vy * cc - vz * s,
            vx * vz * cc + vy * s,
            0.0,
        ],
        [
            vy * vx * cc + vz * s,
            vy * vy * cc + c,
            vy * vz * cc - vx * s,
            0.0,
        ],
        [
            vz * vx * cc - vy * s,
            vz * vy * cc + vx * s,
            vz * vz * cc + c,
            0.0,
        ],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// The luma axis (1, 1, 1, 0)/√3, computed in float64 and stored in float32 as the reference.
pub fn luma_axis() -> [f32; 4] {
    let v = (1.0 / 3f64.sqrt()) as f32;
    [v, v, v, 0.0]
}

/// v vᵀ (`torch.ger`).
pub fn outer4(v: &[f32; 4]) -> Mat4 {
    let mut m = [[0f32; 4]; 4];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = v[i] * v[j];
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating by θ then by −θ is the identity (to float32 rounding), and a rotation keeps
    /// the luma axis fixed in colour space.
    #[test]
    fn rotations_invert_and_keep_their_axis() {
        let r = mul3(&rotate2d(0.7), &rotate2d(-0.7));
        for (i, row) in r.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - I3[i][j]).abs() < 1e-6, "{i},{j}: {v}");
            }
        }
        let a = luma_axis();
        let m = rotate3d([a[0], a[1], a[2]], 1.3);
        for (i, row) in m.iter().take(3).enumerate() {
            let y: f32 = row.iter().zip(&a).map(|(m, v)| m * v).sum();
            assert!((y - a[i]).abs() < 1e-6, "axis moved: {y}");
        }
    }
}
