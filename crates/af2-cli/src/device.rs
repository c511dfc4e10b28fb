//! Choosing the backend device at run time among those compiled in.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Backends this binary was built with, in order of preference for `auto`.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    if cfg!(feature = "metal") {
        names.push("metal");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    names
}

/// Resolves `--device NAME` (`auto`, `cpu`, `ndarray`, `flex`, `wgpu`, `vulkan`, `metal`).
pub fn parse_device(name: &str) -> Result<Device> {
    let available = compiled_backends();
    let wanted = match name {
        "auto" => match available.first() {
            Some(first) => *first,
            None => bail!("this af2 binary was built without any backend feature"),
        },
        "cpu" => "ndarray",
        other => other,
    };
    if !available.contains(&wanted) {
        bail!(
            "device `{name}` is not available in this build; compiled backends: {}",
            available.join(", ")
        );
    }
    if matches!(wanted, "vulkan" | "metal" | "wgpu")
        && let Some(notice) = crate::kernel_cache::cold_start_notice_now()
    {
        eprintln!("{notice}");
    }
    Ok(make_device(wanted))
}

/// `--device NAME` for report headers, with the adapter's own name where it has one
/// (`vulkan (NVIDIA H200)`), so that every benchmark table names its card.
pub fn describe_device(name: &str, device: &Device) -> String {
    match af2_layers::device_name(device) {
        Some(adapter) => format!("{name} ({adapter})"),
        None => name.to_string(),
    }
}

#[allow(unreachable_code, deprecated)]
fn make_device(name: &str) -> Device {
    match name {
        #[cfg(feature = "vulkan")]
        "vulkan" => return Device::vulkan(Default::default()),
        #[cfg(feature = "metal")]
        "metal" => return Device::metal(Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => return Device::wgpu(Default::default()),
        #[cfg(feature = "flex")]
        "flex" => return Device::flex(),
        #[cfg(feature = "ndarray")]
        "ndarray" => return Device::ndarray(),
        _ => {}
    }
    Device::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_devices_are_described_by_their_flag_alone() {
        let device = parse_device("cpu").expect("the test build has ndarray");
        assert_eq!(describe_device("cpu", &device), "cpu");
    }

    #[test]
    fn unknown_devices_are_refused_with_the_compiled_list() {
        let error = parse_device("tpu").unwrap_err().to_string();
        assert!(
            error.contains("`tpu`") && error.contains("ndarray"),
            "{error}"
        );
    }
}
