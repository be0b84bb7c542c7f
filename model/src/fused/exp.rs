//! exp by a polynomial (range reduction by ln 2, Cephes' degree-6 minimax coefficients; within
//! 2 ulp of expf for the arguments met here, -87.3 <= x <= 88), written so the compiler
//! vectorizes it: libm's expf is called one value at a time.

const LANES: usize = 16;

#[inline(always)]
pub(super) fn exp_lane(x: f32) -> f32 {
    // Below, exp(x) is under f32's smallest normal (2^-126); it stays there (about 1e-38),
    // nothing against the row's largest term, 1.
    let x = x.max(-87.3);
    // Rounds x·log2(e) to an integer n by adding 1.5·2^23; n is then the low bits of t.
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let bits = (t.to_bits() as i32 - 0x4B40_0000 + 127) << 23;
    y * f32::from_bits(bits as u32)
}

/// Σ exp(x - max) over a row.
pub(super) fn sum_exp(row: &[f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += exp_lane(x - max);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&x| exp_lane(x - max)).sum::<f32>()
}

/// out = scale · exp(x - max) over a row.
pub(super) fn scaled_exp(row: &[f32], max: f32, scale: f32, out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(row) {
        *o = scale * exp_lane(x - max);
    }
}

/// x = scale · exp(x - max) over a row, in place.
pub(super) fn scaled_exp_in_place(row: &mut [f32], max: f32, scale: f32) {
    for x in row.iter_mut() {
        *x = scale * exp_lane(*x - max);
    }
}

#[cfg(test)]
mod tests {
    use super::exp_lane;

    #[test]
    fn exp_lane_is_within_2_ulp_of_expf() {
        let mut worst = 0.0f32;
        for i in 0..=87_300 {
            let x = -(i as f32) * 1e-3;
            let (got, want) = (exp_lane(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).unsigned_abs() as f32;
            worst = worst.max(ulp);
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        // The sigmoid's exp(-x) goes up to 88.
        for i in 0..=88_000 {
            let x = i as f32 * 1e-3;
            let (got, want) = (exp_lane(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).unsigned_abs() as f32;
            assert!(ulp <= 2.0, "exp({x}): {got} vs {want}");
        }
        for x in [-87.31f32, -100.0, -1e4, f32::NEG_INFINITY] {
            assert!(exp_lane(x) < 1.3e-38, "exp({x}) = {}", exp_lane(x));
        }
    }
}
