//! Logging to stderr: text (coloured only on a terminal) or JSON with `LOG_FORMAT=json`, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How to log: built by the command line from its flags and their environment variables.
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    pub(crate) json: bool,
    /// `RUST_LOG`'s filter syntax; `None` for the default.
    pub(crate) filter: Option<String>,
    /// `NO_COLOR` set: no colour even on a terminal.
    pub(crate) no_color: bool,
}

pub fn init(settings: &LogSettings) {
    let filter = settings
        .filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal(), settings.no_color));
    let result = if settings.json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

/// Colour escapes only for a person at a terminal: in a file, a pipe or a log collector they
/// are noise that breaks grep. `NO_COLOR` (any non-empty value, no-color.org) turns them off
/// on a terminal too.
fn colour(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, false));
        assert!(!colour(true, true));
        assert!(!colour(false, false));
    }
}
