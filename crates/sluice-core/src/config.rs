//! Layered process configuration: defaults < config file (TOML) < SLUICE_* environment < flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// Builds `T` from its defaults, then the TOML `file` (when given), then `SLUICE_<FIELD>`
/// environment variables, then the flags the user actually passed (`None` fields are skipped,
/// so serialize them with `skip_serializing_if = "Option::is_none"`).
pub fn load<T, F>(file: Option<&Path>, flags: &F) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    F: Serialize,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        fig = fig.merge(Toml::file(path));
    }
    fig.merge(Env::prefixed("SLUICE_").ignore(&["config"]))
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(|e| ConfigError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize)]
    struct Conf {
        listen: String,
        slots: u32,
    }
    impl Default for Conf {
        fn default() -> Self {
            Conf {
                listen: "127.0.0.1:7070".into(),
                slots: 2,
            }
        }
    }
    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        slots: Option<u32>,
    }

    #[test]
    fn file_then_flags_win() {
        let dir = std::env::temp_dir().join(format!("sluice-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nslots = 3\n").unwrap();
        let c: Conf = load(Some(&file), &Flags { slots: None }).unwrap();
        assert_eq!((c.listen.as_str(), c.slots), ("127.0.0.1:9000", 3));
        let c: Conf = load(Some(&file), &Flags { slots: Some(7) }).unwrap();
        assert_eq!(c.slots, 7);
        std::fs::write(&file, "slots = \"many\"\n").unwrap();
        let err = load::<Conf, _>(Some(&file), &Flags { slots: None }).unwrap_err();
        assert!(err.to_string().contains("slots"), "{err}");
    }
}
