//! Checks on numeric settings, shared by every settings struct (run, rule, optimizer).
//!
//! Settings arrive as override layers (command-line flags, a config file, a suite or a
//! registry row) that are merged as JSON. JSON has no NaN or infinity, so a layer is
//! scanned for non-finite numbers *before* it becomes JSON ([`toml_layer`],
//! [`serialize_layer`]); the merged values are then range-checked by each struct's
//! `validate`, with errors that name the setting and the value.

use serde::Serialize;

use crate::error::{Error, Result};

/// A technique's table of settings (JSON object).
pub type Table = serde_json::Map<String, serde_json::Value>;

/// A chosen technique in a run's configuration: its name and its own settings, a tagged
/// table (`[rule]` with `name = "pc"` and `steps = 8`). Reads a bare name too
/// (`rule = "pc"`: every setting at its default).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(from = "ChoiceRepr")]
pub struct Choice {
    /// The technique's name.
    pub name: String,
    /// Its settings; after a configuration is resolved, every one of them.
    #[serde(flatten)]
    pub settings: Table,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ChoiceRepr {
    Name(String),
    Table {
        name: String,
        #[serde(flatten)]
        settings: Table,
    },
}

impl From<ChoiceRepr> for Choice {
    fn from(r: ChoiceRepr) -> Choice {
        match r {
            ChoiceRepr::Name(name) => Choice::named(&name),
            ChoiceRepr::Table { name, settings } => Choice { name, settings },
        }
    }
}

impl From<&str> for Choice {
    fn from(name: &str) -> Choice {
        Choice::named(name)
    }
}

impl Choice {
    /// `name` with every setting at its default.
    pub fn named(name: &str) -> Choice {
        Choice {
            name: name.to_string(),
            settings: Table::new(),
        }
    }
}

/// One setting of a settings struct, as the CLI and `rules show` describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its key in its technique's table (`steps` in `[rule]` when the rule is `pc`).
    pub key: &'static str,
    /// Its flat key (`pc_steps`): the key in configs written before techniques had
    /// tables, still read, and the flag (`--pc-steps`).
    pub legacy: String,
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
        format!("--{}", self.legacy.replace('_', "-"))
    }
}

/// A settings struct that lists its settings: the single place each is declared.
pub trait Described {
    /// Every setting, in declaration order.
    fn fields() -> Vec<Field>;
}

/// A technique's settings struct: described, (de)serialisable, range-checked.
pub trait Settings: Described + Default + Serialize + serde::de::DeserializeOwned {
    /// Every numeric setting in its range; the error names the setting and the value.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// The settings struct `S` read from a technique's table (keys it does not have are
/// left to the other structs of the technique; [`check_keys`] refuses strangers) and
/// range-checked.
pub fn parse<S: Settings>(what: &str, table: &Table) -> Result<S> {
    let keys: Vec<&str> = S::fields().iter().map(|f| f.key).collect();
    let own: serde_json::Map<_, _> = table
        .iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let s: S = serde_json::from_value(serde_json::Value::Object(own))
        .map_err(|e| Error::config(what, e.to_string()))?;
    s.validate()?;
    Ok(s)
}

/// Refuses a key of `table` that is not one of `fields`, naming the closest and the
/// valid ones.
pub fn check_keys(what: &str, table: &Table, fields: &[Field]) -> Result<()> {
    let known: Vec<&str> = fields.iter().map(|f| f.key).collect();
    for k in table.keys() {
        if !known.contains(&k.as_str()) {
            let hint = crate::error::closest(k, &known)
                .map(|c| format!(" (did you mean '{c}'?)"))
                .unwrap_or_default();
            let valid = if known.is_empty() {
                "it has no settings".to_string()
            } else {
                format!("its settings: {}", known.join(", "))
            };
            return Err(Error::config(
                what,
                format!("unknown setting '{k}'{hint}; {valid}"),
            ));
        }
    }
    Ok(())
}

/// `table` with every setting of `fields` that it lacks at its default.
pub fn resolved(table: &Table, fields: &[Field]) -> Table {
    let mut out = serde_json::Map::new();
    for f in fields {
        let v = table
            .get(f.key)
            .cloned()
            .unwrap_or_else(|| f.default.clone());
        out.insert(f.key.to_string(), v);
    }
    out
}

/// A `KEY=VALUE` setting from the command line as a JSON value: a TOML scalar when it
/// reads as one (`8`, `1e-3`, `true`), else a string (`standard`).
pub fn parse_assignment(s: &str) -> Result<(String, serde_json::Value)> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(Error::config("setting", format!("'{s}' is not KEY=VALUE")));
    };
    let (k, v) = (k.trim().replace('-', "_"), v.trim());
    if k.is_empty() {
        return Err(Error::config("setting", format!("'{s}' has no key")));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(t) => t.get("v").cloned().unwrap_or(toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    };
    if let toml::Value::Float(f) = value
        && !f.is_finite()
    {
        return Err(Error::config(
            label(&k),
            format!("{f} in the command line (must be a finite number)"),
        ));
    }
    let json = serde_json::to_value(value).map_err(|e| Error::config(&k, e.to_string()))?;
    Ok((k, json))
}

/// Declares a settings struct: each field with its doc comment, type and default, once.
/// Generates the struct, its `Default` and [`Described`] (keys, types, docs, defaults),
/// from which the CLI flags and `rules show` / `optimizers show` are derived. An
/// optional `: "prefix"` after the name gives the fields' flat keys and flags
/// (`prefix_field`, `--prefix-field`); `#[legacy = "key"]` on a field names another.
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
        pub struct $name:ident $(: $prefix:literal)? {
            $(
                $(#[doc = $doc:literal])+
                $(#[legacy = $legacy:literal])?
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
                let prefix: Option<&str> = None $( .or(Some($prefix)) )?;
                vec![$(
                    $crate::settings::Field {
                        key: { let _k = stringify!($field); $( let _k = $rename; )? _k },
                        legacy: {
                            let _k = { let _k = stringify!($field); $( let _k = $rename; )? _k };
                            let _l = match prefix {
                                Some(p) => format!("{p}_{_k}"),
                                None => _k.to_string(),
                            };
                            $( let _l = $legacy.to_string(); )?
                            _l
                        },
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
