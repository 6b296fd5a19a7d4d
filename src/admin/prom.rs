//! A small, strict reader of the Prometheus text exposition format (0.0.4), to check what
//! `/metrics` serves (the unit tests of [`super::metrics`] and the integration tests). It
//! accepts only what a Prometheus server would scrape without error, plus the rules storeherd
//! promises: every sample's family has a `# TYPE` line before it, and a family's samples are
//! contiguous.

use std::collections::{BTreeMap, HashMap, HashSet};

/// The per-instance metrics docs/design.md requires (each labelled `instance="<id>"`).
pub const REQUIRED_PER_INSTANCE: &[&str] = &[
    "storeherd_instance_up",
    "storeherd_instance_restarts_total",
    "storeherd_instance_cpu_percent",
    "storeherd_instance_rss_bytes",
    "storeherd_proxy_connections_active",
    "storeherd_proxy_connections_total",
    "storeherd_proxy_bytes_total",
    "storeherd_proxy_connect_failures_total",
    "storeherd_proxy_busy_total",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → declared type.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

impl Exposition {
    /// Samples of `name` whose labels include `labels` (others may be present too).
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why an exposition was refused: the line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        // Rust accepts "inf"/"infinity"/"nan" spellings the format does not.
        t if t
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            Err(format!("bad value {t:?}"))
        }
        t => t.parse().map_err(|_| format!("bad value {t:?}")),
    }
}

/// `{a="x",b="y"}` at the start of `rest`; returns the labels and what follows the brace.
fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut s = rest.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let name = &s[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name} value not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        s = &s[end + 1..];
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected ' ' before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses a whole exposition; the error names the line.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    parse_text(text).map_err(ParseError)
}

fn parse_text(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut out = Exposition::default();
    let mut seen_series = HashSet::new();
    let mut finished_families = HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().unwrap_or("");
                    let kind = words.next().unwrap_or("");
                    if !valid_metric_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if out
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(at(format!("TYPE of {name} given twice")));
                    }
                }
                Some("HELP") => {
                    let name = words.next().unwrap_or("");
                    if !valid_metric_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                }
                _ => {} // any other comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        if !out.types.contains_key(&sample.name) {
            return Err(at(format!("sample of {} before its TYPE", sample.name)));
        }
        if current.as_deref() != Some(sample.name.as_str()) {
            if finished_families.contains(&sample.name) {
                return Err(at(format!("samples of {} are not contiguous", sample.name)));
            }
            if let Some(prev) = current.replace(sample.name.clone()) {
                finished_families.insert(prev);
            }
        }
        if !seen_series.insert(format!("{}{:?}", sample.name, sample.labels)) {
            return Err(at("the same series twice".into()));
        }
        out.samples.push(sample);
    }
    Ok(out)
}
