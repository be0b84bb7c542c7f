//! Dequantisation of the GGML block formats the project reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1).

use half::{bf16, f16};

/// A GGML tensor type this loader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    /// From the type code in a GGUF tensor header; `None` for types not supported here.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (elems, bytes) = self.block();
        n.is_multiple_of(elems)
            .then(|| n / elems)
            .and_then(|blocks| blocks.checked_mul(bytes))
    }
}

/// GGML's names, used in messages.
pub fn type_name(code: u32) -> String {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("type {code}"), |n| n.to_string())
}

/// Decodes `bytes` (exactly `ty.bytes_for(out.len())` of them) into `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half(b);
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        // Block of 32: f16 scale d, then 32 signed bytes q; x = d * q.
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = half(&b[0..2]);
                for (x, q) in o.iter_mut().zip(&b[2..34]) {
                    *x = d * (*q as i8) as f32;
                }
            }
        }
        // Block of 32: f16 scale d, 16 bytes of nibbles; element j is the low nibble of byte j and
        // element j + 16 the high nibble; x = d * (q - 8).
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = half(&b[0..2]);
                for (j, q) in b[2..18].iter().enumerate() {
                    o[j] = d * ((q & 0x0f) as f32 - 8.0);
                    o[j + 16] = d * ((q >> 4) as f32 - 8.0);
                }
            }
        }
        // Block of 32: f16 scale d, f16 minimum m, 16 bytes of nibbles; x = d * q + m.
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let d = half(&b[0..2]);
                let m = half(&b[2..4]);
                for (j, q) in b[4..20].iter().enumerate() {
                    o[j] = d * (q & 0x0f) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_blocks_put_low_nibbles_first() {
        // Byte j holds element j (low nibble) and element j + 16 (high nibble).
        let mut block = Vec::new();
        block.extend(h(0.5));
        block.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_0, &block, &mut out);
        assert_eq!(out[0], 0.5 * -8.0);
        assert_eq!(out[15], 0.5 * 7.0);
        assert_eq!(out[16], 0.5 * 7.0);
        assert_eq!(out[31], 0.5 * -8.0);

        let mut block = Vec::new();
        block.extend(h(0.25));
        block.extend(h(-1.0));
        block.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        dequantize(GgmlType::Q4_1, &block, &mut out);
        assert_eq!(out[3], 0.25 * 3.0 - 1.0);
        assert_eq!(out[19], 0.25 * 12.0 - 1.0);
    }

    #[test]
    fn q8_0_is_signed() {
        let mut block = Vec::new();
        block.extend(h(2.0));
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &block, &mut out);
        assert_eq!(out[0], -32.0);
        assert_eq!(out[31], 30.0);
    }

    #[test]
    fn sizes_must_be_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q4_1.bytes_for(33), None);
        assert_eq!(GgmlType::BF16.bytes_for(3), Some(6));
    }
}
