//! Which devices a stage holds when the run hands devices out (`--devices`): the need the
//! drain loop enqueues it with, what a dry run says, and the check, before anything runs,
//! that no selected stage wants more devices than the run has.

use super::queue::Need;
use super::RunOptions;
use crate::device::DeviceToken;
use crate::plan::Plan;
use crate::spec::{SpecError, SpecErrors};

/// Refuse a run in which a selected stage wants more devices than there are (bad input:
/// it could never start).
pub(super) fn check(plan: &Plan, opts: &RunOptions, selected: &[bool]) -> Result<(), SpecErrors> {
    let mut short = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        let need = stage_need(node, opts);
        if selected[i] && !opts.devices.is_empty() && need.devices > opts.devices.len() {
            short.push(
            SpecError::new(
            &plan.spec.file,
            format!(
                "wants {} devices (`resources.gpus: {}`) but this run has {} ({})",
                need.devices,
                need.devices,
                opts.devices.len(),
                device_names(&opts.devices).join(", ")
            ),
            )
            .stage(&node.name)
            .hint("give more with --devices (e.g. --devices 0,1,2,3 or cpu*4), or lower `resources.gpus`"),
        );
        }
    }
    if !short.is_empty() {
        return Err(SpecErrors(short));
    }
    Ok(())
}

/// What a stage holds while it runs when the run hands out devices: nothing for CPU
/// stages; `resources.gpus` (default 1) for a GPU stage; for a stage that fans out over
/// devices (sampling), one to start and every free one (up to `resources.gpus`) it finds.
/// A `relay exec --shard` worker or a launched rank is one process on one device.
pub(super) fn stage_need(node: &crate::plan::Node, opts: &RunOptions) -> Need {
    let r = node.kind.resources(&node.params);
    if !r.gpu || opts.devices.is_empty() {
        return Need::exactly(0);
    }
    let gpus = node.resources.gpus.map(|g| g as usize);
    if opts.shard.is_some() || opts.world.size > 1 {
        Need::exactly(1)
    } else if r.fan_out {
        Need::up_to(1, gpus.unwrap_or(usize::MAX))
    } else {
        Need::exactly(gpus.unwrap_or(1).max(1))
    }
}

pub(super) fn need_words(need: Need) -> Vec<String> {
    match need {
        Need { devices: 0, .. } => vec![],
        Need { devices, most } if most > devices => vec!["every free device".into()],
        Need { devices: 1, .. } => vec!["1 device".into()],
        Need { devices, .. } => vec![format!("{devices} devices")],
    }
}

pub(super) fn device_names(d: &[DeviceToken]) -> Vec<String> {
    d.iter().map(|t| t.name.clone()).collect()
}
