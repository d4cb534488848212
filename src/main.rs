//! The `relay` binary: parse the command line, run, print the error chain, pick the exit code.

use clap::Parser;

fn main() {
    let cli = relay::cli::Cli::parse();
    let code = match relay::cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(spec) = err.downcast_ref::<relay::spec::SpecErrors>() {
                for e in &spec.0 {
                    eprintln!("error: {e}");
                }
                if spec.0.len() > 1 {
                    eprintln!("{} problems found", spec.0.len());
                }
                2
            } else {
                eprintln!("error: {err}");
                for cause in err.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
                if err.downcast_ref::<relay::cli::BadInput>().is_some() {
                    2
                } else {
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
