//! The Vulkan side: a device with the extensions and features our kernels use ([`Context`]),
//! and per module a compute pipeline created with statistics capture ([`pipeline`]).

mod pipeline;

use anyhow::{Result, anyhow, bail};
use ash::vk;
use std::collections::HashSet;
use std::ffi::{CStr, CString, c_char, c_void};

const EXT_PIPELINE_EXEC: &CStr = c"VK_KHR_pipeline_executable_properties";

/// Device extensions enabled when supported (raw names: ash 0.38 lacks some).
const WANTED_EXTENSIONS: &[&CStr] = &[
    c"VK_KHR_cooperative_matrix",
    c"VK_NV_cooperative_matrix2",
    c"VK_KHR_shader_float16_int8",
    c"VK_KHR_16bit_storage",
    c"VK_KHR_8bit_storage",
    c"VK_KHR_vulkan_memory_model",
    c"VK_KHR_shader_integer_dot_product",
    c"VK_EXT_subgroup_size_control",
    c"VK_KHR_shader_subgroup_extended_types",
    c"VK_EXT_shader_atomic_float",
    c"VK_KHR_shader_non_semantic_info",
    c"VK_KHR_storage_buffer_storage_class",
    c"VK_KHR_variable_pointers",
    c"VK_KHR_buffer_device_address",
    c"VK_EXT_descriptor_indexing",
    c"VK_KHR_maintenance4",
    c"VK_KHR_shader_expect_assume",
    c"VK_KHR_shader_bfloat16",
    c"VK_EXT_shader_float8",
    c"VK_NV_shader_subgroup_partitioned",
];

// Feature structs newer than ash 0.38 (Vulkan headers 1.3.281); sTypes from vk.xml.
const STYPE_COOPMAT2_FEATURES_NV: i32 = 1_000_593_000;
const STYPE_BFLOAT16_FEATURES_KHR: i32 = 1_000_141_000;
const STYPE_FLOAT8_FEATURES_EXT: i32 = 1_000_567_000;

const NVIDIA_VENDOR_ID: u32 = 0x10de;

/// Generic `{ sType, pNext, VkBool32 x N }` feature struct.
#[repr(C)]
struct RawFeatures<const N: usize> {
    s_type: vk::StructureType,
    p_next: *mut c_void,
    flags: [vk::Bool32; N],
}

impl<const N: usize> RawFeatures<N> {
    fn new(s_type: i32) -> Self {
        let s_type = vk::StructureType::from_raw(s_type);
        Self {
            s_type,
            p_next: std::ptr::null_mut(),
            flags: [0; N],
        }
    }
}

/// All feature structs; boxed so the pNext pointers stay valid.
#[derive(Default)]
struct Features {
    f2: vk::PhysicalDeviceFeatures2<'static>,
    v11: vk::PhysicalDeviceVulkan11Features<'static>,
    v12: vk::PhysicalDeviceVulkan12Features<'static>,
    v13: vk::PhysicalDeviceVulkan13Features<'static>,
    exec: vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR<'static>,
    coop: vk::PhysicalDeviceCooperativeMatrixFeaturesKHR<'static>,
    atomic_float: vk::PhysicalDeviceShaderAtomicFloatFeaturesEXT<'static>,
    expect_assume: vk::PhysicalDeviceShaderExpectAssumeFeaturesKHR<'static>,
    coop2: Option<RawFeatures<7>>,
    bf16: Option<RawFeatures<3>>,
    fp8: Option<RawFeatures<2>>,
}

impl Features {
    /// Links the chain f2 -> ... through the structs valid for this device (`has`: whether an
    /// extension is enabled). The pointers are into `self`, so `self` must not move afterwards.
    fn link(&mut self, api: u32, has: &dyn Fn(&CStr) -> bool) {
        fn p<T>(x: &mut T) -> *mut vk::BaseOutStructure<'static> {
            x as *mut T as *mut vk::BaseOutStructure<'static>
        }
        let mut chain = Vec::new();
        if api >= vk::API_VERSION_1_2 {
            chain.push(p(&mut self.v11));
            chain.push(p(&mut self.v12));
        }
        if api >= vk::API_VERSION_1_3 {
            chain.push(p(&mut self.v13));
        }
        chain.push(p(&mut self.exec));
        if has(c"VK_KHR_cooperative_matrix") {
            chain.push(p(&mut self.coop));
        }
        if has(c"VK_EXT_shader_atomic_float") {
            chain.push(p(&mut self.atomic_float));
        }
        if has(c"VK_KHR_shader_expect_assume") {
            chain.push(p(&mut self.expect_assume));
        }
        if has(c"VK_NV_cooperative_matrix2") {
            let coop2 = self
                .coop2
                .insert(RawFeatures::new(STYPE_COOPMAT2_FEATURES_NV));
            chain.push(p(coop2));
        }
        if has(c"VK_KHR_shader_bfloat16") {
            let bf16 = self
                .bf16
                .insert(RawFeatures::new(STYPE_BFLOAT16_FEATURES_KHR));
            chain.push(p(bf16));
        }
        if has(c"VK_EXT_shader_float8") {
            let fp8 = self.fp8.insert(RawFeatures::new(STYPE_FLOAT8_FEATURES_EXT));
            chain.push(p(fp8));
        }
        let mut next: *mut vk::BaseOutStructure<'static> = std::ptr::null_mut();
        for &s in chain.iter().rev() {
            // SAFETY: `s` points to a field of `self` (borrowed mutably here, so alive and
            // unaliased); every one is a repr(C) struct starting with sType and pNext, which is
            // the layout of VkBaseOutStructure.
            unsafe { (*s).p_next = next };
            next = s;
        }
        self.f2.p_next = next as *mut c_void;
    }
}

/// The instance and device the pipelines are built on; destroyed on drop.
pub struct Context {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    exec: ash::khr::pipeline_executable_properties::Device,
    max_push_constants: u32,
}

impl Context {
    /// Loads the Vulkan loader and creates a device on the first NVIDIA GPU (else the first one).
    pub fn new(verbose: bool, no_robust_buffer_access: bool) -> Result<Self> {
        // SAFETY: loading the system Vulkan loader runs its library initialisers; that is what
        // ash's `loaded` feature is for, and the library is not unloaded while `entry` lives.
        let entry = unsafe { ash::Entry::load() }
            .map_err(|e| anyhow!("cannot load the Vulkan loader (libvulkan.so.1): {e}"))?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"vkstats") // the name the tool was validated with
            .api_version(vk::API_VERSION_1_3);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `info` and the `app` it points to live across the call; no allocator.
        let instance = unsafe { entry.create_instance(&info, None) }
            .map_err(|e| vkerr("vkCreateInstance", e))?;
        match open_device(&instance, verbose, no_robust_buffer_access) {
            Ok((device, max_push_constants)) => {
                let exec =
                    ash::khr::pipeline_executable_properties::Device::new(&instance, &device);
                Ok(Self {
                    _entry: entry,
                    instance,
                    device,
                    exec,
                    max_push_constants,
                })
            }
            Err(e) => {
                // SAFETY: the instance is valid and no object created from it is alive.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every object created on the device is destroyed by then (`Objects` borrows the
        // context), nothing was submitted, and the device goes before its instance.
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// Picks the GPU, prints what it is, and creates the device with the wanted extensions and all
/// their supported features. Returns the device and its push-constant limit.
fn open_device(
    instance: &ash::Instance,
    verbose: bool,
    no_robust_buffer_access: bool,
) -> Result<(ash::Device, u32)> {
    let (pdev, prop) = pick_physical_device(instance)?;
    print_device(instance, pdev, &prop);
    let exts = select_extensions(instance, pdev, verbose)?;
    let features = query_features(
        instance,
        pdev,
        prop.api_version,
        &exts,
        verbose,
        no_robust_buffer_access,
    )?;
    let queue_family = compute_queue_family(instance, pdev)?;
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(queue_family)
        .queue_priorities(&priorities)];
    let ext_ptrs: Vec<*const c_char> = exts.iter().map(|e| e.as_ptr()).collect();
    let mut info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queues)
        .enabled_extension_names(&ext_ptrs);
    // Features go through the VkPhysicalDeviceFeatures2 chain (pEnabledFeatures stays null).
    info.p_next = &features.f2 as *const vk::PhysicalDeviceFeatures2 as *const c_void;
    // SAFETY: `pdev` belongs to `instance`; `queues`, `priorities`, `ext_ptrs` (pointing into
    // 'static names) and the boxed feature chain are alive until the call returns.
    let device = unsafe { instance.create_device(pdev, &info, None) }
        .map_err(|e| vkerr("vkCreateDevice", e))?;
    drop(features);
    Ok((device, prop.limits.max_push_constants_size))
}

/// The first GPU whose name contains "NVIDIA", else the first one.
fn pick_physical_device(
    instance: &ash::Instance,
) -> Result<(vk::PhysicalDevice, vk::PhysicalDeviceProperties)> {
    // SAFETY: the instance is valid.
    let pdevs = unsafe { instance.enumerate_physical_devices() }
        .map_err(|e| vkerr("vkEnumeratePhysicalDevices", e))?;
    if pdevs.is_empty() {
        bail!("no Vulkan physical devices found");
    }
    // SAFETY: every `d` was just enumerated from this instance.
    let props: Vec<_> = pdevs
        .iter()
        .map(|&d| unsafe { instance.get_physical_device_properties(d) })
        .collect();
    let idx = props
        .iter()
        .position(|p| cstr(&p.device_name).contains("NVIDIA"))
        .unwrap_or(0);
    Ok((pdevs[idx], props[idx]))
}

fn print_device(
    instance: &ash::Instance,
    pdev: vk::PhysicalDevice,
    prop: &vk::PhysicalDeviceProperties,
) {
    let (dv, api) = (prop.driver_version, prop.api_version);
    println!(
        "device: {} (vendor 0x{:04x}, device 0x{:04x})",
        cstr(&prop.device_name),
        prop.vendor_id,
        prop.device_id
    );
    print!(
        "driver version: {} (raw 0x{dv:08x}), API {}.{}.{}",
        driver_version(prop.vendor_id, dv),
        vk::api_version_major(api),
        vk::api_version_minor(api),
        vk::api_version_patch(api)
    );
    if api >= vk::API_VERSION_1_2 {
        let mut drv = vk::PhysicalDeviceDriverProperties::default();
        let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut drv);
        // SAFETY: `pdev` belongs to `instance`, which supports Vulkan 1.2 (so the driver
        // properties struct is valid in the chain); `drv` outlives the call.
        unsafe { instance.get_physical_device_properties2(pdev, &mut p2) };
        print!(", {} {}", cstr(&drv.driver_name), cstr(&drv.driver_info));
    }
    println!();
}

/// NVIDIA packs its driver version as 10.8.8.6 bits; others use the Vulkan version encoding.
fn driver_version(vendor_id: u32, dv: u32) -> String {
    if vendor_id == NVIDIA_VENDOR_ID {
        let (a, b, c, d) = (dv >> 22, (dv >> 14) & 0xff, (dv >> 6) & 0xff, dv & 0x3f);
        format!("{a}.{b}.{c}.{d}")
    } else {
        let (major, minor) = (vk::api_version_major(dv), vk::api_version_minor(dv));
        format!("{major}.{minor}.{}", vk::api_version_patch(dv))
    }
}

/// VK_KHR_pipeline_executable_properties (required) and the wanted extensions the device has.
fn select_extensions(
    instance: &ash::Instance,
    pdev: vk::PhysicalDevice,
    verbose: bool,
) -> Result<Vec<&'static CStr>> {
    // SAFETY: `pdev` belongs to `instance`.
    let avail: HashSet<CString> = unsafe { instance.enumerate_device_extension_properties(pdev) }
        .map_err(|e| vkerr("vkEnumerateDeviceExtensionProperties", e))?
        .iter()
        .map(|e| CString::from(e.extension_name_as_c_str().unwrap_or(c"")))
        .collect();
    if !avail.contains(EXT_PIPELINE_EXEC) {
        bail!(
            "device does not support {}",
            EXT_PIPELINE_EXEC.to_string_lossy()
        );
    }
    let mut exts = vec![EXT_PIPELINE_EXEC];
    exts.extend(WANTED_EXTENSIONS.iter().filter(|e| avail.contains(**e)));
    let missing: Vec<_> = WANTED_EXTENSIONS
        .iter()
        .filter(|e| !avail.contains(**e))
        .map(|e| e.to_string_lossy())
        .collect();
    if verbose {
        let names: Vec<_> = exts.iter().map(|e| e.to_string_lossy()).collect();
        println!("enabled extensions: {}", names.join(" "));
    }
    if !missing.is_empty() {
        println!("unsupported (not enabled): {}", missing.join(" "));
    }
    Ok(exts)
}

/// Every feature the device supports in the chain of `exts`, to be enabled as reported
/// (robustBufferAccess optionally off). The box keeps the chain's pNext pointers valid.
fn query_features(
    instance: &ash::Instance,
    pdev: vk::PhysicalDevice,
    api: u32,
    exts: &[&CStr],
    verbose: bool,
    no_robust_buffer_access: bool,
) -> Result<Box<Features>> {
    let mut feats = Box::<Features>::default();
    feats.link(api, &|name| exts.contains(&name));
    // SAFETY: `pdev` belongs to `instance`; the chain only holds structs of this API version or
    // of extensions in `exts`, all inside the box, which is alive and does not move.
    unsafe { instance.get_physical_device_features2(pdev, &mut feats.f2) };
    if feats.exec.pipeline_executable_info == 0 {
        bail!("device reports pipelineExecutableInfo = false");
    }
    if no_robust_buffer_access {
        feats.f2.features.robust_buffer_access = 0;
    }
    if verbose {
        println!(
            "features: robustBufferAccess={} cooperativeMatrix={} coopmat2={:?} bfloat16={:?} float8={:?}",
            feats.f2.features.robust_buffer_access,
            feats.coop.cooperative_matrix,
            feats.coop2.as_ref().map(|f| f.flags),
            feats.bf16.as_ref().map(|f| f.flags),
            feats.fp8.as_ref().map(|f| f.flags)
        );
    }
    Ok(feats)
}

fn compute_queue_family(instance: &ash::Instance, pdev: vk::PhysicalDevice) -> Result<u32> {
    // SAFETY: `pdev` belongs to `instance`.
    let families = unsafe { instance.get_physical_device_queue_family_properties(pdev) };
    let index = families
        .iter()
        .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .ok_or_else(|| anyhow!("device has no compute queue family"))?;
    Ok(index as u32)
}

fn vkerr(call: &str, e: vk::Result) -> anyhow::Error {
    anyhow!("{call} failed: {e:?} ({})", e.as_raw())
}

/// A fixed-size, nul-terminated C string field as text.
fn cstr(a: &[c_char]) -> String {
    let bytes: Vec<u8> = a
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
