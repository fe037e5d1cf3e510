//! Fuzzes every parser for a chosen time: `cargo bench --bench fuzz -- SECONDS [TARGET...]`
//! (default 60 s each, every target). Prints cases run, inputs accepted and panics per
//! target, writes each panicking input to `target/fuzz-crashes/<target>-<n>.bin`, and
//! exits non-zero when any target panicked. `-- replay TARGET FILE` reruns one input
//! with its panic shown.

#[path = "../tests/fuzzing/mod.rs"]
mod fuzzing;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // `-- replay TARGET FILE`: run one input with the panic message and backtrace shown.
    if let [cmd, name, file] = args.as_slice()
        && cmd == "replay"
    {
        let t = fuzzing::targets().into_iter().find(|t| t.name == name);
        let input = std::fs::read(file).expect("the input file");
        let accepted = (t.expect("a target name").run)(&input);
        println!("accepted: {accepted}");
        return;
    }
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(60.0);
    let only: Vec<&String> = args.iter().skip(1).collect();
    let dir = std::path::Path::new("target/fuzz-crashes");
    let mut crashed = false;
    println!("| parser | seconds | cases | cases/s | accepted | panics |");
    println!("|---|---|---|---|---|---|");
    for t in fuzzing::targets() {
        if !only.is_empty() && !only.iter().any(|o| *o == t.name) {
            continue;
        }
        let start = std::time::Instant::now();
        let seed = 0xf022 ^ start.elapsed().as_nanos() as u64;
        let r = fuzzing::fuzz(&t, u64::MAX, Duration::from_secs_f64(secs), seed);
        let s = start.elapsed().as_secs_f64();
        println!(
            "| {} | {s:.0} | {} | {:.0} | {} | {} |",
            t.name,
            r.cases,
            r.cases as f64 / s,
            r.accepted,
            r.crashes.len()
        );
        for (i, (msg, input)) in r.crashes.iter().enumerate() {
            crashed = true;
            let _ = std::fs::create_dir_all(dir);
            let p = dir.join(format!("{}-{i}.bin", t.name));
            let _ = std::fs::write(&p, input);
            println!("  panic: {msg} (input in {})", p.display());
        }
    }
    if crashed {
        std::process::exit(1);
    }
}
