//! Checks on numeric settings, shared by every settings struct (run, rule, optimizer).
//!
//! Settings arrive as override layers (command-line flags, a config file, a suite or a
//! registry row) that are merged as JSON. JSON has no NaN or infinity, so a layer is
//! scanned for non-finite numbers *before* it becomes JSON ([`toml_layer`],
//! [`serialize_layer`]); the merged values are then range-checked by each struct's
//! `validate`, with errors that name the setting and the value.

use serde::Serialize;

use crate::error::{Error, Result};

/// One setting of a settings struct, as the CLI and `rules show` describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its key in config files (`pc_steps`); the flag is `--pc-steps`.
    pub key: &'static str,
    /// Its Rust type as written (`usize`, `Option<f64>`, `String`).
    pub ty: &'static str,
    /// Its doc comment, lines joined.
    pub doc: String,
    /// Its default value.
    pub default: serde_json::Value,
}

impl Field {
    /// The command-line flag.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }
}

/// A settings struct that lists its settings: the single place each is declared.
pub trait Described {
    /// Every setting, in declaration order.
    fn fields() -> Vec<Field>;
}

/// Declares a settings struct: each field with its doc comment, type and default, once.
/// Generates the struct, its `Default` and [`Described`] (keys, types, docs, defaults),
/// from which the CLI flags and `rules show` / `optimizers show` are derived.
///
/// ```
/// futureprop::settings_struct! {
///     /// Example settings.
///     #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
///     pub struct Example {
///         /// Inference steps.
///         pub steps: usize = 20,
///     }
/// }
/// use futureprop::settings::Described;
/// assert_eq!(Example::default().steps, 20);
/// assert_eq!(Example::fields()[0].doc, "Inference steps.");
/// ```
#[macro_export]
macro_rules! settings_struct {
    (
        $(#[$smeta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $(#[serde(rename = $rename:literal)])?
                pub $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[$smeta])*
        pub struct $name {
            $(
                $(#[doc = $doc])+
                $(#[serde(rename = $rename)])?
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $crate::settings::Described for $name {
            fn fields() -> Vec<$crate::settings::Field> {
                let d = Self::default();
                vec![$(
                    $crate::settings::Field {
                        key: { let _k = stringify!($field); $( let _k = $rename; )? _k },
                        ty: stringify!($ty),
                        doc: [$($doc),+].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
                        default: serde_json::to_value(&d.$field).unwrap_or_default(),
                    },
                )*]
            }
        }
    };
}

/// The values a real-valued setting may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Any finite number.
    Finite,
    /// Finite and > 0.
    Positive,
    /// Finite and ≥ 0.
    NonNegative,
    /// In [0, 1) (decay rates, momenta).
    Fraction,
    /// In [0, 1].
    Unit,
    /// Finite and ≠ 0.
    NonZero,
}

impl Range {
    fn holds(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Range::Finite => true,
                Range::Positive => v > 0.0,
                Range::NonNegative => v >= 0.0,
                Range::Fraction => (0.0..1.0).contains(&v),
                Range::Unit => (0.0..=1.0).contains(&v),
                Range::NonZero => v != 0.0,
            }
    }

    fn describe(self) -> &'static str {
        match self {
            Range::Finite => "a finite number",
            Range::Positive => "a finite number > 0",
            Range::NonNegative => "a finite number >= 0",
            Range::Fraction => "in [0, 1)",
            Range::Unit => "in [0, 1]",
            Range::NonZero => "a finite number other than 0",
        }
    }
}

/// How a setting is named in errors: its config key, and its flag when they differ.
fn label(name: &str) -> String {
    if name.contains('_') {
        format!("{name} (--{})", name.replace('_', "-"))
    } else {
        name.to_string()
    }
}

/// `name = v` must lie in `range`.
pub fn real(name: &str, v: f64, range: Range) -> Result<()> {
    if range.holds(v) {
        Ok(())
    } else {
        Err(Error::config(
            label(name),
            format!("{v} (must be {})", range.describe()),
        ))
    }
}

/// An optional real setting: checked when set.
pub fn real_opt(name: &str, v: Option<f64>, range: Range) -> Result<()> {
    v.map_or(Ok(()), |v| real(name, v, range))
}

/// `name = v` must be at least `min`.
pub fn at_least(name: &str, v: u64, min: u64) -> Result<()> {
    if v >= min {
        Ok(())
    } else {
        Err(Error::config(
            label(name),
            format!("{v} (must be at least {min})"),
        ))
    }
}

/// An optional count: checked when set.
pub fn at_least_opt(name: &str, v: Option<u64>, min: u64) -> Result<()> {
    v.map_or(Ok(()), |v| at_least(name, v, min))
}

/// The first non-finite float in a TOML value, as (dotted key, value).
fn non_finite(prefix: &str, v: &toml::Value) -> Option<(String, f64)> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some((prefix.to_string(), *f)),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            non_finite(&key, v)
        }),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(&format!("{prefix}[{i}]"), v)),
        _ => None,
    }
}

/// A TOML table as a JSON override layer; `source` (a file, "flags", a suite arm) is
/// named when a value is NaN or infinite.
pub fn toml_layer(source: &str, table: &toml::Table) -> Result<serde_json::Value> {
    if let Some((k, v)) = non_finite("", &toml::Value::Table(table.clone())) {
        return Err(Error::config(
            label(&k),
            format!("{v} in {source} (must be a finite number)"),
        ));
    }
    serde_json::to_value(table).map_err(|e| Error::config(source, e.to_string()))
}

/// Any serialisable set of overrides (the command-line flags) as a JSON layer, refusing
/// NaN and infinite numbers by name.
pub fn serialize_layer<T: Serialize>(source: &str, v: &T) -> Result<serde_json::Value> {
    let t = toml::Table::try_from(v).map_err(|e| Error::config(source, e.to_string()))?;
    toml_layer(source, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_accept_and_refuse_by_name() {
        assert!(real("lr", 1e-3, Range::Positive).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = real("lr", bad, Range::Positive).unwrap_err().to_string();
            assert!(e.contains("lr") && e.contains("> 0"), "{e}");
        }
        assert!(real("momentum", 0.0, Range::Fraction).is_ok());
        assert!(real("momentum", 1.0, Range::Fraction).is_err());
        assert!(real("beta", 1.0, Range::Unit).is_ok());
        assert!(real("x", -3.0, Range::NonZero).is_ok());
        assert!(real("x", 0.0, Range::NonZero).is_err());
        assert!(
            at_least("epochs", 0, 1)
                .unwrap_err()
                .to_string()
                .contains("epochs")
        );
    }

    #[test]
    fn non_finite_numbers_in_a_layer_are_named() {
        let t: toml::Table = toml::from_str("lr = nan\n[x]\ny = [1.0, -inf]").unwrap();
        let e = toml_layer("run.toml", &t).unwrap_err().to_string();
        assert!(e.contains("lr") && e.contains("run.toml"), "{e}");
        let t: toml::Table = toml::from_str("lr = 0.1\n[x]\ny = [1.0, -inf]").unwrap();
        let e = toml_layer("run.toml", &t).unwrap_err().to_string();
        assert!(e.contains("x.y[1]") && e.contains("-inf"), "{e}");
        #[derive(Serialize)]
        struct Flags {
            lr: Option<f64>,
            epochs: Option<usize>,
        }
        let ok = serialize_layer(
            "flags",
            &Flags {
                lr: Some(0.5),
                epochs: None,
            },
        )
        .unwrap();
        assert_eq!(ok["lr"], 0.5);
        let e = serialize_layer(
            "flags",
            &Flags {
                lr: Some(f64::INFINITY),
                epochs: Some(1),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lr") && e.contains("inf"), "{e}");
    }
}
