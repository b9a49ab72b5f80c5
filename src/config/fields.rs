//! Reading typed values out of the merged, untyped configuration tree.
//!
//! Serde stops at the first error; an operator fixing a config file wants every problem at once. So the
//! merged tree is walked by hand: each reader returns `None` after recording a [`Problem`] that names the
//! key path and the offending value, and parsing carries on with the next key.

use std::time::Duration;

use serde_json::{Map, Value};

use super::Problem;

/// Collects every problem found while reading one configuration.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records a problem about the value found at `path`, quoting the value.
    pub(super) fn bad_value(&mut self, path: &str, value: &Value, message: impl AsRef<str>) {
        self.push(path, format!("{} {}", show(value), message.as_ref()));
    }

    pub(super) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// A value as it is quoted in messages: strings in quotes, everything else as JSON.
pub(super) fn show(value: &Value) -> String {
    match value {
        Value::Object(_) => "a table".to_owned(),
        other => other.to_string(),
    }
}

/// Joins a key onto a dotted path.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// One table of the tree with its path, which knows which keys it may hold.
pub(super) struct Table<'a> {
    path: String,
    entries: &'a Map<String, Value>,
}

impl<'a> Table<'a> {
    /// The table at `path`, or a problem when the value there is not a table.
    pub(super) fn new(path: String, value: &'a Value, problems: &mut Problems) -> Option<Self> {
        match value {
            Value::Object(entries) => Some(Self { path, entries }),
            other => {
                problems.bad_value(&path, other, "is not a table");
                None
            }
        }
    }

    /// The dotted path of this table.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The path of one key of this table.
    pub(super) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Records an "unknown key" problem for every key not in `allowed`.
    pub(super) fn deny_unknown(&self, allowed: &[&str], problems: &mut Problems) {
        for key in self.entries.keys() {
            if !allowed.contains(&key.as_str()) {
                problems.push(
                    self.key_path(key),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    /// Whether the table sets `key` at all.
    pub(super) fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The entries in declaration order.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.entries.iter()
    }

    /// The sub-table at `key`, if set.
    pub(super) fn table(&self, key: &str, problems: &mut Problems) -> Option<Table<'a>> {
        let value = self.entries.get(key)?;
        Table::new(self.key_path(key), value, problems)
    }

    /// Reads `key` with `read`, which records its own problems.
    fn read<T>(
        &self,
        key: &str,
        problems: &mut Problems,
        read: impl FnOnce(&str, &Value, &mut Problems) -> Option<T>,
    ) -> Option<T> {
        let value = self.entries.get(key)?;
        read(&self.key_path(key), value, problems)
    }

    pub(super) fn string(&self, key: &str, problems: &mut Problems) -> Option<String> {
        self.read(key, problems, string)
    }

    pub(super) fn boolean(&self, key: &str, problems: &mut Problems) -> Option<bool> {
        self.read(key, problems, boolean)
    }

    pub(super) fn count(&self, key: &str, problems: &mut Problems) -> Option<u32> {
        self.read(key, problems, count)
    }

    pub(super) fn number(&self, key: &str, problems: &mut Problems) -> Option<f64> {
        self.read(key, problems, number)
    }

    pub(super) fn duration(&self, key: &str, problems: &mut Problems) -> Option<Duration> {
        self.read(key, problems, duration)
    }

    pub(super) fn string_list(&self, key: &str, problems: &mut Problems) -> Option<Vec<String>> {
        self.read(key, problems, string_list)
    }

    /// A list of strings that cannot contain commas (host names, origins): a list, or one comma-separated
    /// string, which is how an environment variable can set it.
    pub(super) fn comma_list(&self, key: &str, problems: &mut Problems) -> Option<Vec<String>> {
        match self.entries.get(key)? {
            Value::String(text) => Some(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => self.string_list(key, problems),
        }
    }
}

/// A string. Environment variables always arrive as strings, so typed readers below accept strings too.
fn string(path: &str, value: &Value, problems: &mut Problems) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        other => {
            problems.bad_value(path, other, "is not a string");
            None
        }
    }
}

fn boolean(path: &str, value: &Value, problems: &mut Problems) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
        other => {
            problems.bad_value(path, other, "is not a boolean (true or false)");
            None
        }
    }
}

fn count(path: &str, value: &Value, problems: &mut Problems) -> Option<u32> {
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed.and_then(|n| u32::try_from(n).ok()) {
        Some(n) => Some(n),
        None => {
            problems.bad_value(path, value, "is not a whole number from 0 to 4294967295");
            None
        }
    }
}

fn number(path: &str, value: &Value, problems: &mut Problems) -> Option<f64> {
    let parsed = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    match parsed.filter(|n| n.is_finite()) {
        Some(n) => Some(n),
        None => {
            problems.bad_value(path, value, "is not a number");
            None
        }
    }
}

/// A humantime duration string such as `"30s"`, `"1m 30s"` or `"250ms"`.
/// The longest duration any setting accepts: longer ones make no sense and overflow timers.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration(path: &str, value: &Value, problems: &mut Problems) -> Option<Duration> {
    let Value::String(text) = value else {
        problems.bad_value(
            path,
            value,
            "is not a duration (write it as a string such as \"30s\")",
        );
        return None;
    };
    match humantime::parse_duration(text) {
        Ok(parsed) if parsed > MAX_DURATION => {
            problems.bad_value(
                path,
                value,
                "is longer than the longest duration accepted, 365 days",
            );
            None
        }
        Ok(parsed) => Some(parsed),
        Err(error) => {
            problems.bad_value(path, value, format!("is not a duration: {error}"));
            None
        }
    }
}

/// A list of strings; a bare string is refused rather than guessed into a one-element list.
fn string_list(path: &str, value: &Value, problems: &mut Problems) -> Option<Vec<String>> {
    let Value::Array(items) = value else {
        problems.bad_value(path, value, "is not a list of strings");
        return None;
    };
    let mut strings = Vec::with_capacity(items.len());
    let mut all_good = true;
    for (position, item) in items.iter().enumerate() {
        match item {
            Value::String(text) => strings.push(text.clone()),
            other => {
                problems.bad_value(&format!("{path}[{position}]"), other, "is not a string");
                all_good = false;
            }
        }
    }
    all_good.then_some(strings)
}

/// A scalar rendered as a string: `PORT = 8080` in an `env` table means the text "8080".
pub(super) fn scalar_text(path: &str, value: &Value, problems: &mut Problems) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        other => {
            problems.bad_value(path, other, "is not a string, number or boolean");
            None
        }
    }
}
