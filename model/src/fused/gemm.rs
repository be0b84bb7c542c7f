//! Strided matrix views over f32 buffers and one single-threaded GEMM call on them (the `gemm`
//! crate burn-flex runs its matmuls with, so the same kernels: AVX-512 where the CPU has it).
//! The fused ops call it from their own parallel loops, one matrix per task, reading the
//! operands where they lie and writing the result where it belongs (no copy to a contiguous
//! layout and back, no zero-filled output buffer).

/// A `rows × cols` matrix at `ptr`: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mat {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

/// A writable [`Mat`] (built from a `*mut` pointer, which it keeps as the view's).
#[derive(Debug, Clone, Copy)]
pub(super) struct MatMut(Mat);

// SAFETY: views into buffers that outlive the parallel loops using them; the fused ops give each
// task disjoint blocks to write (documented where they split the work). `MatMut` follows.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// Rows of `cols` at `offset`, row stride `rs`, column stride 1.
    pub(super) fn rows_of(
        base: *const f32,
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
    ) -> Self {
        Self {
            ptr: base.wrapping_add(offset),
            rows,
            cols,
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The 2-D view of a burn-flex tensor as it lies (any strides).
    pub(super) fn of(t: &burn::backend::flex::FlexTensor) -> Self {
        let layout = t.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        assert_eq!(shape.num_dims(), 2, "a matrix");
        Self {
            ptr: t
                .storage::<f32>()
                .as_ptr()
                .wrapping_add(layout.start_offset()),
            rows: shape[0],
            cols: shape[1],
            rs: strides[0],
            cs: strides[1],
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `r0..r0 + rows`, columns `c0..c0 + cols`.
    pub(super) fn sub(self, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        let offset = r0 as isize * self.rs + c0 as isize * self.cs;
        Self {
            ptr: self.ptr.wrapping_offset(offset),
            rows,
            cols,
            ..self
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl MatMut {
    /// Rows of `cols` at `offset`, row stride `rs`, column stride 1.
    pub(super) fn rows_of(
        base: *mut f32,
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
    ) -> Self {
        Self(Mat::rows_of(base, offset, rows, cols, rs))
    }

    /// Rows `r0..r0 + rows`, columns `c0..c0 + cols`.
    pub(super) fn sub(self, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        Self(self.0.sub(r0, rows, c0, cols))
    }

    pub(super) fn as_const(self) -> Mat {
        self.0
    }

    fn ptr(self) -> *mut f32 {
        self.0.ptr.cast_mut()
    }

    /// Every element set to 0.
    ///
    /// # Safety
    /// The view lies in a live buffer that no other thread touches meanwhile.
    pub(super) unsafe fn fill_zero(self) {
        let Mat {
            rows, cols, rs, cs, ..
        } = self.0;
        for i in 0..rows as isize {
            for j in 0..cols as isize {
                // SAFETY: the caller's.
                unsafe { *self.ptr().offset(i * rs + j * cs) = 0.0 };
            }
        }
    }
}

/// A buffer that the tasks of a parallel loop write, each its own part.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shared(*mut f32);

// SAFETY: as for `MatMut`: the loop's tasks write disjoint parts, and the buffer outlives it.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub(super) fn new(buffer: &mut Vec<f32>) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// The buffer's start (a method, so that a closure captures the `Shared`, not the pointer).
    pub(super) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst = a · b` (or `dst += a · b` when `accumulate`), on the calling thread.
///
/// # Safety
/// The three views lie inside live buffers, `dst` overlaps neither operand, and no other thread
/// touches `dst` meanwhile; with `accumulate`, `dst` holds initialized values.
pub(super) unsafe fn matmul(dst: MatMut, accumulate: bool, a: Mat, b: Mat) {
    // SAFETY: the caller's.
    unsafe { gemm_call(dst, accumulate, a, b, gemm::Parallelism::None) }
}

/// [`matmul`] on every thread of the rayon pool (for one big product).
///
/// # Safety
/// As for [`matmul`].
pub(super) unsafe fn matmul_parallel(dst: MatMut, accumulate: bool, a: Mat, b: Mat) {
    // SAFETY: the caller's.
    unsafe { gemm_call(dst, accumulate, a, b, gemm::Parallelism::Rayon(0)) }
}

/// `a · b` as a new row-major burn-flex tensor, on every thread of the rayon pool.
pub(super) fn product(a: Mat, b: Mat) -> burn::backend::flex::FlexTensor {
    let shape = vec![a.rows, b.cols];
    super::tensor(product_values(a, b), shape)
}

/// `a · b` row-major, on every thread of the rayon pool (gemm writes every element; no
/// zero-filled buffer first).
pub(super) fn product_values(a: Mat, b: Mat) -> Vec<f32> {
    let (rows, cols) = (a.rows, b.cols);
    let mut out = Vec::with_capacity(rows * cols);
    // SAFETY: `a` and `b` are views of live tensors or buffers (their constructors' contract);
    // `out` has room for the product, which gemm writes whole before the length is set.
    unsafe {
        matmul_parallel(
            MatMut::rows_of(out.as_mut_ptr(), 0, rows, cols, cols),
            false,
            a,
            b,
        );
        out.set_len(rows * cols);
    }
    out
}

unsafe fn gemm_call(dst: MatMut, accumulate: bool, a: Mat, b: Mat, threads: gemm::Parallelism) {
    let (dst_ptr, dst) = (dst.ptr(), dst.0);
    assert!(
        a.cols == b.rows && dst.rows == a.rows && dst.cols == b.cols,
        "matmul: [{}, {}] · [{}, {}] into [{}, {}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.rows,
        dst.cols
    );
    // SAFETY: the caller's contract; `gemm` writes every element of `dst` and reads it only
    // when `accumulate` (dst := 1·dst + 1·a·b).
    unsafe {
        gemm::gemm(
            dst.rows, dst.cols, a.cols, dst_ptr, dst.cs, dst.rs, accumulate, a.ptr, a.cs, a.rs,
            b.ptr, b.cs, b.rs, 1.0f32, 1.0f32, false, false, false, threads,
        );
    }
}
