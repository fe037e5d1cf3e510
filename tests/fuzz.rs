//! Every parser of user input survives 5,000 mutated inputs without a panic (see
//! `fuzzing/mod.rs`; `cargo bench --bench fuzz -- SECONDS` runs each for longer).

mod fuzzing;

use std::time::Duration;

#[test]
fn no_parser_panics_on_five_thousand_mutated_inputs() {
    for t in fuzzing::targets() {
        // The corpus itself parses: mutations start from valid inputs.
        for (i, c) in t.corpus.iter().enumerate() {
            assert!((t.run)(c), "{} corpus entry {i} is not accepted", t.name);
        }
        let r = fuzzing::fuzz(&t, 5000, Duration::from_secs(120), 0x5eed);
        assert_eq!(r.cases, 5000, "{}: ran {} cases", t.name, r.cases);
        assert!(
            r.crashes.is_empty(),
            "{}: {} panics, e.g. {:?} on {:?}",
            t.name,
            r.crashes.len(),
            r.crashes[0].0,
            String::from_utf8_lossy(&r.crashes[0].1)
        );
        eprintln!("{}: {} cases, {} accepted", t.name, r.cases, r.accepted);
    }
}
