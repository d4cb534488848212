//! The small subcommands: `validate`, `graph`, `export`, `model info`, `bench`, `kinds`.

use super::args::{BenchCommand, ExportArgs, GraphArgs, GraphFormat, ModelCommand, PipelineArgs};
use super::load_plan;

/// `relay validate`: parse and check only.
pub fn validate(a: &PipelineArgs) -> anyhow::Result<i32> {
    let plan = load_plan(a)?;
    println!(
        "{}: ok ({} stages, {} instances)",
        crate::util::display_path(&plan.spec.file),
        plan.spec.stages.len(),
        plan.nodes.len()
    );
    Ok(0)
}

/// `relay graph`: the DAG as DOT or Mermaid.
pub fn graph(a: &GraphArgs) -> anyhow::Result<i32> {
    let plan = load_plan(&a.pipeline)?;
    print!(
        "{}",
        match a.format {
            GraphFormat::Dot => plan.to_dot(),
            GraphFormat::Mermaid => plan.to_mermaid(),
        }
    );
    Ok(0)
}

/// `relay export`: a sample stage's images for standard evaluators.
pub fn export(a: &ExportArgs) -> anyhow::Result<i32> {
    if let Some(npz) = &a.npz {
        let n = crate::sample::export::export_npz(&a.samples, npz)?;
        println!("wrote {} ({n} images)", crate::util::display_path(npz));
    }
    if let Some(dir) = &a.png_dir {
        let n = crate::sample::export::export_png_dir(&a.samples, dir)?;
        println!("wrote {} ({n} images)", crate::util::display_path(dir));
    }
    Ok(0)
}

/// `relay model info`.
pub fn model(m: ModelCommand) -> anyhow::Result<i32> {
    match m {
        ModelCommand::Info { name } => print!("{}", crate::model::report(&name)?),
    }
    Ok(0)
}

/// `relay bench ...`: each prints a table.
pub fn bench(b: BenchCommand) -> anyhow::Result<i32> {
    match b {
        BenchCommand::Prep {
            count,
            dir,
            threads,
        } => {
            let b = crate::data::bench::prep(&dir, count, threads, &crate::data::Quiet)?;
            println!("| images | threads | shard s | downsample s | total s | images/s |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
                b.images,
                b.threads,
                b.shard_seconds,
                b.downsample_seconds,
                b.seconds,
                b.images_per_sec
            );
            println!("relay_images_per_sec={:.2}", b.images_per_sec);
        }
        BenchCommand::Model {
            config,
            batch,
            steps,
            resolution,
            device,
            bf16,
        } => {
            let b = crate::bench::model(&config, batch, steps, resolution, &device, bf16)?;
            println!("{}", b.table());
        }
        BenchCommand::Allreduce { millions, reps } => {
            println!("{}", crate::bench::allreduce(millions, reps)?);
        }
    }
    Ok(0)
}

/// `relay kinds`.
pub fn kinds() -> anyhow::Result<i32> {
    for k in crate::stage::builtin_kinds() {
        println!("{:<18} {}", k.name(), k.summary());
    }
    Ok(0)
}
