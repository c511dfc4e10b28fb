//! One compute pipeline per module, created with statistics capture, and the statistics the
//! driver reports for it.

use super::{Context, cstr, vkerr};
use crate::kernel_stats::spirv::Reflection;
use anyhow::Result;
use ash::vk;
use std::ffi::CStr;
use std::time::Instant;

/// Size of the push-constant range declared for modules that use push constants.
const PUSH_CONSTANT_BYTES: u32 = 256;

impl Context {
    /// Builds the compute pipeline for one module and prints each executable's statistics.
    pub fn print_pipeline_statistics(
        &self,
        words: &[u32],
        refl: &Reflection,
        verbose: bool,
    ) -> Result<()> {
        let dev = &self.device;
        let mut obj = Objects::new(dev);
        let info = vk::ShaderModuleCreateInfo::default().code(words);
        // SAFETY: the device is valid and `words` outlives the call. It is a whole module whose
        // header and instruction stream parsed; deeper SPIR-V validity is trusted, the input being
        // a compiler's output.
        obj.module = unsafe { dev.create_shader_module(&info, None) }
            .map_err(|e| vkerr("vkCreateShaderModule", e))?;
        self.create_set_layouts(refl, verbose, &mut obj.set_layouts)?;
        obj.layout = self.create_pipeline_layout(&obj.set_layouts, refl.push_constants)?;
        let t0 = Instant::now();
        obj.pipeline = self.create_pipeline(obj.module, obj.layout, &refl.entry)?;
        println!(
            "  pipeline created in {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        self.print_executables(obj.pipeline, verbose)
    }

    /// One layout per set 0..=max set (sets without bindings get an empty layout), pushed onto
    /// `layouts` as they are created so the caller's guard destroys them on error.
    fn create_set_layouts(
        &self,
        refl: &Reflection,
        verbose: bool,
        layouts: &mut Vec<vk::DescriptorSetLayout>,
    ) -> Result<()> {
        let max_set = refl.bindings.keys().map(|k| k.0).max();
        for set in 0..max_set.map_or(0, |m| m + 1) {
            let bindings: Vec<vk::DescriptorSetLayoutBinding> = refl
                .bindings
                .range((set, 0)..=(set, u32::MAX))
                .map(|(&(_, binding), &(ty, count))| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(binding)
                        .descriptor_type(ty)
                        .descriptor_count(count)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            if verbose {
                for b in &bindings {
                    let (ty, n) = (b.descriptor_type, b.descriptor_count);
                    println!("  set {set} binding {}: {ty:?} x{n}", b.binding);
                }
            }
            let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
            // SAFETY: the device is valid and `bindings` outlives the call.
            let layout = unsafe { self.device.create_descriptor_set_layout(&info, None) }
                .map_err(|e| vkerr(&format!("vkCreateDescriptorSetLayout (set {set})"), e))?;
            layouts.push(layout);
        }
        Ok(())
    }

    fn create_pipeline_layout(
        &self,
        set_layouts: &[vk::DescriptorSetLayout],
        push_constants: bool,
    ) -> Result<vk::PipelineLayout> {
        let ranges = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(self.max_push_constants.min(PUSH_CONSTANT_BYTES))];
        let mut info = vk::PipelineLayoutCreateInfo::default().set_layouts(set_layouts);
        if push_constants {
            info = info.push_constant_ranges(&ranges);
        }
        // SAFETY: the device is valid; the set layouts were created on it and are alive, and
        // `ranges` outlives the call.
        unsafe { self.device.create_pipeline_layout(&info, None) }
            .map_err(|e| vkerr("vkCreatePipelineLayout", e))
    }

    fn create_pipeline(
        &self,
        module: vk::ShaderModule,
        layout: vk::PipelineLayout,
        entry: &CStr,
    ) -> Result<vk::Pipeline> {
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(entry);
        // Internal representations are captured too: the flag set the tool was validated with.
        let flags = vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR
            | vk::PipelineCreateFlags::CAPTURE_INTERNAL_REPRESENTATIONS_KHR;
        let info = vk::ComputePipelineCreateInfo::default()
            .flags(flags)
            .stage(stage)
            .layout(layout);
        let cache = vk::PipelineCache::null();
        // SAFETY: module and layout are alive handles of this device (the layout declares every
        // binding and push constant the module uses), `entry` outlives the call, and
        // pipelineExecutableInfo (required by the capture flags) was enabled on the device.
        match unsafe { self.device.create_compute_pipelines(cache, &[info], None) } {
            Ok(pipelines) => Ok(pipelines[0]),
            Err((pipelines, e)) => {
                for p in pipelines.into_iter().filter(|p| *p != vk::Pipeline::null()) {
                    // SAFETY: `p` was just created on this device and is used nowhere.
                    unsafe { self.device.destroy_pipeline(p, None) };
                }
                Err(vkerr("vkCreateComputePipelines", e))
            }
        }
    }

    fn print_executables(&self, pipeline: vk::Pipeline, verbose: bool) -> Result<()> {
        let info = vk::PipelineInfoKHR::default().pipeline(pipeline);
        // SAFETY: the pipeline is alive and was created with CAPTURE_STATISTICS.
        let executables = unsafe { self.exec.get_pipeline_executable_properties(&info) }
            .map_err(|e| vkerr("vkGetPipelineExecutablePropertiesKHR", e))?;
        for (ei, ex) in executables.iter().enumerate() {
            println!(
                "  executable {ei}: {} - {} (stages {:?}, subgroup size {})",
                cstr(&ex.name),
                cstr(&ex.description),
                ex.stages,
                ex.subgroup_size
            );
            let info = vk::PipelineExecutableInfoKHR::default()
                .pipeline(pipeline)
                .executable_index(ei as u32);
            let call = || format!("vkGetPipelineExecutableStatisticsKHR (executable {ei})");
            // SAFETY: as above, and `ei` is below the executable count the driver returned.
            let stats = unsafe { self.exec.get_pipeline_executable_statistics(&info) }
                .map_err(|e| vkerr(&call(), e))?;
            for s in &stats {
                let (name, value) = (cstr(&s.name), statistic_value(s));
                if verbose {
                    println!("    {name} = {value}    ({})", cstr(&s.description));
                } else {
                    println!("    {name} = {value}");
                }
            }
        }
        Ok(())
    }
}

/// Destroys everything created for one module, also on early return.
struct Objects<'a> {
    dev: &'a ash::Device,
    module: vk::ShaderModule,
    set_layouts: Vec<vk::DescriptorSetLayout>,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
}

impl<'a> Objects<'a> {
    fn new(dev: &'a ash::Device) -> Self {
        Self {
            dev,
            module: vk::ShaderModule::null(),
            set_layouts: Vec::new(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
        }
    }
}

impl Drop for Objects<'_> {
    fn drop(&mut self) {
        // SAFETY: each handle is null (destroying VK_NULL_HANDLE is a no-op) or was created on
        // `dev`, which outlives `self`; none is in use, nothing having been submitted.
        unsafe {
            self.dev.destroy_pipeline(self.pipeline, None);
            self.dev.destroy_pipeline_layout(self.layout, None);
            for &l in &self.set_layouts {
                self.dev.destroy_descriptor_set_layout(l, None);
            }
            self.dev.destroy_shader_module(self.module, None);
        }
    }
}

/// A statistic's value as text, by its format.
fn statistic_value(s: &vk::PipelineExecutableStatisticKHR) -> String {
    use vk::PipelineExecutableStatisticFormatKHR as F;
    // SAFETY: `format` names the union member the driver wrote; unknown formats read nothing.
    unsafe {
        match s.format {
            F::BOOL32 => (s.value.b32 != 0).to_string(),
            F::INT64 => s.value.i64.to_string(),
            F::UINT64 => s.value.u64.to_string(),
            F::FLOAT64 => s.value.f64.to_string(),
            f => format!("<unknown format {}>", f.as_raw()),
        }
    }
}
