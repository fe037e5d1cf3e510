//! Command-line flags shared by the benchmark binaries.

/// The value after `name`, or `default`.
pub fn arg_str(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// The number after `name`, or `default` (also when it does not parse).
#[allow(dead_code)] // not every bench binary takes a number
pub fn arg(args: &[String], name: &str, default: usize) -> usize {
    arg_str(args, name, "").parse().unwrap_or(default)
}
