//! The fake Bot API against the facts of shared/telegram-bot-api.md: every
//! status, envelope and description compared exactly.

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use testbed::fake_telegram::{FakeTelegram, Fault, FaultKind, Webhook};

const BOT: i64 = 7_123_456_789;
const OTHER_BOT: i64 = 6_000_000_001;
const USERNAME: &str = "support_bot";
const HOOK: &str = "https://bots.example.com/webhook/abc";

struct Bed {
    fake: FakeTelegram,
    token: String,
    client: Client,
}

async fn bed() -> Bed {
    let fake = FakeTelegram::start().await.expect("the fake starts");
    let token = fake.add_bot(BOT, USERNAME);
    Bed {
        fake,
        token,
        client: Client::new(),
    }
}

impl Bed {
    fn endpoint(&self, method: &str) -> String {
        endpoint(&self.fake, &self.token, method)
    }

    async fn get(&self, method: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let request = self.client.get(self.endpoint(method)).query(query);
        answer(request.send().await.expect("the fake answers")).await
    }

    async fn json(&self, method: &str, body: Value) -> (StatusCode, Value) {
        let request = self.client.post(self.endpoint(method)).json(&body);
        answer(request.send().await.expect("the fake answers")).await
    }

    async fn form(&self, method: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let request = self.client.post(self.endpoint(method)).form(form);
        answer(request.send().await.expect("the fake answers")).await
    }

    async fn set_webhook(&self, params: Value) -> (StatusCode, Value) {
        self.json("setWebhook", params).await
    }
}

fn endpoint(fake: &FakeTelegram, token: &str, method: &str) -> String {
    format!("{}/bot{token}/{method}", fake.url())
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

fn failure(code: u16, description: &str) -> Value {
    json!({ "ok": false, "error_code": code, "description": description })
}

fn done(description: &str) -> Value {
    json!({ "ok": true, "result": true, "description": description })
}

fn webhook(url: &str) -> Webhook {
    Webhook {
        url: url.to_owned(),
        secret_token: None,
        max_connections: 40,
        allowed_updates: None,
        ip_address: None,
    }
}

/// Asserts that setWebhook with `params` answers 400 `description` and
/// leaves the bot without a webhook.
async fn assert_rejected(bed: &Bed, params: Value, description: &str) {
    let (status, body) = bed.set_webhook(params.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{params}");
    assert_eq!(body, failure(400, description), "{params}");
    assert_eq!(bed.fake.webhook(BOT), None, "{params}");
}

fn connection_refused(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::ConnectionRefused;
        }
        source = cause.source();
    }
    false
}

// ---- tokens ----

#[tokio::test]
async fn add_bot_makes_a_realistic_random_token() {
    let bed = bed().await;
    let other = bed.fake.add_bot(OTHER_BOT, "other_bot");
    for (token, id) in [(&bed.token, BOT), (&other, OTHER_BOT)] {
        let (digits, secret) = token.split_once(':').expect("a colon");
        assert_eq!(digits, id.to_string());
        assert_eq!(secret.len(), 35, "{secret}");
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{secret}"
        );
    }
    let again = bed.fake.add_bot(BOT, USERNAME);
    assert_ne!(again, bed.token);
}

#[tokio::test]
async fn get_me_describes_the_bot() {
    let bed = bed().await;
    let (status, body) = bed.get("getMe", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "ok": true, "result": {
            "id": BOT,
            "is_bot": true,
            "first_name": USERNAME,
            "username": USERNAME,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": false,
            "has_main_web_app": false,
        }})
    );
}

#[tokio::test]
async fn add_bot_with_token_accepts_a_given_token() {
    let fake = FakeTelegram::start().await.expect("the fake starts");
    let token = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";
    assert_eq!(
        fake.add_bot_with_token(token, "demo_bot").expect("a token"),
        123_456
    );
    let response = reqwest::get(endpoint(&fake, token, "getMe"))
        .await
        .expect("answers");
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["id"], 123_456);
    assert_eq!(body["result"]["username"], "demo_bot");
}

#[tokio::test]
async fn add_bot_with_token_refuses_a_malformed_token_without_showing_it() {
    let fake = FakeTelegram::start().await.expect("the fake starts");
    for token in ["no-colon-here", "12a:secret", "123:", "123:sec.ret"] {
        let error = fake.add_bot_with_token(token, "demo_bot").expect_err(token);
        assert!(!format!("{error:#}").contains(token), "{error:#}");
    }
}

#[tokio::test]
async fn malformed_token_is_404_not_found() {
    let bed = bed().await;
    for token in [
        "notatoken",
        "123456",
        "123456:",
        ":ABCdef",
        "12a34:ABC",
        "123:AB.C",
        "123:AB%20C",
    ] {
        let url = endpoint(&bed.fake, token, "getMe");
        let (status, body) = answer(bed.client.get(url).send().await.expect("answers")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{token}");
        assert_eq!(body, failure(404, "Not Found"), "{token}");
    }
    let calls = bed.fake.calls();
    assert_eq!(calls.len(), 7);
    assert!(
        calls
            .iter()
            .all(|call| call.bot_id.is_none() && call.status == 404)
    );
}

#[tokio::test]
async fn unknown_token_is_401_unauthorized() {
    let bed = bed().await;
    let wrong_secret = format!("{BOT}:AAwrongwrongwrongwrongwrongwrongwro");
    for token in ["42:AAunknownunknownunknownunknown12", wrong_secret.as_str()] {
        let url = endpoint(&bed.fake, token, "getMe");
        let (status, body) = answer(bed.client.get(url).send().await.expect("answers")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(body, failure(401, "Unauthorized"), "{token}");
    }
    let ids: Vec<_> = bed.fake.calls().iter().map(|call| call.bot_id).collect();
    assert_eq!(ids, [Some(42), Some(BOT)]);
}

#[tokio::test]
async fn revoked_token_is_401_unauthorized() {
    let bed = bed().await;
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
    bed.fake.revoke(&bed.token);
    for method in ["getMe", "setWebhook", "getWebhookInfo"] {
        let (status, body) = bed.get(method, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method}");
        assert_eq!(body, failure(401, "Unauthorized"), "{method}");
    }
}

#[tokio::test]
async fn replace_token_revokes_the_old_one_and_keeps_the_bot() {
    let bed = bed().await;
    bed.fake.set_webhook_directly(BOT, Some(webhook(HOOK)));
    let new_token = bed.fake.replace_token(&bed.token);
    assert_ne!(new_token, bed.token);
    assert!(new_token.starts_with(&format!("{BOT}:")));

    let (status, body) = bed.get("getMe", &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, failure(401, "Unauthorized"))
    );

    let url = endpoint(&bed.fake, &new_token, "getMe");
    let (status, body) = answer(bed.client.get(url).send().await.expect("answers")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["id"], BOT);
    assert_eq!(bed.fake.webhook(BOT), Some(webhook(HOOK)));
}

// ---- routes and methods ----

#[tokio::test]
async fn unknown_method_is_404_not_found() {
    let bed = bed().await;
    let (status, body) = bed.get("sendRocket", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, failure(404, "Not Found"));
    let calls = bed.fake.calls_to(BOT, "sendRocket");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, 404);
}

#[tokio::test]
async fn unknown_method_with_unknown_token_is_401() {
    let bed = bed().await;
    let url = endpoint(&bed.fake, "42:AAunknownunknown", "sendRocket");
    let (status, body) = answer(bed.client.get(url).send().await.expect("answers")).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, failure(401, "Unauthorized"))
    );
}

#[tokio::test]
async fn method_names_are_case_insensitive() {
    let bed = bed().await;
    let (status, body) = bed.get("GETME", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["id"], BOT);
    let (status, body) = bed.get("SetWebHook", &[("url", HOOK)]).await;
    assert_eq!((status, body), (StatusCode::OK, done("Webhook was set")));
    let (_, body) = bed.get("getwebhookinfo", &[]).await;
    assert_eq!(body["result"]["url"], HOOK);

    let methods: Vec<_> = bed
        .fake
        .calls()
        .into_iter()
        .map(|call| call.method)
        .collect();
    assert_eq!(methods, ["getMe", "setWebhook", "getWebhookInfo"]);
}

#[tokio::test]
async fn other_paths_and_http_methods_are_404() {
    let bed = bed().await;
    let base = bed.fake.url();
    for path in [
        "/",
        "/getMe",
        "/webhook/x",
        &format!("/bot{}/getMe/more", bed.token),
    ] {
        let response = bed
            .client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("answers");
        let (status, body) = answer(response).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, failure(404, "Not Found")),
            "{path}"
        );
    }
    let response = bed
        .client
        .put(bed.endpoint("getMe"))
        .send()
        .await
        .expect("answers");
    let (status, body) = answer(response).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, failure(404, "Not Found"))
    );
}

// ---- parameter encodings ----

fn full_webhook() -> Webhook {
    Webhook {
        url: HOOK.to_owned(),
        secret_token: Some("s3cret-Token_x".to_owned()),
        max_connections: 12,
        allowed_updates: Some(vec!["message".to_owned(), "callback_query".to_owned()]),
        ip_address: Some("93.184.216.34".to_owned()),
    }
}

const TEXT_PARAMS: [(&str, &str); 6] = [
    ("url", HOOK),
    ("secret_token", "s3cret-Token_x"),
    ("max_connections", "12"),
    ("allowed_updates", r#"["message","callback_query"]"#),
    ("ip_address", "93.184.216.34"),
    ("drop_pending_updates", "false"),
];

fn recorded_params() -> Value {
    json!({
        "url": HOOK,
        "secret_token": "s3cret-Token_x",
        "max_connections": 12,
        "allowed_updates": ["message", "callback_query"],
        "ip_address": "93.184.216.34",
        "drop_pending_updates": false,
    })
}

fn assert_full_webhook_set(bed: &Bed, (status, body): (StatusCode, Value)) {
    assert_eq!((status, body), (StatusCode::OK, done("Webhook was set")));
    assert_eq!(bed.fake.webhook(BOT), Some(full_webhook()));
    let calls = bed.fake.calls_to(BOT, "setWebhook");
    assert_eq!(calls.len(), 1);
    assert_eq!(Value::Object(calls[0].params.clone()), recorded_params());
}

#[tokio::test]
async fn params_in_the_query_string() {
    let bed = bed().await;
    let answered = bed.get("setWebhook", &TEXT_PARAMS).await;
    assert_full_webhook_set(&bed, answered);
}

#[tokio::test]
async fn params_in_a_urlencoded_form() {
    let bed = bed().await;
    let answered = bed.form("setWebhook", &TEXT_PARAMS).await;
    assert_full_webhook_set(&bed, answered);
}

#[tokio::test]
async fn params_in_a_json_body() {
    let bed = bed().await;
    let answered = bed
        .json(
            "setWebhook",
            json!({
                "url": HOOK,
                "secret_token": "s3cret-Token_x",
                "max_connections": 12,
                "allowed_updates": ["message", "callback_query"],
                "ip_address": "93.184.216.34",
                "drop_pending_updates": false,
            }),
        )
        .await;
    assert_full_webhook_set(&bed, answered);
}

fn multipart_body(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "fakeTelegramBoundary42";
    let mut body = String::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .expect("writing to a String");
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"certificate\"; \
         filename=\"cert.pem\"\r\nContent-Type: application/x-pem-file\r\n\r\n\
         -----BEGIN CERTIFICATE-----\r\n--{boundary}--\r\n"
    )
    .expect("writing to a String");
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[tokio::test]
async fn params_in_a_multipart_body() {
    let bed = bed().await;
    let (content_type, body) = multipart_body(&TEXT_PARAMS);
    let request = bed
        .client
        .post(bed.endpoint("setWebhook"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    let answered = answer(request.send().await.expect("answers")).await;
    assert_full_webhook_set(&bed, answered);
}

#[tokio::test]
async fn body_params_override_the_query_string() {
    let bed = bed().await;
    let request = bed
        .client
        .post(bed.endpoint("setWebhook"))
        .query(&[("url", "https://query.example.com/hook")])
        .form(&[("url", HOOK)]);
    let (status, _) = answer(request.send().await.expect("answers")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bed.fake.webhook(BOT), Some(webhook(HOOK)));
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_is_400() {
    let bed = bed().await;
    for body in ["[1, 2]", "{\"url\": "] {
        let request = bed
            .client
            .post(bed.endpoint("setWebhook"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (status, answered) = answer(request.send().await.expect("answers")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            answered,
            failure(400, "Bad Request: can't parse JSON object"),
            "{body}"
        );
    }
}

// ---- setWebhook validation ----

#[tokio::test]
async fn set_webhook_invalid_url() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for url in [
        "not a url",
        "https://",
        "https://exa mple.com/",
        "https://example.com:99999/",
    ] {
        assert_rejected(
            &bed,
            json!({ "url": url }),
            "Bad Request: invalid webhook URL specified",
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_needs_https() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for url in [
        "http://bots.example.com/hook",
        "ftp://bots.example.com/hook",
    ] {
        assert_rejected(
            &bed,
            json!({ "url": url }),
            "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_refuses_other_ports() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for url in [
        "https://bots.example.com:8080/hook",
        "https://bots.example.com:444/",
    ] {
        assert_rejected(
            &bed,
            json!({ "url": url }),
            "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_accepts_the_four_ports() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for port in [80, 88, 443, 8443] {
        let url = format!("https://bots.example.com:{port}/hook");
        let (status, body) = bed.set_webhook(json!({ "url": url })).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, done("Webhook was set")),
            "{port}"
        );
        assert_eq!(bed.fake.webhook(BOT), Some(webhook(&url)));
    }
}

#[tokio::test]
async fn set_webhook_refuses_ipv6_literals() {
    let bed = bed().await;
    assert_rejected(
        &bed,
        json!({ "url": "https://[2001:db8::1]/hook" }),
        "Bad Request: bad webhook: IPv6-only addresses are not allowed",
    )
    .await;
}

#[tokio::test]
async fn set_webhook_refuses_reserved_ipv4_addresses() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    let reserved = [
        "0.1.2.3",
        "10.0.0.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.1.1",
        "172.16.0.1",
        "172.31.255.254",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "203.0.113.9",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
    ];
    for address in reserved {
        assert_rejected(
            &bed,
            json!({ "url": format!("https://{address}/hook") }),
            &format!("Bad Request: bad webhook: IP address {address} is reserved"),
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_accepts_public_ipv4_addresses() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for address in ["93.184.216.34", "172.32.0.1", "100.128.0.1"] {
        let url = format!("https://{address}/hook");
        let (status, body) = bed.set_webhook(json!({ "url": url })).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, done("Webhook was set")),
            "{address}"
        );
    }
}

#[tokio::test]
async fn set_webhook_checks_a_given_ip_address_as_the_target() {
    let bed = bed().await;
    assert_rejected(
        &bed,
        json!({ "url": HOOK, "ip_address": "10.1.2.3" }),
        "Bad Request: bad webhook: IP address 10.1.2.3 is reserved",
    )
    .await;
}

#[tokio::test]
async fn set_webhook_fails_to_resolve_invalid_hosts() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for url in [
        "https://bots.invalid/hook",
        "https://INVALID/",
        "https://a.b.Invalid.:8443/",
    ] {
        assert_rejected(
            &bed,
            json!({ "url": url }),
            "Bad Request: bad webhook: Failed to resolve host: Name or service not known",
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_secret_token_too_long() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    assert_rejected(
        &bed,
        json!({ "url": HOOK, "secret_token": "a".repeat(257) }),
        "Bad Request: secret token is too long",
    )
    .await;
    let longest = "b".repeat(256);
    let (status, _) = bed
        .set_webhook(json!({ "url": HOOK, "secret_token": longest }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        bed.fake.webhook(BOT).and_then(|w| w.secret_token),
        Some(longest)
    );
}

#[tokio::test]
async fn set_webhook_secret_token_unallowed_characters() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for token in ["has space", "semi;colon", "plus+slash/", "ünïcode"] {
        assert_rejected(
            &bed,
            json!({ "url": HOOK, "secret_token": token }),
            "Bad Request: secret token contains unallowed characters",
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_empty_secret_token_means_none() {
    let bed = bed().await;
    let (status, _) = bed
        .set_webhook(json!({ "url": HOOK, "secret_token": "" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bed.fake.webhook(BOT), Some(webhook(HOOK)));
}

#[tokio::test]
async fn set_webhook_allowed_updates_must_be_an_array() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for updates in [json!("message"), json!({ "message": true }), json!([1, 2])] {
        assert_rejected(
            &bed,
            json!({ "url": HOOK, "allowed_updates": updates }),
            "Bad Request: can't parse allowed updates",
        )
        .await;
    }
}

#[tokio::test]
async fn set_webhook_ip_address_must_be_ipv4() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for address in ["not-an-ip", "2001:db8::1", "999.1.1.1", "1.2.3"] {
        assert_rejected(
            &bed,
            json!({ "url": HOOK, "ip_address": address }),
            "Bad Request: invalid IP address specified",
        )
        .await;
    }
}

#[tokio::test]
async fn a_refused_set_webhook_keeps_the_previous_webhook() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    assert_eq!(
        bed.set_webhook(json!({ "url": HOOK })).await.0,
        StatusCode::OK
    );
    let (status, _) = bed
        .set_webhook(json!({ "url": "http://bots.example.com/" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bed.fake.webhook(BOT), Some(webhook(HOOK)));
    let statuses: Vec<_> = bed.fake.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [200, 400]);
}

#[tokio::test]
async fn set_webhook_clamps_max_connections() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for (sent, stored) in [
        (json!(0), 1),
        (json!(-3), 1),
        (json!(1000), 100),
        (json!(100), 100),
        (json!("7"), 7),
    ] {
        let (status, _) = bed
            .set_webhook(json!({ "url": HOOK, "max_connections": sent }))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            bed.fake.webhook(BOT).map(|w| w.max_connections),
            Some(stored),
            "{sent}"
        );
    }
    bed.set_webhook(json!({ "url": HOOK })).await;
    assert_eq!(bed.fake.webhook(BOT).map(|w| w.max_connections), Some(40));
}

#[tokio::test]
async fn set_webhook_says_already_set_when_nothing_changed() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    let params = json!({
        "url": HOOK,
        "secret_token": "tok",
        "max_connections": 40,
        "allowed_updates": ["message"],
        "ip_address": "93.184.216.34",
    });
    assert_eq!(
        bed.set_webhook(params.clone()).await.1,
        done("Webhook was set")
    );
    assert_eq!(
        bed.set_webhook(params.clone()).await.1,
        done("Webhook is already set")
    );
    // Omitted max_connections is the default and omitted allowed_updates the previous setting.
    let same = json!({ "url": HOOK, "secret_token": "tok", "ip_address": "93.184.216.34" });
    assert_eq!(
        bed.set_webhook(same).await.1,
        done("Webhook is already set")
    );

    let changes = [
        json!({ "secret_token": "other" }),
        json!({ "max_connections": 41 }),
        json!({ "allowed_updates": ["message", "callback_query"] }),
        json!({ "ip_address": "93.184.216.35" }),
        json!({ "url": "https://bots.example.com/webhook/def" }),
    ];
    for change in changes {
        let mut changed = params.clone();
        changed
            .as_object_mut()
            .expect("an object")
            .extend(change.as_object().expect("an object").clone());
        assert_eq!(
            bed.set_webhook(changed).await.1,
            done("Webhook was set"),
            "{change}"
        );
        assert_eq!(
            bed.set_webhook(params.clone()).await.1,
            done("Webhook was set"),
            "{change}"
        );
    }
}

#[tokio::test]
async fn allowed_updates_omitted_keeps_and_empty_resets() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    bed.set_webhook(json!({ "url": HOOK, "allowed_updates": ["message"] }))
        .await;
    bed.set_webhook(json!({ "url": HOOK, "max_connections": 5 }))
        .await;
    let kept = bed.fake.webhook(BOT).and_then(|w| w.allowed_updates);
    assert_eq!(kept, Some(vec!["message".to_owned()]));

    bed.set_webhook(json!({ "url": HOOK, "allowed_updates": [] }))
        .await;
    assert_eq!(bed.fake.webhook(BOT).map(|w| w.allowed_updates), Some(None));
    let (_, info) = bed.get("getWebhookInfo", &[]).await;
    assert!(info["result"].get("allowed_updates").is_none(), "{info}");
}

#[tokio::test]
async fn set_webhook_without_url_deletes_the_webhook() {
    let bed = bed().await;
    bed.set_webhook(json!({ "url": HOOK })).await;
    // Removing is not rate limited: these follow at once.
    let (status, body) = bed.set_webhook(json!({ "url": "" })).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, done("Webhook was deleted"))
    );
    let (status, body) = bed.set_webhook(json!({})).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, done("Webhook is already deleted"))
    );
    assert_eq!(bed.fake.webhook(BOT), None);
}

async fn pending(bed: &Bed) -> Value {
    bed.get("getWebhookInfo", &[]).await.1["result"]["pending_update_count"].clone()
}

#[tokio::test]
async fn drop_pending_updates_zeroes_the_queue() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    bed.fake.set_delivery_state(BOT, 5, None);
    bed.set_webhook(json!({ "url": HOOK })).await;
    assert_eq!(pending(&bed).await, 5);
    bed.form(
        "setWebhook",
        &[("url", HOOK), ("drop_pending_updates", "true")],
    )
    .await;
    assert_eq!(pending(&bed).await, 0);

    bed.fake.set_delivery_state(BOT, 3, None);
    bed.form("deleteWebhook", &[("drop_pending_updates", "0")])
        .await;
    assert_eq!(pending(&bed).await, 3);
    bed.form("deleteWebhook", &[("drop_pending_updates", "1")])
        .await;
    assert_eq!(pending(&bed).await, 0);
}

// ---- rate limit ----

#[tokio::test]
async fn set_webhook_is_limited_to_one_per_second() {
    let bed = bed().await;
    assert_eq!(
        bed.set_webhook(json!({ "url": HOOK })).await.0,
        StatusCode::OK
    );

    let other = "https://bots.example.com/webhook/other";
    let request = bed
        .client
        .post(bed.endpoint("setWebhook"))
        .json(&json!({ "url": other }));
    let response = request.send().await.expect("answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": { "retry_after": 1 },
        })
    );
    assert_eq!(bed.fake.webhook(BOT), Some(webhook(HOOK)));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        bed.set_webhook(json!({ "url": other })).await.0,
        StatusCode::OK
    );
    assert_eq!(bed.fake.webhook(BOT), Some(webhook(other)));
}

#[tokio::test]
async fn the_rate_limit_is_per_bot() {
    let bed = bed().await;
    let other_token = bed.fake.add_bot(OTHER_BOT, "other_bot");
    assert_eq!(
        bed.set_webhook(json!({ "url": HOOK })).await.0,
        StatusCode::OK
    );
    let request = bed
        .client
        .post(endpoint(&bed.fake, &other_token, "setWebhook"))
        .json(&json!({ "url": HOOK }));
    assert_eq!(
        request.send().await.expect("answers").status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn set_rate_limit_false_lifts_the_limit() {
    let bed = bed().await;
    bed.fake.set_rate_limit(false);
    for n in 0..3 {
        let url = format!("{HOOK}{n}");
        let (status, body) = bed.set_webhook(json!({ "url": url })).await;
        assert_eq!((status, body), (StatusCode::OK, done("Webhook was set")));
    }
    bed.fake.set_rate_limit(true);
    bed.set_webhook(json!({ "url": HOOK })).await;
    assert_eq!(
        bed.set_webhook(json!({ "url": HOOK })).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

// ---- deleteWebhook, getWebhookInfo, getUpdates ----

#[tokio::test]
async fn delete_webhook_says_deleted_then_already_deleted() {
    let bed = bed().await;
    bed.fake.set_webhook_directly(BOT, Some(webhook(HOOK)));
    let (status, body) = bed.get("deleteWebhook", &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, done("Webhook was deleted"))
    );
    let (status, body) = bed
        .json("deleteWebhook", json!({ "drop_pending_updates": true }))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, done("Webhook is already deleted"))
    );
    assert_eq!(bed.fake.webhook(BOT), None);
}

#[tokio::test]
async fn get_webhook_info_without_webhook_is_exact() {
    let bed = bed().await;
    let (status, body) = bed.get("getWebhookInfo", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "ok": true, "result": { "url": "", "has_custom_certificate": false, "pending_update_count": 0 } })
    );
}

#[tokio::test]
async fn get_webhook_info_with_a_plain_webhook_is_exact() {
    let bed = bed().await;
    bed.set_webhook(json!({ "url": HOOK, "secret_token": "never-shown" }))
        .await;
    let (_, body) = bed.get("getWebhookInfo", &[]).await;
    assert_eq!(
        body,
        json!({ "ok": true, "result": {
            "url": HOOK,
            "has_custom_certificate": false,
            "pending_update_count": 0,
            "max_connections": 40,
        }})
    );
}

#[tokio::test]
async fn get_webhook_info_with_everything_set_is_exact_and_hides_the_secret() {
    let bed = bed().await;
    bed.set_webhook(json!({
        "url": HOOK,
        "secret_token": "never-shown",
        "max_connections": 12,
        "allowed_updates": ["message", "callback_query"],
        "ip_address": "93.184.216.34",
    }))
    .await;
    let message = "Wrong response from the webhook: 502 Bad Gateway";
    bed.fake
        .set_delivery_state(BOT, 17, Some((1_767_225_600, message.to_owned())));
    let (_, body) = bed.get("getWebhookInfo", &[]).await;
    assert_eq!(
        body,
        json!({ "ok": true, "result": {
            "url": HOOK,
            "has_custom_certificate": false,
            "pending_update_count": 17,
            "max_connections": 12,
            "ip_address": "93.184.216.34",
            "allowed_updates": ["message", "callback_query"],
            "last_error_date": 1_767_225_600,
            "last_error_message": message,
        }})
    );
    assert!(!body.to_string().contains("never-shown"));
}

#[tokio::test]
async fn set_webhook_directly_changes_what_telegram_reports() {
    let bed = bed().await;
    bed.set_webhook(json!({ "url": HOOK })).await;
    let drifted = Webhook {
        url: "https://elsewhere.example.com/hook".to_owned(),
        secret_token: Some("theirs".to_owned()),
        max_connections: 3,
        allowed_updates: Some(vec!["poll".to_owned()]),
        ip_address: None,
    };
    bed.fake.set_webhook_directly(BOT, Some(drifted.clone()));
    assert_eq!(bed.fake.webhook(BOT), Some(drifted));
    let (_, body) = bed.get("getWebhookInfo", &[]).await;
    assert_eq!(body["result"]["url"], "https://elsewhere.example.com/hook");
    assert_eq!(body["result"]["max_connections"], 3);
    assert_eq!(body["result"]["allowed_updates"], json!(["poll"]));

    bed.fake.set_webhook_directly(BOT, None);
    assert_eq!(bed.fake.webhook(BOT), None);
    assert_eq!(bed.get("getWebhookInfo", &[]).await.1["result"]["url"], "");
}

#[tokio::test]
async fn get_updates_conflicts_with_an_active_webhook() {
    let bed = bed().await;
    let (status, body) = bed.get("getUpdates", &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "result": [] }))
    );

    bed.fake.set_webhook_directly(BOT, Some(webhook(HOOK)));
    let (status, body) = bed.get("getUpdates", &[("timeout", "0")]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        failure(
            409,
            "Conflict: can't use getUpdates method while webhook is active; \
             use deleteWebhook to delete the webhook first"
        )
    );
}

// ---- faults ----

fn fault(method: Option<&str>, kind: FaultKind, times: Option<u32>) -> Fault {
    Fault {
        method: method.map(str::to_owned),
        bot_id: None,
        kind,
        times,
    }
}

#[tokio::test]
async fn fault_too_many_requests() {
    let bed = bed().await;
    bed.fake.inject(fault(
        Some("getMe"),
        FaultKind::TooManyRequests { retry_after: 7 },
        None,
    ));
    let response = bed
        .client
        .get(bed.endpoint("getMe"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error_code": 429,
            "description": "Too Many Requests: retry after 7",
            "parameters": { "retry_after": 7 },
        })
    );
    assert_eq!(bed.fake.calls_to(BOT, "getMe")[0].status, 429);
}

#[tokio::test]
async fn fault_server_error_500_is_json() {
    let bed = bed().await;
    bed.fake
        .inject(fault(None, FaultKind::ServerError(500), None));
    let (status, body) = bed.get("getWebhookInfo", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, failure(500, "Internal Server Error"));
}

#[tokio::test]
async fn fault_server_error_502_is_an_html_page() {
    let bed = bed().await;
    bed.fake
        .inject(fault(None, FaultKind::ServerError(502), None));
    let response = bed
        .client
        .get(bed.endpoint("getMe"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "text/html");
    let text = response.text().await.expect("a body");
    assert!(text.contains("<title>502 Bad Gateway</title>"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(bed.fake.calls()[0].status, 502);
}

#[tokio::test]
async fn fault_delay_answers_late_but_normally() {
    let bed = bed().await;
    let delay = Duration::from_millis(300);
    bed.fake
        .inject(fault(Some("getMe"), FaultKind::Delay(delay), None));
    let started = Instant::now();
    let (status, body) = bed.get("getMe", &[]).await;
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["id"], BOT);
}

#[tokio::test]
async fn fault_delay_trips_a_client_timeout() {
    let bed = bed().await;
    bed.fake
        .inject(fault(None, FaultKind::Delay(Duration::from_secs(3)), None));
    let client = Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("a client");
    let error = client
        .get(bed.endpoint("getMe"))
        .send()
        .await
        .expect_err("a timeout");
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn fault_unauthorized() {
    let bed = bed().await;
    bed.fake
        .inject(fault(Some("setWebhook"), FaultKind::Unauthorized, None));
    let (status, body) = bed.set_webhook(json!({ "url": HOOK })).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, failure(401, "Unauthorized"))
    );
    assert_eq!(bed.fake.webhook(BOT), None);
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn fault_times_some_1_applies_once() {
    let bed = bed().await;
    bed.fake
        .inject(fault(Some("getMe"), FaultKind::ServerError(500), Some(1)));
    assert_eq!(
        bed.get("getMe", &[]).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
    let statuses: Vec<_> = bed
        .fake
        .calls_to(BOT, "getMe")
        .iter()
        .map(|call| call.status)
        .collect();
    assert_eq!(statuses, [500, 200]);
}

#[tokio::test]
async fn fault_until_cleared_then_clear_fault() {
    let bed = bed().await;
    let id = bed
        .fake
        .inject(fault(Some("getMe"), FaultKind::ServerError(500), None));
    for _ in 0..3 {
        assert_eq!(
            bed.get("getMe", &[]).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    bed.fake.clear_fault(id);
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn clear_faults_clears_them_all() {
    let bed = bed().await;
    bed.fake
        .inject(fault(Some("getMe"), FaultKind::ServerError(500), None));
    bed.fake.inject(fault(None, FaultKind::Unauthorized, None));
    assert_eq!(
        bed.get("getMe", &[]).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        bed.get("getWebhookInfo", &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    bed.fake.clear_faults();
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
    assert_eq!(bed.get("getWebhookInfo", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn faults_match_by_method_and_bot() {
    let bed = bed().await;
    let other_token = bed.fake.add_bot(OTHER_BOT, "other_bot");
    bed.fake.inject(Fault {
        method: Some("getMe".to_owned()),
        bot_id: Some(OTHER_BOT),
        kind: FaultKind::ServerError(500),
        times: None,
    });
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
    let other = |method: &str| {
        bed.client
            .get(endpoint(&bed.fake, &other_token, method))
            .send()
    };
    assert_eq!(
        other("getMe").await.expect("answers").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        other("getWebhookInfo").await.expect("answers").status(),
        StatusCode::OK
    );
}

// ---- calls ----

#[tokio::test]
async fn calls_record_method_bot_params_and_status_but_no_token() {
    let bed = bed().await;
    let before = SystemTime::now();
    bed.get("getMe", &[]).await;
    bed.form(
        "setWebhook",
        &[
            ("url", HOOK),
            ("secret_token", "tok"),
            ("max_connections", "5"),
        ],
    )
    .await;
    bed.get("setWebhook", &[("url", "http://nope.example.com/")])
        .await;
    let malformed = "123:bad.token";
    bed.client
        .get(endpoint(&bed.fake, malformed, "getMe"))
        .send()
        .await
        .expect("answers");
    bed.fake.revoke(&bed.token);
    bed.get("getWebhookInfo", &[]).await;

    let calls = bed.fake.calls();
    let summary: Vec<_> = calls
        .iter()
        .map(|call| (call.bot_id, call.method.as_str(), call.status))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(BOT), "getMe", 200),
            (Some(BOT), "setWebhook", 200),
            (Some(BOT), "setWebhook", 429),
            (None, "getMe", 404),
            (Some(BOT), "getWebhookInfo", 401),
        ]
    );
    assert!(calls[0].params.is_empty());
    assert_eq!(
        Value::Object(calls[1].params.clone()),
        json!({ "url": HOOK, "secret_token": "tok", "max_connections": 5 })
    );
    assert!(calls.windows(2).all(|pair| pair[0].at <= pair[1].at));
    assert!(calls[0].at >= before);

    let recorded = serde_json::to_string(&calls).expect("calls serialize");
    let secret = bed.token.split_once(':').expect("a colon").1;
    assert!(!recorded.contains(&bed.token), "{recorded}");
    assert!(!recorded.contains(secret), "{recorded}");
    assert!(!recorded.contains("bad.token"), "{recorded}");
}

#[tokio::test]
async fn calls_keep_arrival_order_when_a_call_is_delayed() {
    let bed = bed().await;
    bed.fake.inject(fault(
        Some("getMe"),
        FaultKind::Delay(Duration::from_millis(400)),
        Some(1),
    ));
    let slow = bed.get("getMe", &[]);
    let fast = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bed.get("getWebhookInfo", &[]).await
    };
    let _ = tokio::join!(slow, fast);
    let methods: Vec<_> = bed
        .fake
        .calls()
        .into_iter()
        .map(|call| call.method)
        .collect();
    assert_eq!(methods, ["getMe", "getWebhookInfo"]);
}

// ---- stopping ----

#[tokio::test]
async fn shutdown_refuses_connections() {
    let bed = bed().await;
    assert_eq!(bed.get("getMe", &[]).await.0, StatusCode::OK);
    bed.fake.shutdown().await;
    // A fresh client: the point is the port, not a pooled connection.
    let error = Client::new()
        .get(bed.endpoint("getMe"))
        .send()
        .await
        .expect_err("the port is closed");
    assert!(error.is_connect(), "{error}");
    assert!(connection_refused(&error), "{error:?}");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let fake = FakeTelegram::start().await.expect("the fake starts");
    let token = fake.add_bot(BOT, USERNAME);
    let url = endpoint(&fake, &token, "getMe");
    let clone = fake.clone();
    drop(fake);
    assert_eq!(
        reqwest::get(&url).await.expect("still serving").status(),
        StatusCode::OK
    );
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Client::new().get(&url).send().await {
            Err(error) if connection_refused(&error) => break,
            _ if Instant::now() > deadline => panic!("still serving after the last handle went"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
