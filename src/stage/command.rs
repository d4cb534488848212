//! `command`: run an external tool (an FID evaluator, a conversion script) as a stage.
//!
//! `with: { run: "...", outs: [...], deps: [...] }`. In `run`, `{out}` is this stage's
//! output folder and `{name}` an upstream stage's (one named in `needs:`). The command
//! runs with `sh -c` in the pipeline file's folder; stdout and stderr go to the stage's
//! log file, whose tail is shown when it fails. Every path in `outs` (relative to
//! `{out}`) must exist afterwards. The fingerprint covers the command text and the
//! content of every `deps` file (relative to the pipeline file).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::{parse_params, Outcome, ParamError, Params, PlanContext, StageContext, StageKind};

pub struct Command;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandParams {
    /// The shell command.
    run: String,
    /// Files or folders the command must create, relative to `{out}`.
    #[serde(default)]
    outs: Vec<String>,
    /// Files or folders the command reads, relative to the pipeline file; their content
    /// is part of the fingerprint.
    #[serde(default)]
    deps: Vec<String>,
    /// Extra environment variables (numbers and booleans are written as text).
    #[serde(default)]
    env: BTreeMap<String, serde_yaml::Value>,
}

/// The `{name}` placeholders in a command, in order.
fn placeholders(run: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = run;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i + 1..];
        match tail.find('}') {
            Some(j) => {
                let name = &tail[..j];
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-@=,.".contains(c))
                {
                    out.push(name);
                }
                rest = &tail[j + 1..];
            }
            None => break,
        }
    }
    out
}

impl StageKind for Command {
    fn name(&self) -> &'static str {
        "command"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "run an external command; {out} and {stage} expand to output folders"
    }
    fn check(&self, with: &Params) -> Result<(), ParamError> {
        let p: CommandParams = parse_params(with)?;
        if p.run.trim().is_empty() {
            return Err(
                ParamError::new("run", "`run` is empty").with_hint("give the shell command to run")
            );
        }
        for o in &p.outs {
            if Path::new(o).is_absolute() || o.split('/').any(|c| c == "..") {
                return Err(ParamError::new(
                    "outs",
                    format!("`{o}` must be a path inside {{out}}"),
                )
                .with_hint("write outs relative to the stage's output folder, e.g. `fid.txt`"));
            }
        }
        Ok(())
    }
    fn check_inputs(&self, with: &Params, inputs: &[(&str, &str)]) -> Result<(), ParamError> {
        let p: CommandParams = parse_params(with)?;
        for name in placeholders(&p.run) {
            if name == "out" {
                continue;
            }
            let by_instance = inputs.iter().filter(|(i, _)| *i == name).count();
            let by_stage = inputs.iter().filter(|(_, s)| *s == name).count();
            if by_instance == 1 || by_stage == 1 {
                continue;
            }
            if by_stage > 1 {
                return Err(ParamError::new(
                    "run",
                    format!("`{{{name}}}` is a matrix stage with {by_stage} instances"),
                )
                .with_hint("name one instance, e.g. `{stage@key=value}`"));
            }
            let names: Vec<&str> = inputs.iter().map(|(i, _)| *i).collect();
            let hint = match crate::util::did_you_mean(name, &names) {
                Some(s) => format!("did you mean `{{{s}}}`?"),
                None => "placeholders are `{out}` and the stages listed in `needs:`".to_string(),
            };
            return Err(ParamError::new(
                "run",
                format!("`{{{name}}}` is not a stage this one needs"),
            )
            .with_hint(hint));
        }
        Ok(())
    }
    fn fingerprint_extra(
        &self,
        cx: &PlanContext<'_>,
        with: &Params,
    ) -> anyhow::Result<serde_json::Value> {
        let p: CommandParams = parse_params(with)?;
        let mut deps = serde_json::Map::new();
        for d in &p.deps {
            let path = cx.pipeline_dir.join(d);
            let digest = crate::base::digest::digest_path(&path).with_context(|| {
                format!(
                    "`deps` entry `{d}` ({}) cannot be read; create it or remove it from `deps`",
                    crate::util::display_path(&path)
                )
            })?;
            deps.insert(d.clone(), serde_json::Value::String(digest));
        }
        Ok(serde_json::json!({ "deps": deps }))
    }
    fn run(&self, cx: &StageContext) -> anyhow::Result<Outcome> {
        let p: CommandParams = parse_params(&cx.params)?;
        let mut cmd_text = p.run.replace("{out}", &cx.out.to_string_lossy());
        for name in placeholders(&p.run) {
            if name == "out" {
                continue;
            }
            let input = cx
                .inputs
                .iter()
                .find(|i| i.name == name)
                .or_else(|| {
                    cx.inputs
                        .iter()
                        .find(|i| i.name.split('@').next() == Some(name))
                })
                .with_context(|| format!("`{{{name}}}` is not a stage this one needs"))?;
            cmd_text = cmd_text.replace(&format!("{{{name}}}"), &input.dir.to_string_lossy());
        }
        let start_offset = std::fs::metadata(cx.log.path())
            .map(|m| m.len())
            .unwrap_or(0);
        cx.log.line(&format!("$ {cmd_text}"));
        cx.progress.message("running command");
        let stdout = cx.log.try_clone_file().context("opening the stage log")?;
        let stderr = cx.log.try_clone_file().context("opening the stage log")?;
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&cmd_text)
            .current_dir(&cx.pipeline_dir)
            .envs(
                p.env
                    .iter()
                    .map(|(k, v)| (k, crate::spec::scalar_string(v))),
            )
            .env("RELAY_OUT", &cx.out)
            .env("PATH", path_with_relay())
            .env("RELAY_STAGE", &cx.name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        kill_with_parent(&mut command);
        let mut child = command.spawn().context("starting `sh -c`")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if cx.cancel.is_cancelled() {
                terminate(&mut child);
                return Err(super::Cancelled.into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let tail = log_tail(cx.log.path(), start_offset, 20);
            let code = status
                .code()
                .map(|c| format!("exit status {c}"))
                .unwrap_or_else(|| "a signal".to_string());
            bail!(
                "the command ended with {code}\n--- last lines of {} ---\n{tail}",
                crate::util::display_path(cx.log.path())
            );
        }
        for o in &p.outs {
            if !cx.out.join(o).exists() {
                bail!(
                    "the command succeeded but did not create `{o}` (declared in `outs`); write it into {{out}}/{o}"
                );
            }
        }
        Ok(Outcome::default())
    }
}

/// `PATH` with the folder of the running `relay` binary first, so commands can call `relay`.
fn path_with_relay() -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .collect();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Run the child in its own process group, killed if relay dies (even by SIGKILL).
fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// SIGTERM the child's process group, then SIGKILL after a grace period.
fn terminate(child: &mut std::process::Child) {
    let pgid = child.id() as i32;
    // SAFETY: plain syscalls on a process group we created.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    for _ in 0..40 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// The last `n` lines of a log, from `offset` on.
pub fn log_tail(path: &Path, offset: u64, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders() {
        assert_eq!(
            placeholders("relay export {samples} --npz {out}/x.npz && awk '{print $1}' f"),
            vec!["samples", "out"]
        );
    }
}
