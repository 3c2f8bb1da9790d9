//! Checks against a real NVIDIA GPU through NVML. Built only with
//! `--features gpu-tests`, on a machine with the driver and at least one GPU:
//! `cargo test -p rigmesh-node --features gpu-tests --test nvml_real`.

#![cfg(feature = "gpu-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigmesh_node::telemetry::{
    hardware_fingerprint, open_source, GpuHealth, GpuSource, GpuSourceConfig, NvmlSource,
    SourceKind,
};

#[test]
fn nvml_sees_at_least_one_described_gpu() {
    let mut source = NvmlSource::open().expect("NVML must open on a GPU machine");
    assert_eq!(source.kind(), SourceKind::Nvml);
    let devices = source.devices().unwrap();
    assert!(!devices.is_empty(), "NVML lists no GPU");
    for d in &devices {
        assert!(!d.name.trim().is_empty(), "GPU {} has no name", d.index);
        assert!(
            d.uuid.starts_with("GPU-"),
            "GPU {} uuid {:?}",
            d.index,
            d.uuid
        );
        assert!(d.memory_total_mib > 0, "GPU {} has no memory", d.index);
        assert!(!d.pci_bus_id.is_empty(), "GPU {} has no PCI id", d.index);
        assert!(d.driver_version.is_some(), "no driver version");
    }
    assert_ne!(hardware_fingerprint(&devices), [0; 32]);
}

#[test]
fn a_sample_per_gpu_with_memory_within_the_total() {
    let mut source = NvmlSource::open().unwrap();
    let devices = source.devices().unwrap();
    let samples = source.sample().unwrap();
    assert_eq!(samples.len(), devices.len());
    for (device, sample) in devices.iter().zip(&samples) {
        assert_eq!(sample.uuid, device.uuid);
        assert_ne!(sample.health, GpuHealth::Lost, "GPU {} lost", device.index);
        let used = sample
            .memory_used_mib
            .expect("memory use is always reported");
        assert!(
            used <= device.memory_total_mib,
            "GPU {}: {used} MiB used of {} MiB",
            device.index,
            device.memory_total_mib
        );
        if let Some(util) = sample.util_bp {
            assert!(util <= 10_000);
        }
    }
}

#[test]
fn auto_picks_nvml_on_a_gpu_machine() {
    let (source, notice) = open_source(&GpuSourceConfig::Auto).unwrap();
    assert_eq!(source.kind(), SourceKind::Nvml);
    assert_eq!(notice, None);
}
