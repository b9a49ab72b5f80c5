//! Where configuration comes from, and merging the layers with the `config` crate:
//! embedded defaults < the config file < `ORCHESTRATOR__SECTION__KEY` environment variables < CLI flags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ConfigError;

/// The lowest layer: settings every configuration starts from (no services).
const EMBEDDED_DEFAULTS: &str = include_str!("defaults.toml");
/// The FOG topology, used as the config file when none is given or found.
pub const EMBEDDED_FOG: &str = include_str!("../../examples/fog.toml");
/// The config file looked for in the working directory when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "orchestrator.toml";
/// Prefix of environment overrides: `ORCHESTRATOR__API__LISTEN` sets `api.listen`.
pub const ENV_PREFIX: &str = "ORCHESTRATOR";
/// Separator between the prefix, sections and keys of environment overrides.
pub const ENV_SEPARATOR: &str = "__";

/// The config file layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// The embedded FOG demo topology (`examples/fog.toml`).
    EmbeddedFog,
    /// A TOML file on disk.
    Path(PathBuf),
    /// TOML text held in memory (embedding programs and tests).
    Text {
        /// How the text is named in messages.
        name: String,
        /// The TOML document.
        text: String,
    },
}

impl ConfigFile {
    /// The file named on the command line or by `ORCHESTRATOR_CONFIG`; else `orchestrator.toml` in the
    /// working directory when it exists; else the embedded FOG topology.
    pub fn discover(named: Option<PathBuf>) -> Self {
        match named {
            Some(path) => ConfigFile::Path(path),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => ConfigFile::Path(DEFAULT_CONFIG_FILE.into()),
            None => ConfigFile::EmbeddedFog,
        }
    }

    /// How this layer is named in messages.
    pub fn describe(&self) -> String {
        match self {
            ConfigFile::EmbeddedFog => "the embedded FOG topology (examples/fog.toml)".to_owned(),
            ConfigFile::Path(path) => path.display().to_string(),
            ConfigFile::Text { name, .. } => name.clone(),
        }
    }
}

/// Every layer of one configuration.
#[derive(Debug, Clone)]
pub struct Source {
    file: ConfigFile,
    env: Option<HashMap<String, String>>,
    overrides: Vec<(String, String)>,
}

impl Source {
    /// `file` over the embedded defaults, with the process environment and no CLI overrides.
    pub fn new(file: ConfigFile) -> Self {
        Self {
            file,
            env: None,
            overrides: Vec::new(),
        }
    }

    /// Reads environment overrides from `vars` instead of the process environment.
    pub fn with_env(mut self, vars: HashMap<String, String>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Adds a top-layer override, such as `("api.listen", "127.0.0.1:9000")` from a CLI flag.
    pub fn with_override(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// The config file layer.
    pub fn file(&self) -> &ConfigFile {
        &self.file
    }

    /// Merges the layers into one untyped tree, keeping table order (declaration order matters).
    pub(super) fn merge(&self) -> Result<Value, ConfigError> {
        let load_error = |error: config::ConfigError| ConfigError::Load {
            origin: self.file.describe(),
            message: error.to_string(),
        };
        let toml = |text: &str| config::File::from_str(text, config::FileFormat::Toml);
        let builder = config::Config::builder().add_source(toml(EMBEDDED_DEFAULTS));
        let builder = match &self.file {
            ConfigFile::EmbeddedFog => builder.add_source(toml(EMBEDDED_FOG)),
            ConfigFile::Text { text, .. } => builder.add_source(toml(text)),
            ConfigFile::Path(path) => {
                if !path.is_file() {
                    return Err(ConfigError::Load {
                        origin: path.display().to_string(),
                        message: "no such file".to_owned(),
                    });
                }
                builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            }
        };
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(self.env.clone().map(|vars| vars.into_iter().collect()));
        let mut builder = builder.add_source(environment);
        for (key, value) in &self.overrides {
            builder = builder.set_override(key, value.as_str()).map_err(load_error)?;
        }
        builder
            .build()
            .map_err(load_error)?
            .try_deserialize()
            .map_err(load_error)
    }
}
