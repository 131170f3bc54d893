use super::*;
use std::path::Path;

fn load_text(text: &str) -> Result<Loaded, ConfigError> {
    from_str(Path::new("/etc/kai/kai.toml"), text)
}

#[test]
fn empty_file_is_the_defaults() {
    let loaded = load_text("").unwrap();
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.config.memcache.listen, "127.0.0.1:11211");
    assert_eq!(loaded.config.cluster.quorum, Quorum { n: 3, r: 2, w: 2 });
}

#[test]
fn human_units_and_aliases() {
    let loaded = load_text(
        "[memcache]\nmax_item_size = \"2MiB\"\nidle_timeout = \"90s\"\n[store]\nengine = \"dets\"\n",
    )
    .unwrap();
    assert_eq!(loaded.config.memcache.max_item_size.0, 2 << 20);
    assert_eq!(loaded.config.memcache.idle_timeout.0.as_secs(), 90);
    assert_eq!(loaded.config.store.engine, Engine::Disk);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let err = load_text("[memcache]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n").unwrap_err();
    assert_eq!(err.file, Path::new("/etc/kai/kai.toml"));
    assert_eq!(err.line, Some(3));
    assert_eq!(err.key, "memcache.max_conections");
    assert!(err.reason.contains("unknown field"), "{err}");
}

#[test]
fn bad_value_names_the_key() {
    let err = load_text("[store]\nmemory_limit = \"12 parsecs\"\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert_eq!(err.key, "store.memory_limit");
    assert!(err.reason.contains("unknown unit"), "{err}");
}

#[test]
fn a_zone_is_a_plain_name() {
    let config = load_text("[node]\nzone = \"rack-2.room_b\"\n").unwrap();
    assert_eq!(
        config.config.node.zone_name().as_deref(),
        Some("rack-2.room_b")
    );
    assert_eq!(load_text("").unwrap().config.node.zone_name(), None);
    let err = load_text("[node]\nhostname = \"10.0.0.1\"\nzone = \"rack 2\"\n").unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(3), "node.zone"));
    assert!(err.reason.contains("letters, digits"), "{err}");
}

#[test]
fn buckets_must_be_a_power_of_two() {
    let err = load_text("[cluster]\nvirtual_nodes = 64\nbuckets = 1000\n").unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(3), "cluster.buckets"));
    assert!(err.reason.contains("nearest is 1024"), "{err}");
}

#[test]
fn read_quorum_above_n_is_an_error() {
    let err = load_text("[cluster]\nquorum = { n = 3, r = 4, w = 2 }\n").unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(2), "cluster.quorum.r"));
    assert!(err
        .to_string()
        .starts_with("/etc/kai/kai.toml:2: cluster.quorum.r: r = 4"));
}

#[test]
fn weak_quorum_is_a_warning() {
    let loaded = load_text("[cluster]\nquorum = { n = 3, r = 1, w = 1 }\n").unwrap();
    assert_eq!(loaded.warnings.len(), 1);
}

#[test]
fn bad_addresses_are_rejected() {
    for text in [
        "[memcache]\nlisten = \"127.0.0.1\"\n",
        "[rpc]\nlisten = \"host:99999\"\n",
        "[cluster]\nseeds = [\"a b:1\"]\n",
    ] {
        assert!(load_text(text).is_err(), "{text}");
    }
    load_text("[memcache]\nlisten = \"localhost:11211\"\n[rpc]\nlisten = \"[::1]:11011\"\n")
        .unwrap();
}

#[test]
fn syntax_errors_point_at_the_line() {
    let err = load_text("[node]\nhostname = \n").unwrap_err();
    assert_eq!(err.line, Some(2));
}

#[test]
fn dropins_merge_over_the_main_file_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("kai.toml");
    std::fs::write(
        &main,
        "[memcache]\nlisten = \"127.0.0.1:1\"\nmax_connections = 10\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/20-b.toml"),
        "[memcache]\nmax_connections = 30\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-a.toml"),
        "[memcache]\nmax_connections = 20\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("conf.d/ignored.txt"), "garbage").unwrap();
    std::fs::write(
        dir.path().join("conf.d/30-q.toml"),
        "[cluster.quorum]\nr = 1\n",
    )
    .unwrap();
    let loaded = load(Some(&main)).unwrap();
    assert_eq!(loaded.config.memcache.listen, "127.0.0.1:1");
    assert_eq!(loaded.config.memcache.max_connections, 30);
    assert_eq!(loaded.config.cluster.quorum, Quorum { n: 3, r: 1, w: 2 });
    assert_eq!(loaded.sources.len(), 4);

    std::fs::write(
        dir.path().join("conf.d/40-bad.toml"),
        "[cluster]\nbuckets = 7\n",
    )
    .unwrap();
    let err = load(Some(&main)).unwrap_err();
    assert!(err.file.ends_with("conf.d/40-bad.toml"), "{err}");
    assert_eq!(err.line, Some(2));
}

#[test]
fn missing_explicit_file_is_an_error() {
    let err = load(Some(Path::new("/nonexistent/kai.toml"))).unwrap_err();
    assert!(err.reason.contains("cannot read"), "{err}");
}

/// The packaged /etc/kai/kai.toml documents every key with its default: uncommenting all of
/// it must give exactly the embedded defaults, and it must name every key the schema has.
#[test]
fn packaged_config_matches_the_defaults() {
    let packaged = include_str!("../../etc/kai/kai.toml");
    let path = Path::new("etc/kai/kai.toml");
    assert_eq!(
        load_text(packaged).unwrap().config,
        Config::default(),
        "commented file"
    );
    let uncommented: String = packaged
        .lines()
        .map(|line| {
            line.strip_prefix('#')
                .filter(|rest| !rest.starts_with(' ') && !rest.is_empty())
                .unwrap_or(line)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let loaded = from_str(path, &uncommented).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.config, Config::default());
    let effective = toml::to_string(&Config::default()).unwrap();
    let defaults: toml::Table = toml::from_str(&effective).unwrap();
    let written: toml::Table = toml::from_str(&uncommented).unwrap();
    for (section, keys) in &defaults {
        for key in keys.as_table().unwrap().keys() {
            assert!(
                written[section].get(key).is_some(),
                "etc/kai/kai.toml lacks {section}.{key}"
            );
        }
    }
}

#[test]
fn tls_needs_its_files_named() {
    let err = load_text("[rpc]\ntls = \"on\"\ntls_cert = \"/etc/kai/node.pem\"\n").unwrap_err();
    assert_eq!(err.key, "rpc.tls_key");
    assert!(err.reason.contains("must name a PEM file"), "{err}");
    let err = load_text("[rpc]\ntls = \"sometimes\"\n").unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(2), "rpc.tls"));
    let err = load_text("[memcache]\ntls_listen = \"127.0.0.1:11212\"\n").unwrap_err();
    assert_eq!(err.key, "memcache.tls_cert");
    let err = load_text("[memcache]\ntls_listen = \"127.0.0.1:11211\"\n").unwrap_err();
    assert_eq!(err.key, "memcache.tls_listen");
    let ok = "[rpc]\ntls = \"transitional\"\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"a\"\n";
    assert_eq!(load_text(ok).unwrap().config.rpc.tls, TlsMode::Transitional);
}
