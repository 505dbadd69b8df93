//! Flow documents read from files (`hookflow flows apply`): YAML for
//! `.yaml` and `.yml`, JSON for anything else, parsed into the same
//! [`FlowDoc`] the API takes. Errors read `FILE:LINE:COLUMN: problem`, the
//! form editors and terminals turn into a link.

use std::path::Path;

use crate::domain::flow::FlowDoc;

/// How a file is read, by its extension (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    pub fn of(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("yaml" | "yml") => Self::Yaml,
            _ => Self::Json,
        }
    }
}

/// Parses the text of the flow file at `path`; the error names the file,
/// and the line and column when the parser knows them.
pub fn parse(path: &Path, text: &str) -> Result<FlowDoc, String> {
    let (message, at) = match Format::of(path) {
        Format::Json => match serde_json::from_str(text) {
            Ok(doc) => return Ok(doc),
            Err(e) => (
                e.to_string(),
                Some((e.line(), e.column())).filter(|(l, _)| *l > 0),
            ),
        },
        Format::Yaml => match serde_norway::from_str(text) {
            Ok(doc) => return Ok(doc),
            Err(e) => (e.to_string(), e.location().map(|l| (l.line(), l.column()))),
        },
    };
    let file = path.display();
    Err(match at {
        Some((line, column)) => {
            // Both parsers end their messages with the position; it is in front now.
            let suffix = format!(" at line {line} column {column}");
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            format!("{file}:{line}:{column}: not a flow document: {message}")
        }
        None => format!("{file}: not a flow document: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::flow::{StepKind, Trigger};

    const YAML: &str = "\
name: Welcome
trigger:
  type: inbound
  list_id: ls_01hzzzzzzzzzzzzzzzzzzzzzzz
  mapping:
    customer.first_name: first_name
  allowed_ips: [10.0.0.0/8]
steps:
  - id: check
    type: condition
    conditions:
      - {field: fields.plan, op: eq, value: free}
    yes: pause
    no: done
  - id: pause
    type: wait
    duration: 1d
    next: done
  - id: done
    type: exit
";

    #[test]
    fn yaml_and_json_give_the_same_document() {
        let yaml = parse(Path::new("flows/welcome.yaml"), YAML).unwrap();
        let json = serde_json::to_string(&yaml).unwrap();
        let from_json = parse(Path::new("welcome.json"), &json).unwrap();
        assert_eq!(yaml, from_json);
        assert!(
            matches!(&yaml.trigger, Trigger::Inbound { allowed_ips, .. } if allowed_ips == &["10.0.0.0/8"])
        );
        // `yes` and `no` are keys, not booleans (YAML 1.2).
        assert!(
            matches!(&yaml.steps[0].kind, StepKind::Condition { yes, no, .. } if yes == "pause" && no == "done")
        );
        assert_eq!(Format::of(Path::new("A.YML")), Format::Yaml);
        assert_eq!(Format::of(Path::new("flow")), Format::Json);
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        // A step's settings are read as a whole once its `type` is known, so
        // a mistake inside a step is placed at the step (line 15), with its
        // path; a top-level one at its own line.
        let bad = YAML.replace("    duration: 1d", "    durashun: 1d");
        let err = parse(Path::new("w.yml"), &bad).unwrap_err();
        assert!(err.starts_with("w.yml:15:"), "{err}");
        assert!(err.contains("steps[1]"), "{err}");
        assert!(err.contains("durashun"), "{err}");
        assert!(!err.ends_with("column 5"), "position said once: {err}");
        let bad = YAML.replace("name: Welcome", "name: Welcome\nrepeet: true");
        let err = parse(Path::new("w.yml"), &bad).unwrap_err();
        assert!(
            err.starts_with("w.yml:2:") && err.contains("repeet"),
            "{err}"
        );

        let err = parse(Path::new("w.yaml"), "name: [unclosed\nsteps: []\n").unwrap_err();
        assert!(err.starts_with("w.yaml:"), "{err}");

        let err = parse(Path::new("w.json"), "{\"name\": \"x\",\n  \"trigger\": 7}").unwrap_err();
        assert!(err.starts_with("w.json:2:"), "{err}");
        assert!(!err.contains(" at line "), "{err}");

        let err = parse(Path::new("empty.yaml"), "").unwrap_err();
        assert!(err.starts_with("empty.yaml"), "{err}");
    }
}
