//! `evidence-gen --out DIR [--advisories N | --bytes N] [--seed S] [--findings N] [--vex N]`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = None;
    let mut o = evidence_gen::GenOptions::default();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        let num = || val.parse::<u64>();
        let ok = match args[i].as_str() {
            "--out" => {
                out = Some(std::path::PathBuf::from(&val));
                true
            }
            "--advisories" => num().map(|n| o.advisories = n).is_ok(),
            "--bytes" => num()
                .map(|n| o = evidence_gen::GenOptions { seed: o.seed, ..evidence_gen::GenOptions::with_volume(n) })
                .is_ok(),
            "--seed" => num().map(|n| o.seed = n).is_ok(),
            "--findings" => num().map(|n| o.findings = n).is_ok(),
            "--vex" => num().map(|n| o.vex_documents = n).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("usage: evidence-gen --out DIR [--advisories N | --bytes N] [--seed S] [--findings N] [--vex N]");
            return ExitCode::from(2);
        }
        i += 2;
    }
    let Some(out) = out else {
        eprintln!("usage: evidence-gen --out DIR [--advisories N | --bytes N] [--seed S] [--findings N] [--vex N]");
        return ExitCode::from(2);
    };
    match evidence_gen::generate(&out, &o) {
        Ok(s) => {
            println!(
                "{} advisories, {} VEX statements, {} findings, {} bytes",
                s.advisories, s.vex_statements, s.findings, s.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
