//! Progress display: one indicatif bar per running stage on a terminal, plain log lines
//! (at most one every few seconds per stage) when stderr is not one (CI logs). The only
//! file that imports indicatif.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stage::context::LogFile;
use crate::stage::Reporter;

/// The display shared by every stage of a run.
#[derive(Clone)]
pub struct Ui {
    multi: Option<MultiProgress>,
}

impl Ui {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi }
    }

    /// A line above the bars (or plain on stderr).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// A reporter for one stage.
    pub fn stage(&self, name: &str, log: LogFile) -> StageReporter {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(spinner_style());
            b.set_prefix(name.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        StageReporter {
            name: name.to_string(),
            ui: self.clone(),
            bar,
            log,
            plain: Mutex::new(Plain::default()),
        }
    }
}

impl Default for Ui {
    fn default() -> Self {
        Self::new()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed} {msg}").expect("template")
}

fn bar_style(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{prefix:.bold}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
    ))
    .expect("template")
    .progress_chars("=> ")
}

#[derive(Default)]
struct Plain {
    len: Option<u64>,
    pos: u64,
    unit: String,
    msg: String,
    started: Option<Instant>,
    last: Option<Instant>,
}

/// Progress of one running stage.
pub struct StageReporter {
    name: String,
    ui: Ui,
    bar: Option<ProgressBar>,
    log: LogFile,
    plain: Mutex<Plain>,
}

impl StageReporter {
    /// Remove the bar (the stage is done).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// In plain mode, print the position at most every 10 s.
    fn plain_tick(&self, force: bool) {
        if self.bar.is_some() {
            return;
        }
        let mut p = self.plain.lock().expect("progress lock");
        let now = Instant::now();
        if !force && p.last.is_some_and(|l| now - l < Duration::from_secs(10)) {
            return;
        }
        p.last = Some(now);
        let secs = p.started.map(|s| (now - s).as_secs_f64()).unwrap_or(0.0);
        let rate = if secs > 0.0 { p.pos as f64 / secs } else { 0.0 };
        let of = p.len.map(|l| format!("/{l}")).unwrap_or_default();
        let msg = if p.msg.is_empty() {
            String::new()
        } else {
            format!(" {}", p.msg)
        };
        eprintln!(
            "[{}] {}{} {} ({:.1}/s){}",
            self.name, p.pos, of, p.unit, rate, msg
        );
    }
}

impl Reporter for StageReporter {
    fn start(&self, len: Option<u64>, unit: &str) {
        if let Some(b) = &self.bar {
            match len {
                Some(l) => {
                    b.set_length(l);
                    b.set_style(bar_style(unit));
                }
                None => b.set_style(spinner_style()),
            }
            b.set_position(0);
            b.reset_eta();
        }
        let mut p = self.plain.lock().expect("progress lock");
        *p = Plain {
            len,
            unit: unit.to_string(),
            started: Some(Instant::now()),
            ..Plain::default()
        };
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        self.plain.lock().expect("progress lock").pos += n;
        self.plain_tick(false);
    }
    fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
        self.plain.lock().expect("progress lock").pos = pos;
    }
    fn message(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.set_message(msg.clone());
        }
        self.plain.lock().expect("progress lock").msg = msg;
    }
    fn log(&self, line: &str) {
        self.log.line(line);
        self.ui.println(&format!("[{}] {line}", self.name));
    }
}
