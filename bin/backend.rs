//! The concrete backend, picked by cargo feature: `cuda`, else `wgpu`, else `ndarray` (CPU).

#[cfg(feature = "cuda")]
pub type Backend = burn::backend::Cuda;

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Backend = burn::backend::Wgpu;

#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Backend = burn::backend::NdArray<f32>;

#[cfg(not(any(feature = "ndarray", feature = "cuda", feature = "wgpu")))]
compile_error!("enable one backend feature: ndarray (default), wgpu or cuda");

/// The backend with automatic differentiation, for training and gradients.
#[allow(dead_code)]
pub type Autodiff = burn::backend::Autodiff<Backend>;

pub fn device() -> <Backend as burn::tensor::backend::BackendTypes>::Device {
    Default::default()
}

/// The backend's name, for logs and benchmark tables.
#[allow(dead_code)]
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else {
        "ndarray"
    }
}
