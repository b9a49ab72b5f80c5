//! Bad input never panics: the config loader on arbitrary text (and on mutations of the real FOG
//! config), and the API on arbitrary methods, paths, queries, headers and bodies — each answered with a
//! documented status and a JSON error, never a panic. proptest, so it runs in the test command (cargo-fuzz
//! would need a nightly toolchain).

use std::time::Duration;

use bytes::Bytes;
use fog_orchestrator::api::{Api, BrowserPolicy};
use fog_orchestrator::clock::Clock;
use fog_orchestrator::config::Config;
use http_body_util::Full;
use hyper::{Method, Request};
use proptest::prelude::*;

use crate::harness::{FOG, World, supervise, within};

const FOG_TOML: &str = include_str!("../../examples/fog.toml");

/// Text made of TOML's own pieces, so the parser gets past the first byte most of the time.
fn tomlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[services.a]\n".to_owned()),
        Just("[services.a.health]\n".to_owned()),
        Just("[defaults.health]\n".to_owned()),
        Just("[api]\n".to_owned()),
        Just("[registry]\n".to_owned()),
        Just("command = [\"x\"]\n".to_owned()),
        Just("depends_on = [\"a\"]\n".to_owned()),
        Just("optional_depends_on = [\"b\", \"a\"]\n".to_owned()),
        Just("check_interval = \"0s\"\n".to_owned()),
        Just("priority = 99999999999\n".to_owned()),
        Just("http = \"https://[::1\"\n".to_owned()),
        Just("listen = \"0.0.0.0:8400\"\n".to_owned()),
        "[a-z_.]{1,12} = [0-9\"\\[\\]{}a-z,.]{0,16}\n",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_config_loader_never_panics(text in tomlish()) {
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn mutations_of_the_fog_config_never_panic(cut in 0..FOG_TOML.len(), junk in any::<String>()) {
        let mut text = FOG_TOML.as_bytes()[..cut].to_vec();
        text.extend_from_slice(junk.as_bytes());
        text.extend_from_slice(&FOG_TOML.as_bytes()[cut..]);
        let _ = Config::from_toml(&String::from_utf8_lossy(&text));
    }
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::PUT),
        Just(Method::OPTIONS),
        Just(Method::HEAD),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("api".to_owned()),
        Just("orchestration".to_owned()),
        Just("services".to_owned()),
        Just("service".to_owned()),
        Just("registry".to_owned()),
        Just("restart".to_owned()),
        Just("stop".to_owned()),
        Just("heartbeat".to_owned()),
        Just("health".to_owned()),
        Just("check-now".to_owned()),
        Just("onion".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%ff%00".to_owned()),
        "[a-zA-Z0-9_%.-]{0,70}",
    ];
    (prop::collection::vec(segment, 0..6), "[a-z=&%0-9]{0,30}").prop_map(|(segments, query)| {
        let path = format!("/{}", segments.join("/"));
        if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        }
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"{\"force\": true}".to_vec()),
        Just(b"{\"name\": \"x\", \"type\": null, \"tags\": [1]}".to_vec()),
        Just(b"{\"force\": \"yes\"}".to_vec()),
        Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

#[test]
fn the_api_answers_any_request_without_panicking() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let (api, _world) = runtime.block_on(async {
        let world = World::default();
        let supervisor = supervise(&world, FOG);
        within(Duration::from_secs(10), supervisor.initialized()).await;
        let api = Api::new(supervisor, None, BrowserPolicy::default(), Clock::system());
        (api, world)
    });
    let documented = [200, 201, 400, 403, 404, 405, 409, 413, 415, 500, 503, 507];
    proptest!(ProptestConfig { cases: 512, ..ProptestConfig::default() }, |(
        method in method(),
        path in path(),
        content_type in prop_oneof![Just("application/json"), Just("text/plain"), Just("")],
        host in prop_oneof![Just("127.0.0.1:8400"), Just("localhost"), Just("evil.example"), Just("")],
        body in body(),
    )| {
        let mut request = Request::builder().method(method).uri(path.as_str());
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        if !host.is_empty() {
            request = request.header("host", host);
        }
        let Ok(request) = request.body(Full::new(Bytes::from(body))) else {
            return Ok(()); // not a request hyper would ever hand us
        };
        let reply = runtime.block_on(api.handle(request));
        let status = reply.status().as_u16();
        prop_assert!(documented.contains(&status), "{status} for {path}");
    });
}
