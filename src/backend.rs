//! The concrete backend, picked by cargo feature: `cuda`, else `wgpu`, else `flex` (CPU, with
//! bf16), else `ndarray` (CPU, the default: the deterministic tests run on it).

#[cfg(feature = "cuda-fixed")]
pub type Backend = burn::backend::Cuda;

#[cfg(all(feature = "wgpu", not(feature = "cuda-fixed")))]
pub type Backend = burn::backend::Wgpu;

#[cfg(all(feature = "flex", not(any(feature = "cuda-fixed", feature = "wgpu"))))]
pub type Backend = burn::backend::Flex;

#[cfg(all(
    feature = "ndarray",
    not(any(feature = "cuda-fixed", feature = "wgpu", feature = "flex"))
))]
pub type Backend = burn::backend::NdArray<f32>;

#[cfg(not(any(
    feature = "ndarray",
    feature = "cuda-fixed",
    feature = "wgpu",
    feature = "flex"
)))]
compile_error!("enable one backend feature: ndarray (default), flex, wgpu or cuda");

/// The backend with automatic differentiation, for training and gradients.
pub type Autodiff = burn::backend::Autodiff<Backend>;

pub type Device = <Backend as burn::tensor::backend::BackendTypes>::Device;

/// The default device. The first call also tunes the host allocator (see [`keep_freed_memory`]).
pub fn device() -> Device {
    keep_freed_memory();
    Default::default()
}

/// The devices of a comma-separated list as this build names them: `cuda:N` (cuda); `default`,
/// `discrete:N`, `integrated:N`, `virtual:N` or `cpu` (wgpu); `cpu` (ndarray, flex). A device
/// named twice gets two workers.
pub fn devices(list: &str) -> anyhow::Result<Vec<Device>> {
    keep_freed_memory();
    list.split(',')
        .map(|name| parse_device(name.trim()))
        .collect()
}

/// Makes glibc's allocator keep freed memory for the next allocation instead of returning it to
/// the system: blocks up to 32 MiB come from the heap (not a fresh `mmap` each), and the heap is
/// not trimmed. A training step frees and reallocates about a gigabyte of activations; with
/// glibc's defaults much of it came back as fresh pages that the kernel zeroed on first touch
/// (1.1 million page faults in 4 steps of the SmolLM2 bench, up to a fifth of the main thread's
/// time in one profile, and a step time that changed from run to run with the allocator's
/// history). Measured with the bench (4 pairs x 64 tokens, 2 threads, AMD EPYC, 4 runs each in
/// turn): system time 3.3 -> 1.8 s, wall 0.95x (0.87-1.03), peak RSS unchanged. Once per process; elsewhere
/// than glibc, nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters (under glibc's own locks) and
            // takes no pointers.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                libc::mallopt(libc::M_TOP_PAD, 256 << 20);
            }
        });
    }
}

#[cfg(any(feature = "cuda-fixed", feature = "wgpu"))]
fn number(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.parse().ok()
}

#[cfg(feature = "cuda-fixed")]
fn parse_device(name: &str) -> anyhow::Result<Device> {
    number(name, "cuda:")
        .map(|index| Device { index })
        .ok_or_else(|| anyhow::anyhow!("unknown device {name:?}: this cuda build takes cuda:N"))
}

#[cfg(all(feature = "wgpu", not(feature = "cuda-fixed")))]
fn parse_device(name: &str) -> anyhow::Result<Device> {
    let device = match name {
        "default" => Some(Device::DefaultDevice),
        "cpu" => Some(Device::Cpu),
        _ => None,
    };
    device
        .or_else(|| number(name, "discrete:").map(Device::DiscreteGpu))
        .or_else(|| number(name, "integrated:").map(Device::IntegratedGpu))
        .or_else(|| number(name, "virtual:").map(Device::VirtualGpu))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown device {name:?}: this wgpu build takes default, discrete:N, \
                 integrated:N, virtual:N or cpu"
            )
        })
}

#[cfg(not(any(feature = "cuda-fixed", feature = "wgpu")))]
fn parse_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(device()),
        _ => anyhow::bail!("unknown device {spec:?}: this {} build takes cpu", name()),
    }
}

/// The backend's name, for logs and benchmark tables.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda-fixed") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else if cfg!(feature = "flex") {
        "flex"
    } else {
        "ndarray"
    }
}

/// Sets up `device` to compute in `precision`; call it first, before any tensor exists.
///
/// On the GPU backends this also sets where cubecl keeps what it learns, under
/// `$DECPO_GPU_CACHE` (default `~/.cache/decpo/gpu`): the autotune results in `<backend>-<dtype>/`
/// (the fastest kernel per matmul shape; one directory per dtype, because a bf16 run has been
/// seen to reuse the f32 choice for the same shape at 0.5-0.7x of a bf16-tuned kernel) and the
/// compiled kernels in `kernels/` (PTX on CUDA, so NVRTC compiles a kernel once). A
/// `cubecl.toml` or `burn.toml` in the working directory overrides this.
pub fn prepare<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    precision: decpo_model::Precision,
) -> anyhow::Result<()> {
    #[cfg(any(feature = "cuda-fixed", feature = "wgpu"))]
    gpu_cache(precision);
    decpo_model::set_compute_dtype::<B>(device, precision)?;
    Ok(())
}

/// cubecl's configuration is global and may be set once per process: with several devices
/// (`--devices cuda:0,cuda:1`) `prepare` runs once per device, and a second `set` panics.
#[cfg(any(feature = "cuda-fixed", feature = "wgpu"))]
fn gpu_cache(precision: decpo_model::Precision) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| set_gpu_cache(precision));
}

#[cfg(any(feature = "cuda-fixed", feature = "wgpu"))]
fn set_gpu_cache(precision: decpo_model::Precision) {
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    let user_file = ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"]
        .iter()
        .any(|f| std::path::Path::new(f).exists());
    if user_file {
        return;
    }
    let root = std::env::var_os("DECPO_GPU_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/decpo/gpu"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("target/gpu-cache"));
    let mut config = CubeClRuntimeConfig::default();
    config.autotune.cache = CacheConfig::File(root.join(format!("{}-{precision}", name())));
    config.compilation.cache = Some(CacheConfig::File(root.join("kernels")));
    CubeClRuntimeConfig::set(config);
}
