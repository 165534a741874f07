//! Where a bot's updates go: `backend.url` as written, or `backend.service`
//! through a URL template (by default the Service's cluster DNS name).

use url::Url;

use crate::resource::BackendSpec;

/// The template of a Service backend in a cluster.
pub const DEFAULT_SERVICE_TEMPLATE: &str = "http://{name}.{namespace}.svc:{port}";

/// Turns `backend.service` into a base URL by a template of `{name}`,
/// `{namespace}` and `{port}`; `backend.path` is appended to it. Tests point
/// Services at loopback with `http://127.0.0.1:{port}`.
#[derive(Clone, Debug)]
pub struct ServiceResolver {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Name,
    Namespace,
    Port,
}

/// Why a `--service-resolver` template is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{…}` other than `{name}`, `{namespace}` and `{port}`.
    #[error("unknown placeholder {{{0}}}: use {{name}}, {{namespace}} and {{port}}")]
    UnknownPlaceholder(String),
    /// A `{` without its `}`.
    #[error("a '{{' is not closed")]
    Unclosed,
    /// The template does not make an http(s) URL with a host.
    #[error("the template must make an http:// or https:// URL with a host")]
    NotHttpUrl,
    /// The URL it makes carries a query or a fragment, where the path goes.
    #[error("the template must not carry a query or a fragment")]
    QueryOrFragment,
}

/// Why a bot's backend gives no URL; the bot is left out of the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidBackend {
    /// Neither or both of `service` and `url` (the CRD refuses both).
    #[error("backend needs exactly one of service or url")]
    NotExactlyOne,
    /// `service.port` outside 1..=65535.
    #[error("backend.service.port is not a port number")]
    BadPort,
    /// Not an http(s) URL with a host.
    #[error("backend does not make an http:// or https:// URL")]
    NotHttpUrl,
}

impl ServiceResolver {
    /// Parses and checks a template.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let parts = split_template(template)?;
        let resolver = Self { parts };
        let sample = resolver.fill("name", "namespace", 8080);
        let url = http_url(&sample).ok_or(TemplateError::NotHttpUrl)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(TemplateError::QueryOrFragment);
        }
        Ok(resolver)
    }

    /// The URL a bot in `namespace` forwards to.
    pub fn resolve(&self, namespace: &str, backend: &BackendSpec) -> Result<Url, InvalidBackend> {
        match (&backend.service, &backend.url) {
            (Some(service), None) => {
                let port = u16::try_from(service.port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(InvalidBackend::BadPort)?;
                let base = self.fill(&service.name, namespace, port);
                let path = backend.path.as_deref().unwrap_or("/");
                let joined = format!(
                    "{}/{}",
                    base.trim_end_matches('/'),
                    path.trim_start_matches('/')
                );
                http_url(&joined).ok_or(InvalidBackend::NotHttpUrl)
            }
            (None, Some(url)) => http_url(url).ok_or(InvalidBackend::NotHttpUrl),
            _ => Err(InvalidBackend::NotExactlyOne),
        }
    }

    fn fill(&self, name: &str, namespace: &str, port: u16) -> String {
        self.parts.iter().fold(String::new(), |mut out, part| {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Name => out.push_str(name),
                Part::Namespace => out.push_str(namespace),
                Part::Port => out.push_str(&port.to_string()),
            }
            out
        })
    }
}

impl Default for ServiceResolver {
    fn default() -> Self {
        Self::parse(DEFAULT_SERVICE_TEMPLATE).expect("the default template is valid")
    }
}

impl std::str::FromStr for ServiceResolver {
    type Err = TemplateError;

    fn from_str(template: &str) -> Result<Self, Self::Err> {
        Self::parse(template)
    }
}

fn split_template(template: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(TemplateError::Unclosed)?;
        parts.push(match &after[..close] {
            "name" => Part::Name,
            "namespace" => Part::Namespace,
            "port" => Part::Port,
            other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(parts)
}

fn http_url(text: &str) -> Option<Url> {
    Url::parse(text)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ServiceBackend;

    fn service(name: &str, port: i32, path: Option<&str>) -> BackendSpec {
        BackendSpec {
            service: Some(ServiceBackend {
                name: name.into(),
                port,
            }),
            url: None,
            path: path.map(Into::into),
        }
    }

    fn url(url: &str) -> BackendSpec {
        BackendSpec {
            service: None,
            url: Some(url.into()),
            path: Some("/ignored".into()),
        }
    }

    #[test]
    fn a_service_resolves_to_its_cluster_dns_name_and_path() {
        let resolver = ServiceResolver::default();
        let resolved = resolver
            .resolve("bots", &service("support", 8080, Some("/telegram")))
            .unwrap();
        assert_eq!(resolved.as_str(), "http://support.bots.svc:8080/telegram");
        let root = resolver
            .resolve("bots", &service("support", 80, None))
            .unwrap();
        // The URL drops a scheme's default port; the address is the same.
        assert_eq!(root.as_str(), "http://support.bots.svc/");
    }

    #[test]
    fn a_loopback_template_points_a_service_at_its_port() {
        let resolver = ServiceResolver::parse("http://127.0.0.1:{port}").unwrap();
        let resolved = resolver
            .resolve("bots", &service("support", 40123, Some("/hook")))
            .unwrap();
        assert_eq!(resolved.as_str(), "http://127.0.0.1:40123/hook");
        let prefixed = ServiceResolver::parse("http://localhost:9000/{namespace}/{name}/").unwrap();
        assert_eq!(
            prefixed
                .resolve("bots", &service("support", 1, Some("/hook")))
                .unwrap()
                .as_str(),
            "http://localhost:9000/bots/support/hook"
        );
    }

    #[test]
    fn a_url_backend_is_used_as_written() {
        let resolved = ServiceResolver::default()
            .resolve("bots", &url("https://bots.example.com/tg?x=1"))
            .unwrap();
        assert_eq!(resolved.as_str(), "https://bots.example.com/tg?x=1");
    }

    #[test]
    fn bad_backends_are_refused() {
        let resolver = ServiceResolver::default();
        assert_eq!(
            resolver.resolve("ns", &service("a", 0, None)),
            Err(InvalidBackend::BadPort)
        );
        assert_eq!(
            resolver.resolve("ns", &service("a", 70_000, None)),
            Err(InvalidBackend::BadPort)
        );
        assert_eq!(
            resolver.resolve("ns", &url("ftp://x/")),
            Err(InvalidBackend::NotHttpUrl)
        );
        let mut both = service("a", 1, None);
        both.url = Some("http://x/".into());
        assert_eq!(
            resolver.resolve("ns", &both),
            Err(InvalidBackend::NotExactlyOne)
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(
            ServiceResolver::parse("http://{host}:{port}").unwrap_err(),
            TemplateError::UnknownPlaceholder("host".into())
        );
        assert_eq!(
            ServiceResolver::parse("http://{name").unwrap_err(),
            TemplateError::Unclosed
        );
        assert_eq!(
            ServiceResolver::parse("{name}:{port}").unwrap_err(),
            TemplateError::NotHttpUrl
        );
        assert_eq!(
            ServiceResolver::parse("http://h:{port}/?a=b").unwrap_err(),
            TemplateError::QueryOrFragment
        );
    }
}
