//! Big f32 buffers kept for the next step instead of going back to the allocator. A chunk of
//! logits (512 rows × 49 152 columns, 100 MB) is above glibc's mmap threshold (32 MiB at most):
//! each one was a fresh mapping whose pages the kernel zeroed on first touch, twice per chunk
//! (logits and their gradient), every chunk of every step. Taken from here, the same pages serve
//! every step. Held at most [`MAX_BYTES`] in all while idle.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// What the pool keeps while nobody holds it (the buffers of one step of the largest runs here).
const MAX_BYTES: usize = 2 << 30;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// `len` f32 of unspecified values (whatever the buffer held before; callers write before they
/// read), back to the pool when dropped.
#[derive(Debug)]
pub(super) struct Pooled(Vec<f32>);

impl Pooled {
    pub(super) fn take(len: usize) -> Self {
        let reused = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest that fits, so a small request does not take a big buffer.
            let best = (pool.iter().enumerate())
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        };
        let mut buffer = reused.unwrap_or_default();
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        Self(buffer)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = pool.iter().map(|b| b.capacity() * 4).sum();
        if held + buffer.capacity() * 4 <= MAX_BYTES {
            pool.push(buffer);
        }
    }
}

impl Deref for Pooled {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}
